"""Conversions that both ends of the wire need: the node's edge (``api/wire.py``) and the
Python SDK (``coordinator.sdk``) import them from here, so neither imports the other.

What lives here: the wire enums and their domain enums, times (Timestamp, Duration),
Struct <-> dict (with the node's depth and NaN checks), and the domain -> message forms of
a task's error, requirements and retry policy. Conversions only one side needs stay on that
side: the node's replies in ``api/wire.py``, the SDK's decoding in ``sdk/decoding.py``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.struct_pb2 import ListValue, Struct, Value
from google.protobuf.timestamp_pb2 import Timestamp

from aitbc.coordinator.v1 import agent_pb2, task_pb2
from coordinator.agents.records import AgentStatus
from coordinator.errors import InvalidArgument
from coordinator.strategies import Strategy
from coordinator.tasks.models import (
    Priority,
    Requirements,
    RetryPolicy,
    TaskError,
    TaskState,
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
        return self._by_number.get(number)

    @functools.cached_property
    def _by_number(self) -> dict[int, E]:
        """Each wire number whose name (after the prefix) is a domain value: built once, as
        every submit parses its enums (a miss used to raise and catch a KeyError)."""
        by_number = {}
        for name, number in self.wire.items():
            value = self.domain.__members__.get(name.removeprefix(self.prefix))
            if value is not None:
                by_number[number] = value
        return by_number

    def known_names(self) -> str:
        """The wire names a client may send, for a message that refuses another."""
        return ", ".join(n for n in self.wire.keys() if not n.endswith("_UNSPECIFIED"))


AGENT_STATUS = WireEnum(agent_pb2.AgentStatus, AgentStatus, STATUS_PREFIX)
TASK_PRIORITY = WireEnum(task_pb2.TaskPriority, Priority, PRIORITY_PREFIX)
TASK_STATE = WireEnum(task_pb2.TaskState, TaskState, STATE_PREFIX)
BALANCING_STRATEGY = WireEnum(task_pb2.BalancingStrategy, Strategy, STRATEGY_PREFIX)


def status_from_proto(value: int) -> AgentStatus | None:
    """The domain status of a wire enum value; None for UNSPECIFIED or an unknown number."""
    return AGENT_STATUS.parse(value)


def status_to_proto(status: AgentStatus) -> str:
    """The wire enum value name of a domain status (message constructors accept names)."""
    return STATUS_PREFIX + status.name


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


# --- Times -----------------------------------------------------------------------------------


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


def duration_s(duration: Duration) -> float:
    """Seconds of a Duration."""
    return duration.seconds + duration.nanos / 1e9


# --- Structs ---------------------------------------------------------------------------------

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


# --- Task fields -----------------------------------------------------------------------------


def error_to_proto(error: TaskError) -> task_pb2.TaskError:
    """The wire form of a task error."""
    return task_pb2.TaskError(
        message=error.message,
        type=error.type,
        retryable=error.retryable,
        details=struct_from_dict(error.details) if error.details else None,
    )


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
