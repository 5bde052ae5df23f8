"""The SDK's edge: protobuf messages from the coordinator become domain objects here, and
what the user passes becomes requests. Nothing else in the SDK touches ``_pb2`` fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from aitbc.coordinator.v1 import agent_pb2, task_pb2
from coordinator.api import wire as server_wire
from coordinator.api.wire import duration_s
from coordinator.api.wire import struct_to_dict as _struct_to_dict
from coordinator.sdk import shallow
from coordinator.sdk.errors import RpcError
from coordinator.tasks.models import (
    Attempt,
    LoadBalancerStats,
    Priority,
    QueueStats,
    Requirements,
    RetryPolicy,
    Task,
    TaskError,
    TaskState,
    TaskStats,
    Transition,
)

_EXACT_INT_LIMIT = 2**53

_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    """The gRPC status code of a google.rpc.Code number (UNKNOWN for a number it is not)."""
    return _STATUS_CODES.get(number, grpc.StatusCode.UNKNOWN)


def entry_error(message: task_pb2.BatchEntryError) -> RpcError:
    """The error of one refused entry of a batch call, as the unary call would raise it."""
    return RpcError(status_code(message.code), message.message)


def _whole_numbers_as_int(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_INT_LIMIT:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers_as_int(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers_as_int(v) for v in value]
    return value


PARSED_STRUCT_DEPTH = 100
"""Levels of a Struct the SDK decodes: whatever python protobuf could parse (its recursion
limit is 100 messages). The node's own limit on what it accepts (COORDINATOR_MAX_STRUCT_DEPTH)
is lower; the SDK must not refuse what a node of another version or setting sent."""


def struct_to_dict(struct: Any) -> dict[str, Any]:
    """A plain dict from a Struct. A Struct holds every number as a double; whole ones come
    back as ``int``, as ``json.loads`` would give them (``{"x": 1}`` stays ``{"x": 1}``)."""
    return dict(_whole_numbers_as_int(_struct_to_dict(struct, max_depth=PARSED_STRUCT_DEPTH)))


@dataclass(frozen=True)
class AssignmentInfo:
    """One attempt of a task pushed to this agent."""

    task_id: str
    attempt: int
    fencing_token: str
    task_type: str
    data: dict[str, Any]
    priority: Priority
    start_to_close_s: float

    @property
    def key(self) -> tuple[str, int]:
        """What identifies a delivery: a repeat of the same key is the same work."""
        return (self.task_id, self.attempt)


def assignment_from_proto(message: agent_pb2.Assignment) -> AssignmentInfo:
    """The domain form of an Assignment event."""
    return _assignment(message, struct_to_dict(message.task_data))


def _assignment(message: Any, data: dict[str, Any]) -> AssignmentInfo:
    """An AssignmentInfo from an Assignment or its shallow twin, with its data decoded."""
    return AssignmentInfo(
        task_id=message.task_id,
        attempt=message.attempt,
        fencing_token=message.fencing_token,
        task_type=message.task_type,
        data=data,
        priority=server_wire.priority_from_proto(message.priority) or Priority.NORMAL,
        start_to_close_s=duration_s(message.start_to_close_timeout),
    )


UNDECODABLE_TYPE = "UndecodableAssignment"
"""The error type an agent reports for an assignment it could not decode."""
_REASON_CHARS = 200


@dataclass(frozen=True)
class UndecodableAssignment:
    """An assignment whose task could not be decoded (its data nests deeper than protobuf
    parses, or holds what a dict cannot): what identifies the attempt, to report it failed."""

    assignment: AssignmentInfo
    """The attempt, with empty data."""
    reason: str

    def error(self) -> TaskError:
        """The error to fail the task with: not retryable, as every agent would fail alike."""
        return TaskError(
            "the agent could not decode the task's task_data (nested deeper than the "
            f"protobuf parser's limit of 100 levels, or not JSON-like): {self.reason}",
            UNDECODABLE_TYPE,
            retryable=False,
        )


@dataclass(frozen=True)
class StreamEvent:
    """One message of the assignment stream, as the agent reads it."""

    kind: str | None
    """The event's oneof name ("ready", "assignment", ...), None when unknown or unreadable."""
    message: Any = None
    """The message (ready, cancel and draining events read their fields from it)."""
    assignments: list[AssignmentInfo] = field(default_factory=list)
    undecodable: list[UndecodableAssignment] = field(default_factory=list)
    error: str = ""
    """Why nothing at all could be read from the message (then kind is None)."""


def stream_event(raw: bytes) -> StreamEvent:
    """Decode one StreamAssignmentsResponse (its serialized bytes). Never raises: an
    assignment that cannot be decoded in full comes in ``undecodable``, as long as its ids
    can be read (``coordinator.sdk.shallow``); a message of which nothing can be read comes
    with ``error``."""
    try:
        message: Any = agent_pb2.StreamAssignmentsResponse.FromString(raw)
        decoded = True
    except Exception:  # DecodeError, in practice; whatever it is, try the shallow twin
        try:
            message = shallow.StreamAssignmentsResponse.FromString(raw)
        except Exception as exc:
            return StreamEvent(None, error=_bounded(exc))
        decoded = False
    kind = message.WhichOneof("event")
    if kind == "assignment":
        items = [message.assignment]
    elif kind == "assignments":
        items = list(message.assignments.assignments)
    else:
        return StreamEvent(kind, message)
    event = StreamEvent(kind, message)
    for item in items:
        try:
            data = struct_to_dict(item.task_data if decoded else Struct.FromString(item.task_data))
        except Exception as exc:  # any failure to decode one task must not affect the others
            event.undecodable.append(UndecodableAssignment(_assignment(item, {}), _bounded(exc)))
        else:
            event.assignments.append(_assignment(item, data))
    return event


def _bounded(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"


def _ms(stamp: Timestamp) -> int:
    return stamp.ToMilliseconds()


def _optional_ms(message: Any, field: str) -> int | None:
    return _ms(getattr(message, field)) if message.HasField(field) else None


def _error(message: Any, field: str = "error") -> TaskError | None:
    if not message.HasField(field):
        return None
    error = getattr(message, field)
    return TaskError(
        message=error.message,
        type=error.type,
        retryable=error.retryable,
        details=struct_to_dict(error.details),
    )


def task_from_proto(message: task_pb2.Task) -> Task:
    """The domain form of a Task. ``fencing_token`` is empty: only the agent sees it."""
    r = message.requirements
    return Task(
        task_id=message.task_id,
        task_type=message.task_type,
        state=server_wire.state_from_proto(message.state) or TaskState.PENDING,
        priority=server_wire.priority_from_proto(message.priority) or Priority.NORMAL,
        task_data=struct_to_dict(message.task_data),
        requirements=Requirements(
            agent_type=r.agent_type,
            capabilities=tuple(r.capabilities),
            services=tuple(r.services),
            labels=dict(r.labels),
            agent_id=r.agent_id,
            min_health_score=r.min_health_score,
            preferred_capabilities=tuple(r.preferred_capabilities),
        ),
        max_attempts=message.max_attempts,
        attempt=message.attempt,
        agent_id=message.agent_id,
        schedule_to_start_s=duration_s(message.schedule_to_start_timeout),
        start_to_close_s=duration_s(message.start_to_close_timeout),
        retry_policy=RetryPolicy(
            initial_backoff_s=duration_s(message.retry_policy.initial_backoff),
            max_backoff_s=duration_s(message.retry_policy.max_backoff),
            backoff_multiplier=message.retry_policy.backoff_multiplier,
        ),
        request_id=message.request_id,
        strategy=server_wire.strategy_from_proto(message.balancing_strategy),
        routing_key=message.routing_key,
        result=struct_to_dict(message.result) if message.HasField("result") else None,
        error=_error(message),
        attempts=tuple(
            Attempt(
                attempt=a.attempt,
                agent_id=a.agent_id,
                node_id=a.node_id,
                assigned_at_ms=_ms(a.assigned_at),
                started_at_ms=_optional_ms(a, "started_at"),
                ended_at_ms=_optional_ms(a, "ended_at"),
                outcome=server_wire.state_from_proto(a.outcome),
                error=_error(a),
            )
            for a in message.attempts
        ),
        transitions=tuple(
            Transition(
                state=server_wire.state_from_proto(t.state) or TaskState.PENDING,
                at_ms=_ms(t.at),
                attempt=t.attempt,
                agent_id=t.agent_id,
                reason=t.reason,
            )
            for t in message.transitions
        ),
        created_at_ms=_ms(message.created_at),
        updated_at_ms=_ms(message.updated_at),
        lease_expires_at_ms=_optional_ms(message, "lease_expires_at"),
        dead_lettered=message.dead_lettered,
        fencing_token="",
        submitted_by=message.submitted_by,
    )


def _queue_from_proto(message: task_pb2.QueueStats) -> QueueStats:
    return QueueStats(
        priority=server_wire.priority_from_proto(message.priority) or Priority.NORMAL,
        pending=message.pending,
        oldest_task_age_s=duration_s(message.oldest_task_age),
    )


def stats_from_proto(message: task_pb2.GetStatsResponse) -> TaskStats:
    """The domain form of GetStats."""
    lb = message.load_balancer_stats
    strategy = server_wire.strategy_from_proto(lb.strategy)
    assert strategy is not None, "GetStats always names the cluster's strategy"
    return TaskStats(
        tasks_submitted=message.tasks_submitted,
        tasks_distributed=message.tasks_distributed,
        tasks_completed=message.tasks_completed,
        tasks_failed=message.tasks_failed,
        tasks_cancelled=message.tasks_cancelled,
        tasks_expired=message.tasks_expired,
        avg_submit_to_assignment_ms=message.avg_submit_to_assignment_ms,
        p99_submit_to_assignment_ms=message.p99_submit_to_assignment_ms,
        load_balancer_stats=LoadBalancerStats(
            strategy=strategy,
            active_agents=lb.active_agents,
            total_assignments=lb.total_assignments,
            avg_agent_load=lb.avg_agent_load,
            assignments_per_agent=dict(lb.assignments_per_agent),
        ),
        queues=[_queue_from_proto(q) for q in message.queues],
    )
