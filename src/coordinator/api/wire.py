"""Conversions between protobuf messages and domain objects. Nothing else imports ``_pb2``
types except the servicers, which call these functions at the boundary."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.struct_pb2 import ListValue, Struct, Value
from google.protobuf.timestamp_pb2 import Timestamp

from aitbc.coordinator.v1 import agent_pb2, task_pb2
from coordinator.agents.records import AgentRecord, AgentStatus
from coordinator.agents.validation import Violations
from coordinator.errors import FieldViolation, InvalidArgument
from coordinator.tasks.models import (
    Assignment,
    Priority,
    QueueStats,
    Requirements,
    RetryPolicy,
    Strategy,
    Task,
    TaskError,
    TaskState,
    TaskStats,
)

STATUS_PREFIX = "AGENT_STATUS_"
PRIORITY_PREFIX = "TASK_PRIORITY_"
STATE_PREFIX = "TASK_STATE_"
STRATEGY_PREFIX = "BALANCING_STRATEGY_"

E = TypeVar("E", bound=Enum)


@dataclass(frozen=True)
class WireEnum(Generic[E]):
    """A proto enum and the domain enum its values become (names match after the prefix)."""

    wire: EnumTypeWrapper
    domain: type[E]
    prefix: str

    def parse(self, number: int) -> E | None:
        """The domain value of a wire number; None for UNSPECIFIED or an unknown number."""
        try:
            return self.domain[self.wire.Name(number).removeprefix(self.prefix)]
        except (ValueError, KeyError):
            return None

    def known_names(self) -> str:
        return ", ".join(n for n in self.wire.keys() if not n.endswith("_UNSPECIFIED"))


AGENT_STATUS = WireEnum(agent_pb2.AgentStatus, AgentStatus, STATUS_PREFIX)
TASK_PRIORITY = WireEnum(task_pb2.TaskPriority, Priority, PRIORITY_PREFIX)
TASK_STATE = WireEnum(task_pb2.TaskState, TaskState, STATE_PREFIX)
BALANCING_STRATEGY = WireEnum(task_pb2.BalancingStrategy, Strategy, STRATEGY_PREFIX)


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


def status_from_proto(value: int) -> AgentStatus | None:
    """The domain status of a wire enum value; None for UNSPECIFIED or an unknown number."""
    return AGENT_STATUS.parse(value)


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


# --- Tasks -----------------------------------------------------------------------------------


def priority_from_proto(value: int) -> Priority | None:
    """The domain priority of a wire value; None for UNSPECIFIED or an unknown number."""
    return TASK_PRIORITY.parse(value)


def state_from_proto(value: int) -> TaskState | None:
    """The domain state of a wire value; None for UNSPECIFIED or an unknown number."""
    return TASK_STATE.parse(value)


def strategy_from_proto(value: int) -> Strategy | None:
    """The domain strategy of a wire value; None for UNSPECIFIED or an unknown number."""
    return BALANCING_STRATEGY.parse(value)


def strategy_to_proto(strategy: Strategy | None) -> str:
    """The wire enum value name of a strategy (UNSPECIFIED for None)."""
    return STRATEGY_PREFIX + (strategy.name if strategy else "UNSPECIFIED")


MAX_STRUCT_DEPTH = 32
"""The most levels of a Struct the node accepts, and the highest (and default)
``COORDINATOR_MAX_STRUCT_DEPTH``. Every reader must be able to parse what the node accepted,
and parsers stop at 100 nested messages (Python's, C++'s and Java's protobuf). One level of
objects costs 3 messages (the Struct, its map entry, the Value), and the deepest reply that
carries a client's Struct, a GetTaskResponse's ``task.attempts[].error.details``, puts 4
messages around it: 4 + 3 x 32 = 100. With 33 levels, GetTask, ListTasks, CancelTask and
WatchTask of that task could not be parsed by a Python client."""


def struct_to_dict(
    struct: Struct, field: str = "struct", max_depth: int = MAX_STRUCT_DEPTH
) -> dict[str, Any]:
    """A JSON-like dict from a Struct the client sent in ``field``.

    InvalidArgument naming ``field`` when it nests deeper than ``max_depth`` levels or holds
    a number that is NaN or infinite (JSON has neither; they could not be stored or read
    back). Levels: the Struct itself is level 1, and every object (Struct) or list
    (ListValue) inside it is one level deeper than what holds it: ``{"a": 1}`` has 1 level,
    ``{"a": {"b": [1]}}`` has 3.
    """
    if not struct.fields:  # the common empty input: nothing to walk
        return {}
    return _struct(struct, 1, field, max_depth)


def _struct(struct: Struct, depth: int, field: str, max_depth: int) -> dict[str, Any]:
    if depth > max_depth:
        raise _too_deep(field, max_depth)
    return {key: _value(value, depth, field, max_depth) for key, value in struct.fields.items()}


def _list(values: ListValue, depth: int, field: str, max_depth: int) -> list[Any]:
    if depth > max_depth:
        raise _too_deep(field, max_depth)
    return [_value(value, depth, field, max_depth) for value in values.values]


def _value(value: Value, depth: int, field: str, max_depth: int) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidArgument.of(
                field, f"holds {number}; numbers must be finite (JSON has no NaN or Infinity)"
            )
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _struct(value.struct_value, depth + 1, field, max_depth)
    if kind == "list_value":
        return _list(value.list_value, depth + 1, field, max_depth)
    return None  # null_value, or no kind set (JSON's null, as json_format reads it)


def _too_deep(field: str, max_depth: int) -> InvalidArgument:
    return InvalidArgument.of(
        field,
        f"nests objects and lists more than {max_depth} levels deep (COORDINATOR_MAX_STRUCT_DEPTH)",
    )


def struct_from_dict(data: dict[str, Any] | None) -> Struct | None:
    """A Struct from a JSON-like dict (None stays None)."""
    if data is None:
        return None
    struct = Struct()
    struct.update(data)
    return struct


def duration_s(duration: Duration) -> float:
    """Seconds of a Duration."""
    return duration.seconds + duration.nanos / 1e9


def error_to_proto(error: TaskError) -> task_pb2.TaskError:
    """The wire form of a task error."""
    return task_pb2.TaskError(
        message=error.message,
        type=error.type,
        retryable=error.retryable,
        details=struct_from_dict(error.details) if error.details else None,
    )


def _error_to_proto(error: TaskError | None) -> task_pb2.TaskError | None:
    return None if error is None else error_to_proto(error)


def requirements_to_proto(requirements: Requirements | None) -> task_pb2.TaskRequirements:
    """The wire form of task requirements (None: any agent)."""
    r = requirements or Requirements()
    return task_pb2.TaskRequirements(
        agent_type=r.agent_type,
        capabilities=r.capabilities,
        services=r.services,
        labels=r.labels,
        agent_id=r.agent_id,
        min_health_score=r.min_health_score,
        preferred_capabilities=r.preferred_capabilities,
    )


def retry_policy_to_proto(policy: RetryPolicy) -> task_pb2.RetryPolicy:
    """The wire form of a retry policy."""
    return task_pb2.RetryPolicy(
        initial_backoff=duration_from_s(policy.initial_backoff_s),
        max_backoff=duration_from_s(policy.max_backoff_s),
        backoff_multiplier=policy.backoff_multiplier,
    )


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
