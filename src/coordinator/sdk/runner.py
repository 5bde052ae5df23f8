"""One attempt on the agent: run the handler in a free slot while keeping the lease alive,
then report its result or its error. The attempt is acknowledged only if it is still under
way after a short delay (``acknowledge_delay_s``): the coordinator takes a completion or a
failure straight from ASSIGNED, so a quick task costs one report instead of two, while a
long one still shows RUNNING to watchers and is not re-sent when the agent's stream
reopens."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc
from google.protobuf.struct_pb2 import Struct

from coordinator.sdk.assignments import AssignmentInfo
from coordinator.sdk.context import TaskContext
from coordinator.sdk.errors import PermanentError
from coordinator.sdk.reports import Reporter
from coordinator.tasks.models import TaskError

log = logging.getLogger(__name__)
# A logger of its own, so that a program can show lease renewals without every task's lines.
lease_log = logging.getLogger("coordinator.sdk.lease")

HandlerResult = dict[str, Any] | None
Handler = Callable[[TaskContext], Awaitable[HandlerResult]] | Callable[[TaskContext], HandlerResult]
"""A task handler: a coroutine function (run on the event loop, cancelled on CancelNotice) or a
plain function (run in a thread; reads ``task.cancelled``). Its return value, a JSON-like dict,
is the task's result; an exception fails the attempt (``PermanentError``: no retry)."""

LEASE_RENEW_FRACTION = 0.5
"""Extend the lease when this fraction of it has passed: a failed extension still leaves the
other half to retry in."""
ACKNOWLEDGE_LEASE_FRACTION = 0.25
"""Acknowledge (which renews the lease) before this fraction of the lease has passed, however
long ``acknowledge_after_s`` is: the lease began at assignment, before the agent received
it, and most of it must remain to retry the acknowledgement in."""


def acknowledge_delay_s(acknowledge_after_s: float, start_to_close_s: float) -> float:
    """How long an attempt runs unacknowledged: ``acknowledge_after_s``, but at most
    ACKNOWLEDGE_LEASE_FRACTION of the lease (0: acknowledge before running the handler)."""
    return max(0.0, min(acknowledge_after_s, start_to_close_s * ACKNOWLEDGE_LEASE_FRACTION))


def is_coroutine_handler(handler: Handler) -> bool:
    """True for ``async def`` handlers (and callables whose ``__call__`` is one)."""
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - callable objects too
    )


class AttemptRunner:
    """Runs one assignment. ``cancel`` (a CancelNotice, a lost lease) drops the attempt
    without a report; ``abandon`` (the agent stops) reports it failed, retryable."""

    def __init__(
        self,
        assignment: AssignmentInfo,
        context: TaskContext,
        handler: Handler,
        reporter: Reporter,
        slots: asyncio.Semaphore,
        *,
        acknowledge_after_s: float,
    ) -> None:
        self.assignment = assignment
        self.context = context
        self._handler = handler
        self._coroutine_handler = is_coroutine_handler(handler)
        self._reporter = reporter
        self._slots = slots
        self._acknowledge_delay_s = acknowledge_delay_s(
            acknowledge_after_s, assignment.start_to_close_s
        )
        self._work: asyncio.Future[HandlerResult] | None = None
        self._settled = False
        """True once the handler's outcome is known (or it will not run): no acknowledgement
        is worth sending any more."""
        self._dropped = False
        self._abandoned = asyncio.Event()
        self._log_fields = {
            "agent_id": context.agent_id,
            "task_id": assignment.task_id,
            "attempt": assignment.attempt,
        }

    def cancel(self, reason: str) -> None:
        """The coordinator took the attempt back: stop the handler, report nothing."""
        self._dropped = True
        self._stop_handler(reason)

    def abandon(self) -> None:
        """The agent is stopping and cannot wait any longer: stop the handler and hand the
        task back to the coordinator to be retried elsewhere."""
        self._abandoned.set()
        self._stop_handler("agent stopping")

    def _stop_handler(self, reason: str) -> None:
        self.context.cancel(reason)
        if self._coroutine_handler and self._work is not None:
            self._work.cancel()

    async def run(self) -> None:
        """Work (acknowledging if it takes a while), report. Never raises (but is
        cancellable)."""
        a = self.assignment
        if self._acknowledge_delay_s <= 0:
            if await self._reporter.acknowledge(a) is not None:
                return
            lease_keeper = asyncio.create_task(self._keep_lease())
        else:
            lease_keeper = asyncio.create_task(self._acknowledge_later())
        try:
            async with self._slots:
                if self.context.cancelled:
                    self._settled = True
                    return await self._after_stop()
                log.info("task started", extra={**self._log_fields, "task_type": a.task_type})
                self._work = asyncio.ensure_future(self._call_handler())
                # A thread cannot be interrupted: when abandoned, stop waiting for it.
                abandoned = asyncio.create_task(self._abandoned.wait())
                await asyncio.wait({self._work, abandoned}, return_when=asyncio.FIRST_COMPLETED)
                abandoned.cancel()
                self._settled = True
                if self._dropped or self._abandoned.is_set():
                    self._work.add_done_callback(_consume_outcome)
                    return await self._after_stop()
                await self._report(self._work)
        finally:
            lease_keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lease_keeper

    async def _call_handler(self) -> HandlerResult:
        if self._coroutine_handler:
            coroutine_handler = cast(
                Callable[[TaskContext], Awaitable[HandlerResult]], self._handler
            )
            return await coroutine_handler(self.context)
        thread_handler = cast(Callable[[TaskContext], HandlerResult], self._handler)
        return await asyncio.to_thread(thread_handler, self.context)

    async def _after_stop(self) -> None:
        if self._dropped:
            log.info("task dropped: %s", self.context.cancel_reason, extra=self._log_fields)
            return
        await self._fail(
            TaskError("the agent stopped before the task finished", "AgentStopped", True)
        )

    async def _report(self, work: asyncio.Future[HandlerResult]) -> None:
        if work.cancelled():
            await self._fail(TaskError("the handler was cancelled", "CancelledError", True))
            return
        exc = work.exception()
        if isinstance(exc, PermanentError):
            await self._fail(TaskError(str(exc), exc.error_type, False, exc.details))
        elif exc is not None:
            await self._fail(TaskError(str(exc) or repr(exc), type(exc).__name__, True))
        else:
            await self._complete(work.result())

    async def _complete(self, result: HandlerResult) -> None:
        if result is not None and not isinstance(result, dict):
            error = f"the handler returned {type(result).__name__}, not a dict"
            await self._fail(TaskError(error, "TypeError", False))
            return
        struct = Struct()
        try:
            struct.update(result or {})
        except (TypeError, ValueError) as exc:
            await self._fail(TaskError(f"result is not JSON-like: {exc}", "TypeError", False))
            return
        refused = await self._reporter.complete(self.assignment, struct)
        if refused == grpc.StatusCode.INVALID_ARGUMENT:
            # Too big, usually: another attempt would produce the same result.
            await self._fail(
                TaskError("the coordinator refused the result", "InvalidResult", False)
            )
        elif refused is None:
            log.info("task completed", extra=self._log_fields)

    async def _fail(self, error: TaskError) -> None:
        if await self._reporter.fail(self.assignment, error) is None:
            log.info(
                "task failed: %s (%s)",
                error.message,
                "will be retried if attempts remain" if error.retryable else "permanent",
                extra=self._log_fields,
            )

    async def _acknowledge_later(self) -> None:
        """Acknowledge once the delay has passed, unless the outcome is known by then; keep
        the lease from then on (while the outcome is reported, too)."""
        await asyncio.sleep(self._acknowledge_delay_s)
        if self._settled:
            # Unacknowledged: the lease runs from the assignment, so renew it sooner.
            await self._keep_lease(first_wait_s=self._lease_renew_s() - self._acknowledge_delay_s)
            return
        refused = await self._reporter.acknowledge(self.assignment)
        if refused is not None:
            self.cancel(f"acknowledgement refused ({refused.name})")
            return
        lease_log.info(
            "task %s: acknowledged after %g s",
            self.assignment.task_id,
            self._acknowledge_delay_s,
            extra=self._log_fields,
        )
        await self._keep_lease()

    def _lease_renew_s(self) -> float:
        return self.assignment.start_to_close_s * LEASE_RENEW_FRACTION

    async def _keep_lease(self, first_wait_s: float | None = None) -> None:
        """Extend the lease every LEASE_RENEW_FRACTION of it, the first time after
        ``first_wait_s`` (by default the same interval): until cancelled or refused."""
        lease_s = self.assignment.start_to_close_s
        wait_s = self._lease_renew_s() if first_wait_s is None else first_wait_s
        while True:
            await asyncio.sleep(wait_s)
            # Give up retrying before the lease ends: then the attempt is lost anyway.
            refused = await self._reporter.extend(
                self.assignment, give_up_s=lease_s - self._lease_renew_s()
            )
            if refused is not None:
                self.cancel(f"lease lost ({refused.name})")
                return
            lease_log.info(
                "task %s: lease extended by %g s",
                self.assignment.task_id,
                lease_s,
                extra=self._log_fields,
            )
            wait_s = self._lease_renew_s()


def _consume_outcome(work: asyncio.Future[HandlerResult]) -> None:
    """Retrieve the outcome of work nobody waits for any more (no 'never retrieved' noise)."""
    if not work.cancelled():
        work.exception()
