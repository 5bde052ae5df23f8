"""The attempts an agent holds: each delivery is taken once (at-least-once delivery repeats
them), run by an ``AttemptRunner`` within the agent's slots, cancelled on notice, or, when
it cannot run, reported failed without running; stopping drains them all."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from coordinator.sdk.assignments import AssignmentInfo, UndecodableAssignment
from coordinator.sdk.context import TaskContext
from coordinator.sdk.reports import Reporter
from coordinator.sdk.runner import AttemptRunner, Handler
from coordinator.tasks.models import TaskError

log = logging.getLogger(__name__)

SEEN_DELIVERIES_KEPT = 10_000
"""Deliveries remembered to drop repeats (at-least-once delivery re-sends unacknowledged
assignments when a stream reopens)."""


class Attempts:
    """The attempts one agent has received and not yet reported, and those it hands back."""

    def __init__(
        self,
        agent_id: str,
        reporter: Reporter,
        max_concurrency: int,
        acknowledge_after_s: float,
    ) -> None:
        self._agent_id = agent_id
        self._acknowledge_after_s = acknowledge_after_s
        self._reporter = reporter
        self._slots = asyncio.Semaphore(max_concurrency)
        self._runners: dict[tuple[str, int], tuple[AttemptRunner, asyncio.Task[None]]] = {}
        self._handing_back: set[asyncio.Task[None]] = set()
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        self.accepting = True
        """False once the agent is stopping: what arrives then is handed back."""
        self._log = {"agent_id": agent_id}

    @property
    def running(self) -> int:
        """Attempts received and not yet reported."""
        return len(self._runners)

    def tasks(self) -> list[asyncio.Task[None]]:
        """Every asyncio task still at work for an attempt: hand-backs, then runners."""
        return [*self._handing_back, *(task for _, task in self._runners.values())]

    def _first_delivery(self, assignment: AssignmentInfo) -> bool:
        """True the first time an attempt arrives (it is remembered), False for a repeat."""
        key = assignment.key
        if key in self._seen:
            log.debug("repeated delivery ignored", extra={**self._log, "task_id": key[0]})
            return False
        self._seen[key] = None
        while len(self._seen) > SEEN_DELIVERIES_KEPT:
            self._seen.popitem(last=False)
        return True

    def accept(self, assignment: AssignmentInfo, handler: Handler) -> None:
        """Run a delivered attempt with ``handler`` (a repeat is dropped; while stopping, it
        is handed back)."""
        if not self._first_delivery(assignment):
            return
        key = assignment.key
        if not self.accepting:
            self._hand_back(assignment)
            return
        context = TaskContext(
            task_id=assignment.task_id,
            attempt=assignment.attempt,
            task_type=assignment.task_type,
            data=assignment.data,
            priority=assignment.priority,
            agent_id=self._agent_id,
            start_to_close_s=assignment.start_to_close_s,
        )
        runner = AttemptRunner(
            assignment,
            context,
            handler,
            self._reporter,
            self._slots,
            acknowledge_after_s=self._acknowledge_after_s,
        )
        task = asyncio.create_task(runner.run())
        self._runners[key] = (runner, task)
        task.add_done_callback(lambda _: self._runners.pop(key, None))

    def _hand_back(self, assignment: AssignmentInfo) -> None:
        """An assignment that raced with stopping: give it back to be retried elsewhere."""
        error = TaskError("the agent is stopping", "AgentStopped", retryable=True)
        self._report_unrun(assignment, error)

    def refuse(self, undecodable: UndecodableAssignment) -> None:
        """An assignment whose task could not be decoded: no agent of this SDK could run it,
        so it fails for good instead of killing or stalling agent after agent."""
        assignment = undecodable.assignment
        if not self._first_delivery(assignment):
            return
        log.error(
            "assignment could not be decoded; reporting the task failed: %s",
            undecodable.reason,
            extra={**self._log, "task_id": assignment.task_id, "attempt": assignment.attempt},
        )
        self._report_unrun(assignment, undecodable.error())

    def _report_unrun(self, assignment: AssignmentInfo, error: TaskError) -> None:
        """Fail an attempt that never ran; stopping waits for the report (``drain``)."""
        task = asyncio.create_task(self._report_hand_back(assignment, error))
        self._handing_back.add(task)
        task.add_done_callback(self._handing_back.discard)

    async def _report_hand_back(self, assignment: AssignmentInfo, error: TaskError) -> None:
        await self._reporter.fail(assignment, error)

    def cancel(self, task_id: str, attempt: int, reason: str) -> None:
        """A cancel notice: stop the attempt's handler if it is running here."""
        entry = self._runners.get((task_id, attempt))
        log.info("cancel notice: %s", reason, extra={**self._log, "task_id": task_id})
        if entry is not None:
            entry[0].cancel(reason)

    async def drain(self, grace_s: float, report_timeout_s: float) -> None:
        """Let running attempts finish within ``grace_s``, then hand the rest back and wait
        up to ``report_timeout_s`` for those reports. Call it once ``accepting`` is False."""
        running = [task for _, task in self._runners.values()]
        if running:
            log.info("stopping: waiting for %d task(s)", len(running), extra=self._log)
            await asyncio.wait(running, timeout=grace_s)
        late = list(self._runners.values())
        for runner, _ in late:
            runner.abandon()
        leftovers = [task for _, task in late] + list(self._handing_back)
        if leftovers:
            await asyncio.wait(leftovers, timeout=report_timeout_s)
