"""Checks on what clients and agents send to the TaskService, collecting every violation
with its field path. Like ``validation``, it takes plain Python values: the servicer
unpacks the protobuf messages first."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from coordinator.agents.validation import (
    AGENT_ID,
    AGENT_TYPE,
    DEFAULT_PAGE_SIZE,
    MAP_KEY,
    MAX_LABEL_VALUE_CHARS,
    MAX_LABELS,
    MAX_PAGE_SIZE,
    MAX_REASON_CHARS,
    tags,
)
from coordinator.errors import InvalidArgument, echo
from coordinator.strategies import Strategy
from coordinator.tasks.models import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_SCHEDULE_TO_START_S,
    DEFAULT_START_TO_CLOSE_S,
    MAX_MAX_ATTEMPTS,
    ListTasksQuery,
    Priority,
    Requirements,
    RetryPolicy,
    TaskError,
    TaskState,
    TaskSubmission,
)
from coordinator.violations import Violations

TASK_ID = re.compile(r"^[0-9a-f]{32}$")
TASK_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
"""Printable ASCII without spaces: UUIDs, ULIDs, hashes, "order-42"."""
MAX_ROUTING_KEY_CHARS = 256
MAX_TIMEOUT_S = 30 * 86_400.0
MIN_LEASE_S = 0.1
MAX_BACKOFF_S = 86_400.0
MAX_ERROR_MESSAGE_CHARS = 4096
MAX_ERROR_DETAILS_BYTES = 64 * 1024
MAX_BATCH_ENTRIES = 1000
"""Most entries of one SubmitTasks or ReportTasks call."""


def task_id(value: str, field: str = "task_id") -> str:
    """A well-formed task id (32 lower-case hex digits, as SubmitTask returns)."""
    if not value:
        raise InvalidArgument.of(field, "is required")
    if not TASK_ID.match(value):
        raise InvalidArgument.of(field, f"{echo(value)} is not a task id (32 hex digits)")
    return value


def batch_entries(count: int, field: str) -> None:
    """The number of entries of a batch call (SubmitTasks, ReportTasks): 1 to 1000."""
    if not 1 <= count <= MAX_BATCH_ENTRIES:
        raise InvalidArgument.of(field, f"must hold 1 to {MAX_BATCH_ENTRIES} entries; got {count}")


def _seconds(
    value: float | None, default: float, field: str, low: float, high: float, v: Violations
) -> float:
    if value is None:
        return default
    if not math.isfinite(value) or not low <= value <= high:
        v.add(field, f"must be from {low:g} s to {high:g} s; got {value:g} s")
    return value


def requirements(
    *,
    agent_type: str,
    capabilities: Iterable[str],
    services: Iterable[str],
    labels: Mapping[str, str],
    agent_id: str,
    min_health_score: float,
    preferred_capabilities: Iterable[str],
    v: Violations,
) -> Requirements:
    """Validated requirements (violations are added to ``v``)."""
    prefix = "requirements."
    if agent_type and not AGENT_TYPE.match(agent_type):
        v.add(prefix + "agent_type", "must be 1 to 64 of a-z 0-9 _ - starting with a letter")
    if agent_id and not AGENT_ID.match(agent_id):
        v.add(prefix + "agent_id", f"{echo(agent_id)} is not a valid agent id")
    if len(labels) > MAX_LABELS:
        v.add(prefix + "labels", f"has {len(labels)} entries; at most {MAX_LABELS}")
    for key, value in labels.items():
        if not MAP_KEY.match(key) or len(value) > MAX_LABEL_VALUE_CHARS:
            v.add(f"{prefix}labels[{echo(key)}]", "is not a valid label")
    if not math.isfinite(min_health_score) or not 0.0 <= min_health_score <= 1.0:
        v.add(prefix + "min_health_score", f"must be from 0 to 1; got {min_health_score}")
    return Requirements(
        agent_type=agent_type,
        capabilities=tags(capabilities, prefix + "capabilities", v),
        services=tags(services, prefix + "services", v),
        labels=dict(labels),
        agent_id=agent_id,
        min_health_score=min_health_score,
        preferred_capabilities=tags(preferred_capabilities, prefix + "preferred_capabilities", v),
    )


VALID_REQUIREMENTS_KEPT = 1024
"""Distinct valid requirements kept, by their serialized form (``checked_requirements``)."""

_valid_requirements: dict[bytes, Requirements] = {}


def checked_requirements(
    serialized: bytes, fields: Mapping[str, Any], v: Violations
) -> Requirements:
    """``requirements(**fields)``, where ``serialized`` is the wire form the fields were
    parsed from: valid requirements are kept under it, so that the tasks of a batch, which
    mostly share theirs, are checked once (13 µs a task; a Requirements is immutable)."""
    kept = _valid_requirements.get(serialized)
    if kept is not None:
        return kept
    found = len(v.items)
    checked = requirements(**fields, v=v)
    if len(v.items) == found:
        if len(_valid_requirements) >= VALID_REQUIREMENTS_KEPT:
            _valid_requirements.clear()
        _valid_requirements[serialized] = checked
    return checked


def submission(
    *,
    task_data: dict[str, Any],
    task_data_bytes: int,
    max_task_data_bytes: int,
    task_type: str,
    priority: Priority | None,
    requirements_fields: Mapping[str, Any],
    requirements_serialized: bytes,
    max_attempts: int,
    schedule_to_start_s: float | None,
    start_to_close_s: float | None,
    initial_backoff_s: float | None,
    max_backoff_s: float | None,
    backoff_multiplier: float,
    request_id: str,
    strategy: Strategy | None,
    routing_key: str,
    violations: Violations | None = None,
) -> TaskSubmission:
    """A validated SubmitTask request with defaults applied; ``violations`` holds problems
    found already (unknown enum numbers: ``api.wire.enum_from_proto``), reported with these."""
    v = violations or Violations()
    if task_data_bytes > max_task_data_bytes:
        v.add(
            "task_data",
            f"is {task_data_bytes} bytes serialized; at most {max_task_data_bytes} "
            "(COORDINATOR_MAX_TASK_DATA_BYTES)",
        )
    if task_type and not TASK_TYPE.match(task_type):
        v.add("task_type", "must be 1 to 128 letters, digits or . _ : / - starting with one")
    reqs = checked_requirements(requirements_serialized, requirements_fields, v)
    attempts = max_attempts or DEFAULT_MAX_ATTEMPTS
    if not 1 <= attempts <= MAX_MAX_ATTEMPTS:
        v.add("max_attempts", f"must be from 1 to {MAX_MAX_ATTEMPTS}; got {max_attempts}")
    to_start, to_close = _timeouts(schedule_to_start_s, start_to_close_s, v)
    retry_policy = _retry_policy(initial_backoff_s, max_backoff_s, backoff_multiplier, v)
    if request_id and not REQUEST_ID.match(request_id):
        v.add("request_id", "must be 1 to 128 printable ASCII characters without spaces")
    if len(routing_key) > MAX_ROUTING_KEY_CHARS:
        v.add("routing_key", f"has {len(routing_key)} characters; at most {MAX_ROUTING_KEY_CHARS}")
    v.raise_if_any()
    return TaskSubmission(
        task_type=task_type,
        task_data=task_data,
        priority=priority or Priority.NORMAL,
        requirements=reqs,
        max_attempts=attempts,
        schedule_to_start_s=to_start,
        start_to_close_s=to_close,
        retry_policy=retry_policy,
        request_id=request_id,
        strategy=strategy,
        routing_key=routing_key,
    )


def _timeouts(
    schedule_to_start_s: float | None, start_to_close_s: float | None, v: Violations
) -> tuple[float, float]:
    """A submission's schedule-to-start and start-to-close timeouts, defaults applied."""
    to_start = _seconds(
        schedule_to_start_s,
        DEFAULT_SCHEDULE_TO_START_S,
        "schedule_to_start_timeout",
        1.0,
        MAX_TIMEOUT_S,
        v,
    )
    to_close = _seconds(
        start_to_close_s, DEFAULT_START_TO_CLOSE_S, "start_to_close_timeout", 1.0, MAX_TIMEOUT_S, v
    )
    return to_start, to_close


def _retry_policy(
    initial_backoff_s: float | None,
    max_backoff_s: float | None,
    backoff_multiplier: float,
    v: Violations,
) -> RetryPolicy:
    """A submission's retry policy, with the defaults for what it left out."""
    default = RetryPolicy()
    initial = _seconds(
        initial_backoff_s,
        default.initial_backoff_s,
        "retry_policy.initial_backoff",
        0.0,
        MAX_BACKOFF_S,
        v,
    )
    longest = _seconds(
        max_backoff_s, default.max_backoff_s, "retry_policy.max_backoff", 0.0, MAX_BACKOFF_S, v
    )
    if longest < initial:
        v.add("retry_policy.max_backoff", "must be at least retry_policy.initial_backoff")
    multiplier = backoff_multiplier or default.backoff_multiplier
    if not math.isfinite(multiplier) or not 1.0 <= multiplier <= 100.0:
        v.add("retry_policy.backoff_multiplier", f"must be from 1 to 100; got {multiplier}")
    return RetryPolicy(initial, longest, multiplier)


def report(task_id_value: str, agent_id: str, fencing_token: str) -> None:
    """The fields every agent report carries."""
    v = Violations()
    if not TASK_ID.match(task_id_value):
        v.add("task_id", "is required" if not task_id_value else "is not a task id")
    if not AGENT_ID.match(agent_id):
        v.add("agent_id", "is required" if not agent_id else "is not a valid agent id")
    if not fencing_token:
        v.add("fencing_token", "is required: use the token of the Assignment")
    v.raise_if_any()


def lease(seconds: float | None) -> float | None:
    """A lease length for ExtendTaskLease (None: the task's start_to_close_timeout)."""
    v = Violations()
    value = _seconds(seconds, 0.0, "lease_duration", MIN_LEASE_S, MAX_TIMEOUT_S, v)
    v.raise_if_any()
    return None if seconds is None else value


def task_error(message: str, type_: str, retryable: bool, details: dict[str, Any]) -> TaskError:
    """The error of FailTask."""
    v = Violations()
    if not message:
        v.add("error.message", "is required: say what went wrong")
    elif len(message) > MAX_ERROR_MESSAGE_CHARS:
        v.add("error.message", f"has {len(message)} characters; at most {MAX_ERROR_MESSAGE_CHARS}")
    if len(type_) > 128:
        v.add("error.type", "has more than 128 characters")
    if len(repr(details)) > MAX_ERROR_DETAILS_BYTES:
        v.add("error.details", f"is larger than {MAX_ERROR_DETAILS_BYTES} bytes")
    v.raise_if_any()
    return TaskError(message=message, type=type_, retryable=retryable, details=details)


def reason(value: str) -> str:
    """A reason given with a cancel or purge."""
    if len(value) > MAX_REASON_CHARS:
        raise InvalidArgument.of(
            "reason", f"has {len(value)} characters; at most {MAX_REASON_CHARS}"
        )
    return value


def list_query(
    *,
    states: Iterable[tuple[int, TaskState | None]],
    agent_id: str,
    priorities: Iterable[tuple[int, Priority | None]],
    dead_letter: bool,
    page_size: int,
    page_token: str,
    violations: Violations | None = None,
) -> ListTasksQuery:
    """A validated ListTasks query (page size 0 means 100); ``violations`` holds problems
    found already (unknown enum numbers), reported with these."""
    v = violations or Violations()
    wanted_states = set()
    # None with a number other than 0 is an unknown number, which api.wire.enums_from_proto
    # has put in ``violations`` already; with 0 it is UNSPECIFIED, which names nothing.
    for index, (raw, state) in enumerate(states):
        if state is None and raw == 0:
            v.add(f"states[{index}]", "must name a state, not UNSPECIFIED")
        elif state is not None:
            wanted_states.add(state)
    wanted_priorities = set()
    for index, (raw, priority) in enumerate(priorities):
        if priority is None and raw == 0:
            v.add(f"priorities[{index}]", "must name a priority, not UNSPECIFIED")
        elif priority is not None:
            wanted_priorities.add(priority)
    if agent_id and not AGENT_ID.match(agent_id):
        v.add("agent_id", f"{echo(agent_id)} is not a valid agent id")
    size = page_size or DEFAULT_PAGE_SIZE
    if not 1 <= size <= MAX_PAGE_SIZE:
        v.add("page_size", f"must be from 1 to {MAX_PAGE_SIZE}; got {page_size}")
    v.raise_if_any()
    return ListTasksQuery(
        states=frozenset(wanted_states),
        agent_id=agent_id,
        priorities=frozenset(wanted_priorities),
        dead_letter=dead_letter,
        page_size=size,
        page_token=page_token,
    )
