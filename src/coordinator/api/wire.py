"""Conversions between protobuf messages and domain objects. Nothing else imports ``_pb2``
types except the servicers, which call these functions at the boundary."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from aitbc.coordinator.v1 import agent_pb2
from coordinator.models import Agent, AgentStatus

STATUS_PREFIX = "AGENT_STATUS_"


def status_from_proto(value: int) -> AgentStatus | None:
    """The domain status of a wire enum value; None for UNSPECIFIED or an unknown number."""
    try:
        return AgentStatus[agent_pb2.AgentStatus.Name(value).removeprefix(STATUS_PREFIX)]
    except (ValueError, KeyError):
        return None


def status_to_proto(status: AgentStatus) -> str:
    """The wire enum value name of a domain status (message constructors accept names)."""
    return STATUS_PREFIX + status.name


def timestamp_from_ms(epoch_ms: int) -> Timestamp:
    """A Timestamp from epoch milliseconds."""
    stamp = Timestamp()
    stamp.FromMilliseconds(epoch_ms)
    return stamp


def duration_from_s(seconds: float) -> Duration:
    """A Duration from seconds."""
    duration = Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def agent_to_proto(agent: Agent) -> agent_pb2.Agent:
    """The wire form of an agent."""
    return agent_pb2.Agent(
        agent_id=agent.agent_id,
        agent_type=agent.agent_type,
        capabilities=agent.capabilities,
        services=agent.services,
        endpoints=agent.endpoints,
        metadata=agent.metadata,
        labels=agent.labels,
        max_concurrency=agent.max_concurrency,
        weight=agent.weight,
        status=status_to_proto(agent.status),
        health_score=agent.health_score,
        load_metrics=agent.load_metrics,
        active_tasks=agent.active_tasks,
        registered_at=timestamp_from_ms(agent.registered_at_ms),
        last_heartbeat_at=timestamp_from_ms(agent.last_heartbeat_at_ms),
        node_id=agent.node_id,
        status_reason=agent.status_reason,
    )
