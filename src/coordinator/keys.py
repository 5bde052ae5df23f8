"""Every Redis key the coordinator uses, built in one place.

The layout keeps what operators of the old REST coordinator know: an agent's record is the
hash ``agent:{agent_id}`` and the set ``agents:active`` holds the agents that are ACTIVE and
live. The other keys are indexes kept exact by the Lua scripts in ``coordinator/lua``.

The coordinator needs a single Redis (or a primary with replicas), not Redis Cluster: the
registry's scripts touch index keys that do not share a hash slot.
"""

from __future__ import annotations

from coordinator.models import AgentStatus

AGENTS_ALL = "agents:all"
"""Set of every registered agent id."""

AGENTS_ACTIVE = "agents:active"
"""Set of agents whose status is ACTIVE and whose heartbeat is fresh (the old layout)."""

AGENTS_HEARTBEATS = "agents:heartbeats"
"""Sorted set: agent id scored by its last heartbeat in epoch milliseconds (the liveness index)."""

LIVENESS_SWEEP_LOCK = "coordinator:lock:liveness-sweep"
"""Held by the one node that runs a liveness sweep, so two nodes never sweep at once."""


def node_presence(node_id: str) -> str:
    """Written by each node's health check and expiring soon after: the nodes alive now."""
    return f"coordinator:nodes:{node_id}"


AGENT_KEY_PREFIX = "agent:"
"""Prefix of the agent hashes; scripts that read records found in an index are given it."""


def agent(agent_id: str) -> str:
    """The hash holding one agent's record."""
    return f"{AGENT_KEY_PREFIX}{agent_id}"


def status_index(status: AgentStatus) -> str:
    """The set of agents whose stored status is ``status``.

    ACTIVE agents live in the historical ``agents:active`` set. INACTIVE has no set: it is
    derived from ``agents:heartbeats``.
    """
    if status is AgentStatus.ACTIVE:
        return AGENTS_ACTIVE
    if status is AgentStatus.INACTIVE:
        raise ValueError("INACTIVE is derived from agents:heartbeats and has no index set")
    return f"agents:status:{status.name.lower()}"


STORED_STATUSES = (
    AgentStatus.ACTIVE,
    AgentStatus.BUSY,
    AgentStatus.MAINTENANCE,
    AgentStatus.ERROR,
)
"""Statuses that are stored (and indexed); INACTIVE is only ever computed."""


def status_indexes() -> list[str]:
    """The index sets of every stored status, in ``STORED_STATUSES`` order."""
    return [status_index(status) for status in STORED_STATUSES]


def type_index(agent_type: str) -> str:
    """The set of agents of one type."""
    return f"agents:type:{agent_type}"


def capability_index(capability: str) -> str:
    """The set of agents having one capability."""
    return f"agents:capability:{capability}"


def service_index(service: str) -> str:
    """The set of agents offering one service."""
    return f"agents:service:{service}"


def label_index(key: str, value: str) -> str:
    """The set of agents carrying one label pair (label keys cannot contain ``=``)."""
    return f"agents:label:{key}={value}"
