"""Domain objects of the task side: what a task is, what a client submits and what the
coordinator reports. Like ``agents.records``, they never reference protobuf types."""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from coordinator.strategies import Strategy

DEFAULT_MAX_ATTEMPTS = 3
MAX_MAX_ATTEMPTS = 100
DEFAULT_SCHEDULE_TO_START_S = 300.0
DEFAULT_START_TO_CLOSE_S = 300.0


class TaskState(enum.Enum):
    """Where a task is in its life (the wire enum TASK_STATE_<NAME> maps by name)."""

    PENDING = 1
    ASSIGNED = 2
    RUNNING = 3
    COMPLETED = 4
    FAILED = 5
    CANCELLED = 6
    EXPIRED = 7

    @property
    def final(self) -> bool:
        """No transition leaves a final state."""
        return self in (
            TaskState.COMPLETED,
            TaskState.FAILED,
            TaskState.CANCELLED,
            TaskState.EXPIRED,
        )


class Priority(enum.Enum):
    """Priority queues (wire enum TASK_PRIORITY_<NAME>): strict between levels, FIFO within."""

    LOW = 1
    NORMAL = 2
    HIGH = 3
    CRITICAL = 4
    URGENT = 5


PRIORITIES_MOST_URGENT_FIRST = tuple(sorted(Priority, key=lambda p: -p.value))


@dataclass(frozen=True)
class Requirements:
    """Which agents may run a task; every given field must match."""

    agent_type: str = ""
    capabilities: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    agent_id: str = ""
    min_health_score: float = 0.0
    preferred_capabilities: tuple[str, ...] = ()

    def to_json(self) -> str:
        """Canonical JSON: equal requirements give equal text."""
        return _requirements_json(self._key())

    def _key(self) -> tuple[Any, ...]:
        """The fields as a hashable value (labels sorted): equal requirements, equal key.
        Computed once per instance (the tasks of a batch mostly share one: ``tasks.validation``
        ``checked_requirements``)."""
        key = self.__dict__.get("_cached_key")
        if key is None:
            key = (
                self.agent_type,
                tuple(sorted(self.capabilities)),
                tuple(sorted(self.services)),
                tuple(sorted(self.labels.items())),
                self.agent_id,
                self.min_health_score,
                tuple(sorted(self.preferred_capabilities)),
            )
            object.__setattr__(self, "_cached_key", key)  # frozen: not a field, not compared
        return key

    @classmethod
    def from_json(cls, raw: str) -> Requirements:
        """The inverse of ``to_json``."""
        data = json.loads(raw)
        return cls(
            agent_type=data["agent_type"],
            capabilities=tuple(data["capabilities"]),
            services=tuple(data["services"]),
            labels=dict(data["labels"]),
            agent_id=data["agent_id"],
            min_health_score=float(data["min_health_score"]),
            preferred_capabilities=tuple(data["preferred_capabilities"]),
        )

    def eligibility_class(self) -> str:
        """Tasks with the same class are eligible for the same agents.

        Each class has its own queue per priority, so a task that no agent can take holds up
        only its own class, never the others (no head-of-line blocking). Preferred
        capabilities only rank agents, so they are not part of the class.
        """
        return _eligibility_class(self._key())


# Tasks submitted together mostly share their requirements: their JSON and class are
# computed once per distinct set, not once per task.
@functools.lru_cache(maxsize=1024)
def _requirements_json(key: tuple[Any, ...]) -> str:
    agent_type, capabilities, services, labels, agent_id, min_health_score, preferred = key
    return json.dumps(
        {
            "agent_type": agent_type,
            "capabilities": list(capabilities),
            "services": list(services),
            "labels": dict(labels),
            "agent_id": agent_id,
            "min_health_score": min_health_score,
            "preferred_capabilities": list(preferred),
        },
        separators=(",", ":"),
    )


@functools.lru_cache(maxsize=1024)
def _eligibility_class(key: tuple[Any, ...]) -> str:
    data = json.loads(_requirements_json(key))
    del data["preferred_capabilities"]
    canonical = json.dumps(data, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RetryPolicy:
    """Spacing of attempts: initial backoff, multiplied after each attempt, capped."""

    initial_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    backoff_multiplier: float = 2.0

    def to_json(self) -> str:
        """The form the task scripts read (milliseconds)."""
        return _retry_json(self)

    @classmethod
    def from_json(cls, raw: str) -> RetryPolicy:
        """The inverse of ``to_json``."""
        data = json.loads(raw)
        return cls(data["initial_ms"] / 1000, data["max_ms"] / 1000, float(data["multiplier"]))


@functools.lru_cache(maxsize=256)
def _retry_json(policy: RetryPolicy) -> str:
    """RetryPolicy.to_json, once per distinct policy (tasks submitted together share one)."""
    return json.dumps(
        {
            "initial_ms": round(policy.initial_backoff_s * 1000),
            "max_ms": round(policy.max_backoff_s * 1000),
            "multiplier": policy.backoff_multiplier,
        }
    )


@dataclass(frozen=True)
class TaskError:
    """Why an attempt or a task failed."""

    message: str
    type: str = ""
    retryable: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The form stored in the task and read by the scripts."""
        return json.dumps(
            {
                "message": self.message,
                "type": self.type,
                "retryable": self.retryable,
                "details": self.details,
            }
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskError:
        """From the stored JSON object (the scripts may omit details)."""
        details = data.get("details") or {}
        return cls(
            message=str(data.get("message", "")),
            type=str(data.get("type", "")),
            retryable=bool(data.get("retryable", False)),
            details=details if isinstance(details, dict) else {},
        )


@dataclass(frozen=True)
class TaskSubmission:
    """A validated SubmitTask request, defaults applied."""

    task_type: str
    task_data: dict[str, Any]
    priority: Priority = Priority.NORMAL
    requirements: Requirements = Requirements()
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    schedule_to_start_s: float = DEFAULT_SCHEDULE_TO_START_S
    start_to_close_s: float = DEFAULT_START_TO_CLOSE_S
    retry_policy: RetryPolicy = RetryPolicy()
    request_id: str = ""
    strategy: Strategy | None = None
    routing_key: str = ""


@dataclass(frozen=True)
class Attempt:
    """One attempt of a task."""

    attempt: int
    agent_id: str
    node_id: str
    assigned_at_ms: int
    started_at_ms: int | None
    ended_at_ms: int | None
    outcome: TaskState | None
    error: TaskError | None


@dataclass(frozen=True)
class Transition:
    """One change of a task's state."""

    state: TaskState
    at_ms: int
    attempt: int
    agent_id: str
    reason: str


@dataclass(frozen=True)
class Task:
    """A task and its history, as stored."""

    task_id: str
    task_type: str
    state: TaskState
    priority: Priority
    task_data: dict[str, Any]
    requirements: Requirements
    max_attempts: int
    attempt: int
    agent_id: str
    schedule_to_start_s: float
    start_to_close_s: float
    retry_policy: RetryPolicy
    request_id: str
    strategy: Strategy | None
    routing_key: str
    result: dict[str, Any] | None
    error: TaskError | None
    attempts: tuple[Attempt, ...]
    transitions: tuple[Transition, ...]
    created_at_ms: int
    updated_at_ms: int
    lease_expires_at_ms: int | None
    dead_lettered: bool
    fencing_token: str
    seq: int = 0
    """Place in line: tasks of one priority are assigned in this order (FIFO)."""
    submitted_by: str = ""
    """The principal that submitted the task; "" when it was submitted without
    authentication. A client may read, watch and cancel only its own tasks."""

    def as_of(self, count: int) -> Task:
        """The task as its first ``count`` transitions left it, for a watch that fell behind.

        The state, attempt and agent come from the transition; later attempts and the result
        (set only by the final transition) are left out; the other fields are as they are now.
        """
        if count >= len(self.transitions):
            return self
        then = self.transitions[count - 1]
        return dataclasses.replace(
            self,
            state=then.state,
            attempt=then.attempt,
            agent_id=then.agent_id,
            transitions=self.transitions[:count],
            attempts=tuple(a for a in self.attempts if a.attempt <= then.attempt),
            result=None,
            updated_at_ms=then.at_ms,
        )


@dataclass(frozen=True)
class ListTasksQuery:
    """Filters of ListTasks (validated). All given filters must match."""

    states: frozenset[TaskState] = frozenset()
    agent_id: str = ""
    priorities: frozenset[Priority] = frozenset()
    dead_letter: bool = False
    page_size: int = 100
    page_token: str = ""


@dataclass(frozen=True)
class TaskPage:
    """One page of ListTasks, newest first."""

    tasks: list[Task]
    next_page_token: str


@dataclass(frozen=True)
class QueueStats:
    """One priority queue."""

    priority: Priority
    pending: int
    oldest_task_age_s: float


@dataclass(frozen=True)
class QueueReport:
    """Every priority queue, plus retries waiting and the dead-letter list."""

    queues: list[QueueStats]
    scheduled_retries: int
    dead_letter: int


@dataclass(frozen=True)
class LoadBalancerStats:
    """How work is spread over agents."""

    strategy: Strategy
    active_agents: int
    total_assignments: int
    avg_agent_load: float
    assignments_per_agent: dict[str, int]


@dataclass(frozen=True)
class TaskStats:
    """Cluster-wide counters and latencies (the old GET /tasks/status, with real data)."""

    tasks_submitted: int
    tasks_distributed: int
    tasks_completed: int
    tasks_failed: int
    tasks_cancelled: int
    tasks_expired: int
    avg_submit_to_assignment_ms: float
    p99_submit_to_assignment_ms: float
    load_balancer_stats: LoadBalancerStats
    queues: list[QueueStats]
