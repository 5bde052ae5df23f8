"""What callers hand the task store and get back from it: tasks to queue and the dispatcher's
plan for their round trip (submits), agents' reports and their outcomes (reports)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coordinator.storage.scripts import PiggybackCalls
from coordinator.tasks.models import TaskError, TaskState, TaskSubmission

if TYPE_CHECKING:  # script_calls imports this module
    from coordinator.tasks.script_calls import AgentAssignment

SETTLING_ACTIONS = ("complete", "fail")
"""Reports that end an attempt, freeing its slot (and a failure may queue a retry)."""


@dataclass(frozen=True)
class TaskToQueue:
    """A task that a submit is about to queue: its new id and what it was submitted with
    (the dispatcher may assign it in the same round trip)."""

    task_id: str
    submission: TaskSubmission


@dataclass(frozen=True)
class SubmitPlan:
    """What the dispatcher adds to the round trip that queues new tasks
    (``Dispatcher.plan_submit``)."""

    assignments: Mapping[str, AgentAssignment]
    """Per task_id, the agent chosen for it, whom ``lua/submit_task.lua`` assigns it to
    instead of queueing it if no task waits ahead and the agent can take it. The other
    tasks are queued."""
    piggyback: PiggybackCalls
    """Calls after the submits (a dispatch turn and its snapshot), and the function that
    takes their replies with the submits' (which hold the assignments' outcomes)."""


@dataclass(frozen=True)
class Submitted:
    """One task of ``submit_many``: the new task, or the one its request_id named."""

    task_id: str
    created: bool
    created_at_ms: int


@dataclass(frozen=True)
class Report:
    """An agent's report about the attempt it holds (``action``: ack, extend, complete or
    fail), as ``lua/report_task.lua`` takes it. Build it with the class methods."""

    task_id: str
    agent_id: str
    fencing_token: str
    action: str
    payload: str = ""

    @classmethod
    def acknowledge(cls, task_id: str, agent_id: str, fencing_token: str) -> Report:
        """ASSIGNED to RUNNING."""
        return cls(task_id, agent_id, fencing_token, "ack")

    @classmethod
    def extend(
        cls, task_id: str, agent_id: str, fencing_token: str, lease_s: float | None
    ) -> Report:
        """A new lease from now (None: the task's start_to_close_timeout)."""
        payload = "" if lease_s is None else str(round(lease_s * 1000))
        return cls(task_id, agent_id, fencing_token, "extend", payload)

    @classmethod
    def complete(
        cls, task_id: str, agent_id: str, fencing_token: str, result: dict[str, Any]
    ) -> Report:
        """COMPLETED with a result."""
        payload = json.dumps(result, separators=(",", ":"))
        return cls(task_id, agent_id, fencing_token, "complete", payload)

    @classmethod
    def fail(cls, task_id: str, agent_id: str, fencing_token: str, error: TaskError) -> Report:
        """Back in line after a backoff if retryable and attempts remain, else FAILED."""
        return cls(task_id, agent_id, fencing_token, "fail", error.to_json())

    def args(self, *, with_record: bool) -> list[str]:
        """ARGV of ``lua/report_task.lua``; ``with_record`` asks for the task's record back
        (complete and fail)."""
        return [
            self.task_id,
            self.agent_id,
            self.fencing_token,
            self.action,
            self.payload,
            "1" if with_record else "0",
        ]


@dataclass(frozen=True)
class ReportOutcome:
    """What a report taken by ``report_many`` did."""

    state: TaskState
    """The task's state after the report."""
    lease_expires_at_ms: int | None
    """The end of the lease, for ack and extend."""
