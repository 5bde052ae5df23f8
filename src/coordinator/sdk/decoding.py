"""The SDK's decoding of the coordinator's replies: tasks, statistics and the status codes
of refused batch entries become domain objects and errors here. The assignment stream is
decoded in ``sdk/assignments.py``; the conversions the node shares with the SDK (enums,
times, Structs, requests' task fields) are in ``coordinator.wire_values``."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from aitbc.coordinator.v1 import task_pb2
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
from coordinator.wire_values import (
    duration_s,
    priority_from_proto,
    state_from_proto,
    strategy_from_proto,
)
from coordinator.wire_values import struct_to_dict as _struct_to_dict

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
    return Task(
        task_id=message.task_id,
        task_type=message.task_type,
        state=state_from_proto(message.state) or TaskState.PENDING,
        priority=priority_from_proto(message.priority) or Priority.NORMAL,
        task_data=struct_to_dict(message.task_data),
        requirements=_requirements_from_proto(message.requirements),
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
        strategy=strategy_from_proto(message.balancing_strategy),
        routing_key=message.routing_key,
        result=struct_to_dict(message.result) if message.HasField("result") else None,
        error=_error(message),
        attempts=tuple(_attempt_from_proto(a) for a in message.attempts),
        transitions=tuple(_transition_from_proto(t) for t in message.transitions),
        created_at_ms=_ms(message.created_at),
        updated_at_ms=_ms(message.updated_at),
        lease_expires_at_ms=_optional_ms(message, "lease_expires_at"),
        dead_lettered=message.dead_lettered,
        fencing_token="",
        submitted_by=message.submitted_by,
    )


def _requirements_from_proto(r: task_pb2.TaskRequirements) -> Requirements:
    return Requirements(
        agent_type=r.agent_type,
        capabilities=tuple(r.capabilities),
        services=tuple(r.services),
        labels=dict(r.labels),
        agent_id=r.agent_id,
        min_health_score=r.min_health_score,
        preferred_capabilities=tuple(r.preferred_capabilities),
    )


def _attempt_from_proto(a: task_pb2.TaskAttempt) -> Attempt:
    return Attempt(
        attempt=a.attempt,
        agent_id=a.agent_id,
        node_id=a.node_id,
        assigned_at_ms=_ms(a.assigned_at),
        started_at_ms=_optional_ms(a, "started_at"),
        ended_at_ms=_optional_ms(a, "ended_at"),
        outcome=state_from_proto(a.outcome),
        error=_error(a),
    )


def _transition_from_proto(t: task_pb2.TaskTransition) -> Transition:
    return Transition(
        state=state_from_proto(t.state) or TaskState.PENDING,
        at_ms=_ms(t.at),
        attempt=t.attempt,
        agent_id=t.agent_id,
        reason=t.reason,
    )


def _queue_from_proto(message: task_pb2.QueueStats) -> QueueStats:
    return QueueStats(
        priority=priority_from_proto(message.priority) or Priority.NORMAL,
        pending=message.pending,
        oldest_task_age_s=duration_s(message.oldest_task_age),
    )


def stats_from_proto(message: task_pb2.GetStatsResponse) -> TaskStats:
    """The domain form of GetStats."""
    lb = message.load_balancer_stats
    strategy = strategy_from_proto(lb.strategy)
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
