"""Domain objects of the registry. They never reference protobuf types: the wire stays in
``coordinator.api``."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


class AgentStatus(enum.Enum):
    """Operational state of an agent (the wire enum AGENT_STATUS_<NAME> maps by name)."""

    ACTIVE = 1
    INACTIVE = 2
    BUSY = 3
    MAINTENANCE = 4
    ERROR = 5

    @property
    def sticky(self) -> bool:
        """Set by an operator (or a faulty agent) and kept by heartbeats and re-registration."""
        return self in (AgentStatus.MAINTENANCE, AgentStatus.ERROR)


@dataclass(frozen=True)
class AgentRegistration:
    """What an agent says about itself when it registers (already validated)."""

    agent_id: str
    agent_type: str
    capabilities: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    endpoints: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    max_concurrency: int = 1
    weight: float = 1.0


@dataclass(frozen=True)
class AgentRecord:
    """An agent as the registry sees it at one moment.

    ``status`` and ``health_score`` are effective values computed at read time from the
    shared heartbeat timestamp, so every node reports the same.
    """

    agent_id: str
    agent_type: str
    capabilities: tuple[str, ...]
    services: tuple[str, ...]
    endpoints: dict[str, str]
    metadata: dict[str, str]
    labels: dict[str, str]
    max_concurrency: int
    weight: float
    status: AgentStatus
    stored_status: AgentStatus
    health_score: float
    load_metrics: dict[str, float]
    active_tasks: int
    registered_at_ms: int
    last_heartbeat_at_ms: int
    node_id: str
    status_reason: str
    avg_duration_ms: float | None = None
    """Moving average of the agent's measured task durations; None before the first."""
    recent_success: float = 1.0
    """Moving average of the agent's attempt outcomes (1 success, 0 failure)."""

    def matches(
        self,
        *,
        agent_type: str,
        capabilities: Iterable[str],
        services: Iterable[str],
        labels: Mapping[str, str],
        min_health_score: float,
    ) -> bool:
        """Whether the agent meets these filters (shared by discovery and task requirements):
        the type if given, all of the capabilities and services, every label pair, and at
        least the health score."""
        return (
            (not agent_type or self.agent_type == agent_type)
            and set(capabilities) <= set(self.capabilities)
            and set(services) <= set(self.services)
            and all(self.labels.get(k) == v for k, v in labels.items())
            and self.health_score >= min_health_score
        )


@dataclass(frozen=True)
class RegistrationResult:
    """Outcome of RegisterAgent."""

    agent: AgentRecord
    created: bool


@dataclass(frozen=True)
class DiscoverQuery:
    """Filters of DiscoverAgents (validated). All given filters must match."""

    statuses: frozenset[AgentStatus] = frozenset({AgentStatus.ACTIVE})
    agent_type: str = ""
    capabilities: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    min_health_score: float = 0.0
    page_size: int = 100
    page_token: str = ""


@dataclass(frozen=True)
class DiscoverPage:
    """One page of DiscoverAgents."""

    agents: list[AgentRecord]
    next_page_token: str
    total_size: int
