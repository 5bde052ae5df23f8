"""Typed calls of the task scripts the task path runs: each owns its script's ARGV
(``args()``) and the positions of its reply (``parse``), as the script's header in
``coordinator/storage/lua`` documents them. Callers never index a reply themselves.

The dispatcher's own scripts (assign, snapshot, turn, queue heads) have theirs in
``coordinator.dispatch.script_calls``; they share ``AgentAssignment`` with the submit.
Slots dataclasses: one small object per call or reply is all these add to the hot path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coordinator.storage import keys
from coordinator.tasks.calls import TaskToQueue

NO_ASSIGNMENT = ("", "", "", "", "")
"""``lua/submit_task.lua``'s ARGV[7..11] for a task to queue, not to assign at once."""


@dataclass(frozen=True, slots=True)
class AgentAssignment:
    """An assignment to one agent, as ``lua/assign_task.lua``'s ARGV[2..6] and
    ``lua/submit_task.lua``'s ARGV[7..11] both take it."""

    agent_id: str
    token_nonce: str
    """The random part of the attempt's fencing token."""
    liveness_timeout_ms: int
    node_id: str
    """The assigning node (recorded in the attempt)."""
    delivers_locally: bool
    """The assigning node sends assignments to the streams it holds itself: the reply then
    carries the message for an agent streaming from it."""

    def args(self) -> tuple[Any, ...]:
        """The five ARGV entries of the assignment."""
        return (
            self.agent_id,
            self.token_nonce,
            self.liveness_timeout_ms,
            self.node_id,
            "1" if self.delivers_locally else "",
        )


@dataclass(frozen=True, slots=True)
class AssignReply:
    """``lua/assign_task.lua``'s reply (also the fifth item of a submit's that assigned)."""

    verdict: str
    """'ok', or the refusal: 'task_gone', 'agent_gone', 'agent_unavailable', 'agent_full'
    (or 'not_first' from a submit whose task had another waiting ahead; 'no_free_agent'
    or 'walk_bound' from a script that was to choose the agent)."""
    detail: Any
    """After 'ok' the attempt number; after a refusal what the script said."""
    latency_ms: int = -1
    """From the submit to this assignment for a first attempt, else -1."""
    message: str | None = None
    """The assignment message (JSON) for an agent streaming from the assigning node."""
    agent_id: str = ""
    """The agent the script chose, when it chose (``AssignTaskCall.choose_by``)."""

    @property
    def ok(self) -> bool:
        """Whether the task was assigned."""
        return self.verdict == "ok"

    @classmethod
    def parse(cls, reply: Sequence[Any]) -> AssignReply:
        """The reply's items by name."""
        size = len(reply)
        return cls(
            reply[0],
            reply[1] if size > 1 else None,
            int(reply[2]) if size > 2 else -1,
            reply[3] if size > 3 else None,
            reply[4] if size > 4 else "",
        )


@dataclass(frozen=True, slots=True)
class SubmitTaskCall:
    """``lua/submit_task.lua`` for one task to queue (or to assign at once)."""

    to_queue: TaskToQueue
    idempotency_window_ms: int
    assignment: AgentAssignment | None
    """The agent the node chose for the task from its view, or None to queue it."""
    quota_args: Sequence[Any]
    """ARGV[12..15]: the submitter and its quotas (``SubmitQuota.script_args``)."""
    partition: str = ""
    """The dispatch partition the task queues in: the submitting node's NODE_ID (its
    requirements class is named after both, ``keys.queued_class``)."""

    def args(self) -> list[Any]:
        """ARGV[1..15] and the task's field, value pairs (ARGV[16..])."""
        s = self.to_queue.submission
        fields = {
            "task_type": s.task_type,
            "task_data": json.dumps(s.task_data, separators=(",", ":")),
            "requirements": s.requirements.to_json(),
            "max_attempts": str(s.max_attempts),
            "start_to_close_ms": str(round(s.start_to_close_s * 1000)),
            "retry": s.retry_policy.to_json(),
            "strategy": s.strategy.name.lower() if s.strategy else "",
            "routing_key": s.routing_key,
        }
        return [
            self.to_queue.task_id,
            s.request_id,
            self.idempotency_window_ms,
            s.priority.name,
            keys.queued_class(s.requirements.eligibility_class(), self.partition),
            round(s.schedule_to_start_s * 1000),
            *(self.assignment.args() if self.assignment is not None else NO_ASSIGNMENT),
            *self.quota_args,
            *(item for pair in fields.items() for item in pair),
        ]


@dataclass(frozen=True, slots=True)
class SubmitReply:
    """``lua/submit_task.lua``'s reply, when not an over-quota refusal (``quotas.is_refusal``
    says; that reply is ``quota_lib.lua``'s own)."""

    created: bool
    """False: the request_id was seen within the window, and this is that task."""
    task_id: str
    created_at_ms: int
    seq: int
    """The task's place in line (0 for a task that already existed)."""

    @classmethod
    def parse(cls, reply: Sequence[Any]) -> SubmitReply:
        """The reply's items by name."""
        return cls(reply[0] == 1, reply[1], int(reply[2]), int(reply[3]) if len(reply) > 3 else 0)

    @staticmethod
    def assignment(reply: Sequence[Any]) -> AssignReply | None:
        """What became of the assignment at submit: None when no task was created (a
        repeated request_id, or over quota) or none was asked for."""
        if reply[0] != 1 or len(reply) < 5:
            return None
        return AssignReply.parse(reply[4])


@dataclass(frozen=True, slots=True)
class ReportReply:
    """``lua/report_task.lua``'s reply."""

    verdict: str
    """'ok' or 'repeat' when taken; 'not_found', 'stale' or 'not_held' when refused."""
    state: str
    """The task's state ('' with 'not_found')."""
    lease_expires_at_ms: int | None
    """Taken ack or extend: the end of the lease."""
    attempt: str
    """With 'stale': the task's current attempt."""
    record: Sequence[str] | None
    """Taken complete or fail, asked with the record: the task's HGETALL."""
    tasks_waiting: bool | None
    """After 'ok' ending an attempt: whether tasks wait in line for the freed slot."""

    @property
    def taken(self) -> bool:
        """Whether the report was taken (a repeat of a taken one is)."""
        return self.verdict in ("ok", "repeat")

    @classmethod
    def parse(cls, reply: Sequence[Any]) -> ReportReply:
        """The reply's items by name."""
        verdict, size = reply[0], len(reply)
        third = reply[2] if size > 2 else ""
        taken = verdict in ("ok", "repeat")
        return cls(
            verdict,
            reply[1] if size > 1 else "",
            int(float(third)) if taken and third != "" else None,
            "" if taken else str(third),
            reply[3] if size > 3 and reply[3] else None,
            int(reply[4]) == 1 if size > 4 else None,
        )


@dataclass(frozen=True, slots=True)
class CancelTaskCall:
    """``lua/cancel_task.lua`` for one task."""

    task_id: str
    reason: str
    pending_only: bool = False
    """Cancel only a PENDING task (queue purges)."""
    submitted_by: str = ""
    """The principal the task must have been submitted by, or '' for any task."""

    def args(self) -> list[str]:
        """ARGV[1..4]."""
        return [
            self.task_id,
            self.reason,
            "pending_only" if self.pending_only else "",
            self.submitted_by,
        ]

    @staticmethod
    def parse(reply: Sequence[Any]) -> tuple[str, str]:
        """(verdict, state): 'ok', 'not_found', 'not_owner', 'final' or 'not_pending', and
        the task's state with the last two, else ''."""
        return reply[0], reply[1] if len(reply) > 1 else ""


@dataclass(frozen=True, slots=True)
class ReleaseTaskCall:
    """``lua/release_task.lua``: the coordinator gives up a task's current attempt."""

    task_id: str
    agent_id: str
    """The agent expected to hold the attempt ('' for any)."""
    only_if_lease_ended: bool
    error_type: str
    reason: str

    def args(self) -> list[str]:
        """ARGV[1..5]."""
        return [
            self.task_id,
            self.agent_id,
            "lease" if self.only_if_lease_ended else "",
            self.error_type,
            self.reason,
        ]

    @staticmethod
    def parse(reply: Any) -> str:
        """The task's new state, or '' when there was nothing to release."""
        return str(reply or "")


@dataclass(frozen=True, slots=True)
class PromoteDueTasksCall:
    """``lua/promote_due_tasks.lua``: retries whose backoff has passed go back in line."""

    most: int

    def args(self) -> list[int]:
        """ARGV[1]."""
        return [self.most]

    @staticmethod
    def parse(reply: Any) -> int:
        """The number of tasks moved."""
        return int(reply)


@dataclass(frozen=True, slots=True)
class ExpireTasksCall:
    """``lua/expire_tasks.lua``: PENDING tasks past their schedule-to-start timeout."""

    most: int

    def args(self) -> list[int]:
        """ARGV[1]."""
        return [self.most]

    @staticmethod
    def parse(reply: Sequence[Any]) -> list[str]:
        """The ids of the expired tasks."""
        return [str(task_id) for task_id in reply]


@dataclass(frozen=True, slots=True)
class ForgetFinishedTasksCall:
    """``lua/forget_finished_tasks.lua``: deletes tasks that ended before a bound, and the
    oldest finished tasks beyond ``keep_most`` (0: no bound by count)."""

    ended_before_ms: int
    most: int
    keep_most: int = 0

    def args(self) -> list[int]:
        """ARGV[1..3]."""
        return [self.ended_before_ms, self.most, self.keep_most]

    @staticmethod
    def parse(reply: Any) -> int:
        """The number of tasks deleted."""
        return int(reply)


@dataclass(frozen=True, slots=True)
class CompactFinishedTasksCall:
    """``lua/compact_finished_tasks.lua``: rewrites up to ``most`` finished tasks, oldest
    finished first, in the compact form and archives them; while tasks wait in line, only
    when more than ``most_deferred`` wait to be archived."""

    most: int
    most_deferred: int

    def args(self) -> list[int]:
        """ARGV[1..2]."""
        return [self.most, self.most_deferred]

    @staticmethod
    def parse(reply: Any) -> int:
        """The number of finished tasks gone through (fewer than ``most``: none left)."""
        return int(reply)
