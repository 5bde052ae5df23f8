"""The node's conversions between protobuf messages and domain objects: checking what a
client sent, and building the replies and assignments the node sends. Nothing else imports
``_pb2`` types except the servicers, which call these functions at the boundary.

What the SDK needs as well (enums, times, Structs, a task's error, requirements and retry
policy) lives in ``coordinator.wire_values``, which both sides import.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from aitbc.coordinator.v1 import agent_pb2, task_pb2
from coordinator.agents.records import AgentRecord
from coordinator.delivery.messages import Assignment
from coordinator.errors import FieldViolation, InvalidArgument
from coordinator.tasks.models import QueueStats, Task, TaskError, TaskStats
from coordinator.violations import Violations
from coordinator.wire_values import (
    AGENT_STATUS,
    BALANCING_STRATEGY,
    PRIORITY_PREFIX,
    STATE_PREFIX,
    TASK_PRIORITY,
    TASK_STATE,
    WireEnum,
    duration_from_s,
    duration_s,
    error_to_proto,
    requirements_to_proto,
    retry_policy_to_proto,
    status_to_proto,
    strategy_to_proto,
    struct_from_dict,
    struct_to_dict,
    timestamp_from_ms,
)

# Besides this module's own functions, the shared conversions from coordinator.wire_values
# that the servicers call as ``wire.<name>`` (as when they lived here) are re-exported:
# AGENT_STATUS ... TASK_STATE, duration_from_s, duration_s, status_to_proto,
# strategy_to_proto, struct_to_dict and timestamp_from_ms.
__all__ = [
    "AGENT_STATUS",
    "BALANCING_STRATEGY",
    "STATE_PREFIX",
    "TASK_PRIORITY",
    "TASK_STATE",
    "agent_to_proto",
    "assignment_to_proto",
    "duration_from_s",
    "duration_s",
    "enum_from_proto",
    "enums_from_proto",
    "queue_stats_to_proto",
    "stats_to_proto",
    "status_to_proto",
    "strategy_to_proto",
    "struct_to_dict",
    "task_to_proto",
    "timestamp_from_ms",
]

E = TypeVar("E", bound=Enum)


def enum_from_proto(
    number: int, field: str, kind: WireEnum[E], violations: Violations | None = None
) -> E | None:
    """The domain value of the enum number a client sent in ``field``: None for 0
    (UNSPECIFIED: what it means is the caller's to say).

    A number the proto does not define is InvalidArgument naming the field and the number
    (proto3 keeps unknown enum numbers as plain ints, so they reach us). With ``violations``
    it is added there instead, to be reported with the request's other problems.
    """
    value = kind.parse(number)
    if value is None and number != 0:
        violation = FieldViolation(
            field, f"{number} is not a known value; use one of {kind.known_names()}"
        )
        if violations is None:
            raise InvalidArgument([violation])
        violations.add(violation.field, violation.description)
    return value


def enums_from_proto(
    numbers: Iterable[int], field: str, kind: WireEnum[E], violations: Violations | None = None
) -> list[tuple[int, E | None]]:
    """Each number of a repeated enum ``field`` with its domain value (None for 0). Every
    unknown number is InvalidArgument naming its index (``statuses[2]``), or is added to
    ``violations`` when given."""
    found = Violations() if violations is None else violations
    values = [
        (number, enum_from_proto(number, f"{field}[{index}]", kind, found))
        for index, number in enumerate(numbers)
    ]
    if violations is None:
        found.raise_if_any()
    return values


def requirements_fields(r: task_pb2.TaskRequirements) -> dict[str, Any]:
    """A TaskRequirements' fields, as ``tasks.validation.requirements`` takes them."""
    return {
        "agent_type": r.agent_type,
        "capabilities": r.capabilities,
        "services": r.services,
        "labels": r.labels,
        "agent_id": r.agent_id,
        "min_health_score": r.min_health_score,
        "preferred_capabilities": r.preferred_capabilities,
    }


def agent_to_proto(agent: AgentRecord) -> agent_pb2.Agent:
    """The wire form of an agent: a new message of the caller's own."""
    return _build_agent(agent)


def _build_agent(agent: AgentRecord) -> agent_pb2.Agent:
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


def _error_to_proto(error: TaskError | None) -> task_pb2.TaskError | None:
    return None if error is None else error_to_proto(error)


def _optional_timestamp(epoch_ms: int | None) -> Timestamp | None:
    return None if epoch_ms is None else timestamp_from_ms(epoch_ms)


def task_to_proto(task: Task) -> task_pb2.Task:
    """The wire form of a task with its history."""
    return task_pb2.Task(
        task_id=task.task_id,
        task_type=task.task_type,
        state=STATE_PREFIX + task.state.name,
        priority=PRIORITY_PREFIX + task.priority.name,
        task_data=struct_from_dict(task.task_data),
        requirements=requirements_to_proto(task.requirements),
        max_attempts=task.max_attempts,
        attempt=task.attempt,
        agent_id=task.agent_id,
        schedule_to_start_timeout=duration_from_s(task.schedule_to_start_s),
        start_to_close_timeout=duration_from_s(task.start_to_close_s),
        retry_policy=retry_policy_to_proto(task.retry_policy),
        request_id=task.request_id,
        balancing_strategy=strategy_to_proto(task.strategy),
        routing_key=task.routing_key,
        result=struct_from_dict(task.result),
        error=_error_to_proto(task.error),
        attempts=[
            task_pb2.TaskAttempt(
                attempt=a.attempt,
                agent_id=a.agent_id,
                node_id=a.node_id,
                assigned_at=timestamp_from_ms(a.assigned_at_ms),
                started_at=_optional_timestamp(a.started_at_ms),
                ended_at=_optional_timestamp(a.ended_at_ms),
                outcome=STATE_PREFIX + (a.outcome.name if a.outcome else "UNSPECIFIED"),
                error=_error_to_proto(a.error),
            )
            for a in task.attempts
        ],
        transitions=[
            task_pb2.TaskTransition(
                state=STATE_PREFIX + t.state.name,
                at=timestamp_from_ms(t.at_ms),
                attempt=t.attempt,
                agent_id=t.agent_id,
                reason=t.reason,
            )
            for t in task.transitions
        ],
        created_at=timestamp_from_ms(task.created_at_ms),
        updated_at=timestamp_from_ms(task.updated_at_ms),
        lease_expires_at=_optional_timestamp(task.lease_expires_at_ms),
        dead_lettered=task.dead_lettered,
        submitted_by=task.submitted_by,
    )


def assignment_to_proto(assignment: Assignment) -> agent_pb2.Assignment:
    """The wire form of an assignment, as pushed to its agent."""
    return agent_pb2.Assignment(
        task_id=assignment.task_id,
        attempt=assignment.attempt,
        fencing_token=assignment.fencing_token,
        task_type=assignment.task_type,
        task_data=struct_from_dict(assignment.task_data),
        priority=PRIORITY_PREFIX + assignment.priority.name,
        assigned_at=timestamp_from_ms(assignment.assigned_at_ms),
        lease_expires_at=_optional_timestamp(assignment.lease_expires_at_ms),
        start_to_close_timeout=duration_from_s(assignment.start_to_close_s),
    )


def queue_stats_to_proto(queue: QueueStats) -> task_pb2.QueueStats:
    """The wire form of one queue's figures."""
    return task_pb2.QueueStats(
        priority=PRIORITY_PREFIX + queue.priority.name,
        pending=queue.pending,
        oldest_task_age=duration_from_s(queue.oldest_task_age_s),
    )


def stats_to_proto(stats: TaskStats) -> task_pb2.GetStatsResponse:
    """The wire form of the cluster statistics."""
    lb = stats.load_balancer_stats
    return task_pb2.GetStatsResponse(
        tasks_submitted=stats.tasks_submitted,
        tasks_distributed=stats.tasks_distributed,
        tasks_completed=stats.tasks_completed,
        tasks_failed=stats.tasks_failed,
        tasks_cancelled=stats.tasks_cancelled,
        tasks_expired=stats.tasks_expired,
        avg_submit_to_assignment_ms=stats.avg_submit_to_assignment_ms,
        p99_submit_to_assignment_ms=stats.p99_submit_to_assignment_ms,
        load_balancer_stats=task_pb2.LoadBalancerStats(
            strategy=strategy_to_proto(lb.strategy),
            active_agents=lb.active_agents,
            total_assignments=lb.total_assignments,
            avg_agent_load=lb.avg_agent_load,
            assignments_per_agent=lb.assignments_per_agent,
        ),
        queues=[queue_stats_to_proto(q) for q in stats.queues],
    )
