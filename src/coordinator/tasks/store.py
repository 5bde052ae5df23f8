"""The task store in Redis: submit, cancel, purge, the agents' fenced reports; reading,
listing, queues and cluster statistics are ``TaskReads``'s (``coordinator.tasks.reads``).

A task is the hash ``task:{task_id}``; every change of state is one Lua script
(``lua/*_task*.lua`` with the shared ``lua/task_lib.lua``), so queues, indexes, slots and
counters move together or not at all, whichever nodes run at once. Assignment itself is the
dispatcher's, which the store tells what it needs through ``DispatchHooks``; giving up
attempts on timers is the reaper's.

The batch calls (``submit_many``, ``report_many``) run the same scripts as the single ones,
one call per entry, sent in pipelines of up to SUBMITS_PER_ROUND_TRIP (submits) or
REPORTS_PER_ROUND_TRIP (reports) entries: a few round trips however many entries.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from coordinator.auth import principal
from coordinator.auth.quotas import SubmitQuota, is_refusal
from coordinator.config import Settings
from coordinator.errors import CoordinatorError, FailedPrecondition, NotFound
from coordinator.storage import keys
from coordinator.storage.connection import run_script_durably
from coordinator.storage.multiplex import MultiplexedConnection
from coordinator.storage.scripts import run_batch
from coordinator.tasks.calls import (
    SETTLING_ACTIONS,
    Report,
    ReportOutcome,
    Submitted,
    TaskToQueue,
)
from coordinator.tasks.dispatch_hooks import DispatchHooks, NoDispatch
from coordinator.tasks.models import (
    Priority,
    Task,
    TaskError,
    TaskState,
    TaskSubmission,
)
from coordinator.tasks.reads import BATCH, TaskReads
from coordinator.tasks.records import as_submitted, decode_task
from coordinator.tasks.script_calls import (
    CancelTaskCall,
    ReportReply,
    SubmitReply,
    SubmitTaskCall,
)

log = logging.getLogger(__name__)

SUBMITS_PER_ROUND_TRIP = 50
"""Most submit scripts of a batch sent in one round trip: 1,000 tasks of 3 KB in one went
on the node's shared Redis connection as 3 MB, which every other call then queued behind."""

REPORTS_PER_ROUND_TRIP = 200
"""The same for the reports of a batch (smaller than submits, as a rule)."""


class TaskStore(TaskReads):
    """Tasks, queues and statistics, shared by every node that uses the same Redis: the
    changes of state here, the reads in ``TaskReads``."""

    def __init__(
        self,
        redis: Redis,
        multiplexed: MultiplexedConnection,
        settings: Settings,
        dispatch: DispatchHooks | None = None,
    ) -> None:
        super().__init__(redis, settings)
        self._multiplexed = multiplexed
        """Task-script batches: the hot path (submits, reports) goes through it."""
        self._quota = SubmitQuota.of(settings)
        self._dispatch: DispatchHooks = dispatch or NoDispatch()
        """Told when a task joined a queue or a slot came free, and asked to plan the round
        trips that queue tasks: the node's own dispatcher (the dispatch turn reaches
        whichever node is passing)."""

    async def _durably(self, script: AsyncScript, args: Sequence[Any]) -> Any:
        """Run a task script on the pooled client; with COORDINATOR_REDIS_MIN_REPLICAS, answer
        only once that many replicas have its write (the batches on the multiplexed
        connection wait the same way)."""
        return await run_script_durably(
            self._redis, self._multiplexed.durability, script, args=args
        )

    def use_dispatch(self, dispatch: DispatchHooks) -> None:
        """Tell ``dispatch`` from now on (the composition root builds the dispatcher after
        the store it reads)."""
        self._dispatch = dispatch

    # --- clients --------------------------------------------------------------------------

    async def submit(self, submission: TaskSubmission) -> tuple[Task, bool]:
        """Queue a task; with a request_id seen within the window, return that task instead.

        The task is the calling principal's (``principal.current()``): stored as its
        submitter, under its quotas (ResourceExhausted when over one), and its request_ids
        are its own."""
        s = submission
        submitted_by = principal.submitter_name()
        (reply,) = await self._queue([s], submitted_by)
        if isinstance(reply, Exception):
            raise reply
        if is_refusal(reply):
            raise self._quota.refusal(reply, submitted_by)
        submitted = SubmitReply.parse(reply)
        if not submitted.created:
            return await self.get(submitted.task_id), False
        _log_submitted(s, submitted.task_id)
        return (
            as_submitted(
                s,
                submitted.task_id,
                created_at_ms=submitted.created_at_ms,
                seq=submitted.seq,
                submitted_by=submitted_by,
            ),
            True,
        )

    async def submit_many(
        self, submissions: Sequence[TaskSubmission]
    ) -> list[Submitted | Exception]:
        """Queue many tasks, each exactly as ``submit`` would, in a few round trips. Returns one
        entry per submission, in order: what became of it, or the Redis error its script met
        (an outage raises instead: some tasks may have been queued, and a retry with the
        same request_ids is safe). A submission over its principal's quota gets
        ResourceExhausted; the others are taken."""
        submitted_by = principal.submitter_name()
        replies: list[Any] = []
        # In chunks, one round trip each: the node's other calls share its Redis connection
        # and its event loop, and get their turn between two chunks, not after 1,000 tasks.
        for start in range(0, len(submissions), SUBMITS_PER_ROUND_TRIP):
            chunk = submissions[start : start + SUBMITS_PER_ROUND_TRIP]
            replies += await self._queue(chunk, submitted_by)
        outcomes: list[Submitted | Exception] = []
        for s, reply in zip(submissions, replies, strict=True):
            if isinstance(reply, Exception):
                outcomes.append(reply)
                continue
            if is_refusal(reply):
                outcomes.append(self._quota.refusal(reply, submitted_by))
                continue
            submitted = SubmitReply.parse(reply)
            if submitted.created:
                _log_submitted(s, submitted.task_id)
            outcomes.append(
                Submitted(submitted.task_id, submitted.created, submitted.created_at_ms)
            )
        return outcomes

    async def _queue(self, submissions: Sequence[TaskSubmission], submitted_by: str) -> list[Any]:
        """Run ``lua/submit_task.lua`` for each submission of ``submitted_by`` in one round
        trip (the replies, a refused call as its exception object), then have them
        dispatched: the script
        assigns a task at once to the agent this node's dispatcher chose for it, and the
        dispatch turn and snapshot ride in that round trip, when the dispatcher plans them."""
        to_queue = [TaskToQueue(secrets.token_hex(16), s) for s in submissions]
        plan = self._dispatch.plan_submit(to_queue)
        assignments = plan.assignments if plan is not None else {}
        window_ms = round(self._settings.idempotency_window_s * 1000)
        quota_args = self._quota.script_args(submitted_by)
        partition = self._settings.node_id  # this node's dispatch partition
        script = self._scripts.submit_task
        replies = await run_batch(
            self._multiplexed,
            [
                (
                    script,
                    (),
                    SubmitTaskCall(
                        t, window_ms, assignments.get(t.task_id), quota_args, partition
                    ).args(),
                )
                for t in to_queue
            ],
            raise_on_error=False,
            piggyback=plan.piggyback if plan is not None else None,
        )
        if plan is None:
            self._dispatch.request()
        return replies

    async def cancel(self, task_id: str, reason: str, *, submitted_by: str | None = None) -> Task:
        """Cancel a PENDING, ASSIGNED or RUNNING task; a finished one is FAILED_PRECONDITION.

        With ``submitted_by``, only a task that principal submitted: another one is
        NotFound, exactly as an unknown one (the caller answers both alike, and nothing is
        changed: the check and the cancel are one script)."""
        call = CancelTaskCall(
            task_id, reason or "cancelled by client", submitted_by=submitted_by or ""
        )
        verdict, state = call.parse(await self._durably(self._scripts.cancel_task, call.args()))
        if verdict in ("not_found", "not_owner"):
            raise NotFound(f"task_id: no task {task_id!r}")
        if verdict == "final":
            raise FailedPrecondition(f"task_id: task {task_id!r} is already {state}")
        self._dispatch.request()  # a slot may have come free
        log.info("task cancelled", extra={"task_id": task_id, "reason": reason})
        return await self.get(task_id)

    # --- agents' reports ------------------------------------------------------------------

    async def acknowledge(self, task_id: str, agent_id: str, fencing_token: str) -> int:
        """ASSIGNED to RUNNING; returns the end of the lease in epoch milliseconds."""
        reply = await self._report(Report.acknowledge(task_id, agent_id, fencing_token))
        assert reply.lease_expires_at_ms is not None  # the script answers a taken ack with it
        return reply.lease_expires_at_ms

    async def extend_lease(
        self, task_id: str, agent_id: str, fencing_token: str, lease_s: float | None
    ) -> int:
        """A new lease from now; returns its end in epoch milliseconds."""
        reply = await self._report(Report.extend(task_id, agent_id, fencing_token, lease_s))
        assert reply.lease_expires_at_ms is not None  # the script answers a taken extend with it
        return reply.lease_expires_at_ms

    async def complete(
        self, task_id: str, agent_id: str, fencing_token: str, result: dict[str, Any]
    ) -> Task:
        """COMPLETED with a result."""
        reply = await self._report(Report.complete(task_id, agent_id, fencing_token, result))
        return decode_task(_pairs(reply.record or ()))

    async def fail(self, task_id: str, agent_id: str, fencing_token: str, error: TaskError) -> Task:
        """Back in line after a backoff if retryable and attempts remain, else FAILED."""
        reply = await self._report(Report.fail(task_id, agent_id, fencing_token, error))
        return decode_task(_pairs(reply.record or ()))

    async def _report(self, report: Report) -> ReportReply:
        reply = ReportReply.parse(
            await self._durably(self._scripts.report_task, report.args(with_record=True))
        )
        refusal = _refusal(report, reply)
        if refusal is not None:
            raise refusal
        self._after_reports([report], [reply])
        return reply

    async def report_many(self, reports: Sequence[Report]) -> list[ReportOutcome | Exception]:
        """Apply many reports, each exactly as alone (fenced, a repeat of a successful one
        changes nothing), in order and in a few round trips. Returns one entry per report: its
        outcome, or why it was refused (NotFound, FailedPrecondition, or the Redis error its
        script met). An outage raises instead: some reports may have been applied, and a
        retry is safe."""
        replies: list[ReportReply | Exception] = []
        for start in range(0, len(reports), REPORTS_PER_ROUND_TRIP):
            raw = await self._run_each(
                self._scripts.report_task,
                [
                    r.args(with_record=False)
                    for r in reports[start : start + REPORTS_PER_ROUND_TRIP]
                ],
            )
            replies += [r if isinstance(r, Exception) else ReportReply.parse(r) for r in raw]
        outcomes: list[ReportOutcome | Exception] = []
        for report, reply in zip(reports, replies, strict=True):
            if isinstance(reply, Exception):
                outcomes.append(reply)
                continue
            refusal = _refusal(report, reply)
            if refusal is not None:
                outcomes.append(refusal)
                continue
            lease = reply.lease_expires_at_ms if report.action in ("ack", "extend") else None
            outcomes.append(ReportOutcome(TaskState[reply.state], lease))
        self._after_reports(reports, replies)
        return outcomes

    def _after_reports(
        self, reports: Sequence[Report], replies: Sequence[ReportReply | Exception]
    ) -> None:
        """Tell the dispatcher which slots the reports freed, and wake it when tasks wait
        for them (``lua/report_task.lua`` says so)."""
        ended = [
            (report, reply)
            for report, reply in zip(reports, replies, strict=True)
            if not isinstance(reply, Exception) and _ended_an_attempt(report, reply)
        ]
        if ended:
            self._dispatch.slots_freed([report.agent_id for report, _ in ended])
            if any(reply.tasks_waiting for _, reply in ended):
                self._dispatch.request()

    async def _run_each(self, script: AsyncScript, calls: Sequence[Sequence[Any]]) -> list[Any]:
        """Run ``script`` once per argument list, in order, in one round trip; a call that
        Redis refused comes back as its exception object, so that one entry's failure does
        not hide the others' replies (an outage raises)."""
        return await run_batch(
            self._multiplexed, [(script, [], args) for args in calls], raise_on_error=False
        )

    # --- queues and statistics ------------------------------------------------------------

    async def purge(self, priority: Priority, reason: str) -> int:
        """Cancel every PENDING task of one priority (queued or waiting for a retry)."""
        reason = reason or f"queue {priority.name} purged"
        cancelled = 0
        seen: set[str] = set()
        while True:
            batch = [
                str(t)
                for t in await self._redis.zrange(keys.task_queue(priority.name), 0, BATCH - 1)
            ]
            batch = [t for t in batch if t not in seen]
            if not batch:
                break
            seen.update(batch)
            cancelled += await self._cancel_pending(batch, reason)
        waiting = [str(t) for t in await self._redis.zrange(keys.TASK_SCHEDULED, 0, -1)]
        for chunk in _chunks(waiting, BATCH):
            async with self._redis.pipeline(transaction=False) as pipe:
                for task_id in chunk:
                    pipe.hget(keys.task(task_id), "priority")
                priorities = await pipe.execute()
            matching = [t for t, p in zip(chunk, priorities, strict=True) if p == priority.name]
            cancelled += await self._cancel_pending(matching, reason)
        log.warning("queue purged", extra={"priority": priority.name, "cancelled": cancelled})
        return cancelled

    async def _cancel_pending(self, task_ids: Sequence[str], reason: str) -> int:
        cancelled = 0
        for task_id in task_ids:
            call = CancelTaskCall(task_id, reason, pending_only=True)
            verdict, _ = call.parse(await self._durably(self._scripts.cancel_task, call.args()))
            cancelled += verdict == "ok"
        return cancelled


def _log_submitted(s: TaskSubmission, task_id: str) -> None:
    # DEBUG, not INFO: at thousands of tasks/s formatting this line costs real CPU.
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "task submitted",
            extra={"task_id": task_id, "priority": s.priority.name, "task_type": s.task_type},
        )


def _refusal(report: Report, reply: ReportReply) -> CoordinatorError | None:
    """Why ``lua/report_task.lua`` refused a report, or None if it took it."""
    verdict = reply.verdict
    task_id = report.task_id
    if verdict == "not_found":
        return NotFound(f"task_id: no task {task_id!r}")
    if verdict == "stale":
        return FailedPrecondition(
            f"fencing_token: not the current attempt of task {task_id!r} for agent "
            f"{report.agent_id!r} (the task is {reply.state} at attempt {reply.attempt}); "
            "drop this attempt's work"
        )
    if verdict == "not_held":
        return FailedPrecondition(
            f"task_id: task {task_id!r} is {reply.state}; the attempt can no longer be reported"
        )
    if verdict == "ok" and log.isEnabledFor(logging.DEBUG):
        # DEBUG, not INFO: at thousands of tasks/s formatting this line costs real CPU.
        log.debug(
            "task %s by agent",
            report.action,
            extra={"task_id": task_id, "agent_id": report.agent_id},
        )
    return None


def _ended_an_attempt(report: Report, reply: ReportReply) -> bool:
    """Whether a report ended an attempt (freeing its slot); its reply then says whether
    tasks wait in line for that slot."""
    return (
        report.action in SETTLING_ACTIONS
        and reply.verdict == "ok"
        and reply.tasks_waiting is not None
    )


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    """A dict from a Lua HGETALL reply (a flat list of field, value)."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
