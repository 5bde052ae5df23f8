"""An agent's reports about its attempts (acknowledge, extend, complete, fail), each retried
through whatever node the agent reaches while nodes are unavailable.

Acknowledgements, completions and failures travel as messages of one StreamReportTasks
stream (a message costs a node about half the CPU of a call), batched naturally: at most one
message is in flight per agent, and the reports made while it is join the next message. A
lone report is therefore sent at once (no delay at low load), while under load the messages
grow instead of multiplying. Each report still has its own outcome. A message is retried as
a ReportTasks call would be: a stream that breaks or leaves it unanswered for CALL_TIMEOUT_S
is dropped and the message sent again on a new one. A node that does not serve the stream
(UNIMPLEMENTED: an older node) gets ReportTasks calls instead, from then on. Lease extensions
stay unary: each has its own deadline, the end of its lease.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct

from aitbc.coordinator.v1 import task_pb2, task_pb2_grpc
from coordinator.sdk.assignments import AssignmentInfo
from coordinator.sdk.backoff import Backoff
from coordinator.sdk.decoding import status_code
from coordinator.sdk.endpoints import RETRIED_CODES, Endpoints
from coordinator.tasks.models import TaskError
from coordinator.wire_values import duration_from_s, error_to_proto

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 10.0
# A report may also time out because its node died mid-call: retry that as well. Every
# report is safe to repeat (the coordinator answers OK to a repeat of one that succeeded).
_RETRIED = RETRIED_CODES | {grpc.StatusCode.DEADLINE_EXCEEDED}

Send = Callable[[task_pb2_grpc.TaskServiceStub], Awaitable[Any]]

MAX_CALL_REPORTS = 1000
"""Most reports in one ReportTasks call or stream message (the coordinator's limit)."""
MAX_CALL_BYTES = 3 * 1024 * 1024
"""Most serialized bytes of one ReportTasks call or stream message, below the coordinator's
default message limit (4 MiB); a bigger report (a large result) still goes, alone."""
STREAM_CLOSE_TIMEOUT_S = 1.0
"""How long closing a report stream waits for the node to end it (at once when it answers)
before cancelling it."""


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class ReportStream:
    """Report batches as the messages of one StreamReportTasks stream, to the address the
    endpoints use now (a new stream when they move on). ``send`` behaves as one ReportTasks
    call: it returns the batch's results or raises ``grpc.aio.AioRpcError``. A stream that
    breaks before the answer (the node cancelled or ended it, or went away) raises
    UNAVAILABLE, an answer that does not come within ``timeout_s`` DEADLINE_EXCEEDED; the
    stream is then dropped and the next ``send`` opens another. A node that answers
    UNIMPLEMENTED gets ReportTasks calls from then on (``unary``)."""

    def __init__(self, endpoints: Endpoints, timeout_s: float) -> None:
        self._endpoints = endpoints
        self._timeout_s = timeout_s
        self._call: (
            grpc.aio.StreamStreamCall[
                task_pb2.StreamReportTasksRequest, task_pb2.StreamReportTasksResponse
            ]
            | None
        ) = None
        self._address = ""
        self.unary = False
        """True once a node answered UNIMPLEMENTED: every batch is a ReportTasks call."""

    async def send(
        self, reports: Sequence[task_pb2.TaskReport]
    ) -> Sequence[task_pb2.TaskReportResult]:
        """Send one batch; its results, in order."""
        if not self.unary:
            try:
                return await self._exchange(reports)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
            self.unary = True
            log.info(
                "%s does not serve StreamReportTasks (an older node): reports go in "
                "ReportTasks calls from now on",
                self._address,
            )
        request = task_pb2.ReportTasksRequest(reports=reports)
        reply: task_pb2.ReportTasksResponse = await self._endpoints.tasks().ReportTasks(
            request, timeout=self._timeout_s
        )
        return reply.results

    async def close(self) -> None:
        """End the stream cleanly: no more messages, then the node ends it (OK) at once, or
        it is cancelled after STREAM_CLOSE_TIMEOUT_S."""
        call, self._call = self._call, None
        if call is None or call.done():
            return
        try:
            async with asyncio.timeout(STREAM_CLOSE_TIMEOUT_S):
                await call.done_writing()
                await call.code()
        except Exception as exc:  # whatever it was, the cancel below ends the stream
            log.debug("report stream to %s: closing: %r", self._address, exc)
        finally:
            call.cancel()

    async def _exchange(
        self, reports: Sequence[task_pb2.TaskReport]
    ) -> Sequence[task_pb2.TaskReportResult]:
        address = self._endpoints.address
        if self._call is not None and (self._call.done() or address != self._address):
            await self.close()  # it ended, or the agent moved on to another node
        if self._call is None:
            self._call = self._endpoints.tasks().StreamReportTasks()
            self._address = address
        call = self._call
        try:
            async with asyncio.timeout(self._timeout_s):
                await call.write(task_pb2.StreamReportTasksRequest(reports=reports))
                response = await call.read()
            if not isinstance(response, task_pb2.StreamReportTasksResponse):  # EOF
                raise asyncio.InvalidStateError("ended")
            return response.results
        except BaseException as exc:
            self._call = None
            call.cancel()  # its answer, if one came late, would be taken for the next batch's
            if isinstance(exc, TimeoutError):
                raise _rpc_error(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no answer on the report stream within {self._timeout_s} s",
                ) from None
            if isinstance(exc, asyncio.InvalidStateError):  # it ended before answering
                raise _rpc_error(
                    grpc.StatusCode.UNAVAILABLE, "the node ended the report stream"
                ) from None
            if isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.CANCELLED:
                raise _rpc_error(
                    grpc.StatusCode.UNAVAILABLE, f"the report stream was cancelled: {exc.details()}"
                ) from None
            raise


@dataclass(eq=False)
class _Pending:
    """One report waiting for its outcome (compared by identity)."""

    entry: task_pb2.TaskReport
    action: str
    fields: dict[str, Any]
    deadline: float
    outcome: asyncio.Future[grpc.StatusCode | None]
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = self.entry.ByteSize() + 8  # the field's tag and length prefix, roughly


class Reporter:
    """Sends one agent's reports. Each method returns None when the coordinator took the
    report, otherwise the status code that refused it (FAILED_PRECONDITION or NOT_FOUND mean
    the attempt is no longer this agent's: drop its work)."""

    def __init__(self, endpoints: Endpoints, agent_id: str, give_up_s: float = 60.0) -> None:
        self._endpoints = endpoints
        self._agent_id = agent_id
        self._give_up_s = give_up_s
        self._queue: deque[_Pending] = deque()
        self._sender: asyncio.Task[None] | None = None
        self._stream = ReportStream(endpoints, CALL_TIMEOUT_S)

    async def acknowledge(self, a: AssignmentInfo) -> grpc.StatusCode | None:
        """Acknowledge (batched): the attempt is RUNNING."""
        request = task_pb2.AcknowledgeTaskRequest(
            task_id=a.task_id, agent_id=self._agent_id, fencing_token=a.fencing_token
        )
        return await self._batched("acknowledge", a, task_pb2.TaskReport(acknowledge=request))

    async def extend(self, a: AssignmentInfo, give_up_s: float) -> grpc.StatusCode | None:
        """ExtendTaskLease by the task's start_to_close_timeout from now."""
        request = task_pb2.ExtendTaskLeaseRequest(
            task_id=a.task_id,
            agent_id=self._agent_id,
            fencing_token=a.fencing_token,
            lease_duration=duration_from_s(a.start_to_close_s),
        )
        return await self._send(
            "extend", a, lambda s: s.ExtendTaskLease(request, timeout=CALL_TIMEOUT_S), give_up_s
        )

    async def complete(self, a: AssignmentInfo, result: Struct) -> grpc.StatusCode | None:
        """Complete (batched) with ``result``."""
        request = task_pb2.CompleteTaskRequest(
            task_id=a.task_id, agent_id=self._agent_id, fencing_token=a.fencing_token, result=result
        )
        return await self._batched("complete", a, task_pb2.TaskReport(complete=request))

    async def fail(self, a: AssignmentInfo, error: TaskError) -> grpc.StatusCode | None:
        """Fail (batched) with ``error`` (its ``retryable`` decides whether the task is
        retried)."""
        request = task_pb2.FailTaskRequest(
            task_id=a.task_id,
            agent_id=self._agent_id,
            fencing_token=a.fencing_token,
            error=error_to_proto(error),
        )
        return await self._batched("fail", a, task_pb2.TaskReport(fail=request))

    async def close(self) -> None:
        """Stop sending: reports not yet answered are dropped (their callers are cancelled)."""
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        while self._queue:
            self._queue.popleft().outcome.cancel()
        await self._stream.close()

    async def _batched(
        self, action: str, a: AssignmentInfo, entry: task_pb2.TaskReport
    ) -> grpc.StatusCode | None:
        """Queue one report for the next message and wait for its own outcome."""
        pending = _Pending(
            entry,
            action,
            {"agent_id": self._agent_id, "task_id": a.task_id, "attempt": a.attempt},
            time.monotonic() + self._give_up_s,
            asyncio.get_running_loop().create_future(),
        )
        self._queue.append(pending)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_batches())
        # A caller cancelled meanwhile cancels this future: the report is then not sent,
        # unless its message is already under way.
        return await pending.outcome

    async def _send_batches(self) -> None:
        """Send what is queued, one message at a time, until nothing is left."""
        backoff = Backoff(initial_s=0.05, max_s=2.0)
        while self._queue:
            batch = self._next_batch()
            if not batch:
                continue
            address = self._endpoints.address
            try:
                results = await self._stream.send([p.entry for p in batch])
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                now = time.monotonic()
                again = [p for p in batch if code in _RETRIED and now < p.deadline]
                for p in batch:
                    if p not in again:
                        self._settle(p, code, exc.details() or "")
                if again:
                    log.debug(
                        "%d report(s): %s through %s; retrying",
                        len(again),
                        code.name,
                        address,
                        extra={"agent_id": self._agent_id},
                    )
                    self._queue.extendleft(reversed(again))  # still before later reports
                    await asyncio.sleep(backoff.next_delay_s())
                continue
            except BaseException as exc:
                for p in (*batch, *self._queue):
                    if not p.outcome.done():
                        if isinstance(exc, asyncio.CancelledError):
                            p.outcome.cancel()
                        else:
                            p.outcome.set_exception(exc)
                self._queue.clear()
                raise
            backoff.reset()
            for p, result in zip(batch, results, strict=True):
                if result.HasField("error"):
                    self._settle(p, status_code(result.error.code), result.error.message)
                else:
                    self._settle(p, None)

    def _next_batch(self) -> list[_Pending]:
        """The oldest queued reports that fit in one message (reports no one awaits are left
        out)."""
        batch: list[_Pending] = []
        size = 0
        while self._queue and len(batch) < MAX_CALL_REPORTS:
            p = self._queue[0]
            if p.outcome.done():
                self._queue.popleft()
                continue
            if batch and size + p.size > MAX_CALL_BYTES:
                break
            batch.append(self._queue.popleft())
            size += p.size
        return batch

    def _settle(self, p: _Pending, code: grpc.StatusCode | None, details: str = "") -> None:
        """Give a report its outcome: None (taken) or the code that refused it."""
        if p.outcome.done():
            return
        if code is not None:
            level = (
                logging.INFO
                if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)
                else logging.WARNING
            )
            log.log(level, "%s refused: %s: %s", p.action, code.name, details, extra=p.fields)
        p.outcome.set_result(code)

    async def _send(
        self, action: str, a: AssignmentInfo, send: Send, give_up_s: float | None = None
    ) -> grpc.StatusCode | None:
        deadline = time.monotonic() + (self._give_up_s if give_up_s is None else give_up_s)
        backoff = Backoff(initial_s=0.05, max_s=2.0)
        fields = {"agent_id": self._agent_id, "task_id": a.task_id, "attempt": a.attempt}
        while True:
            address = self._endpoints.address
            try:
                await send(self._endpoints.tasks())
                return None
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code in _RETRIED and time.monotonic() < deadline:
                    log.debug(
                        "%s: %s through %s; retrying", action, code.name, address, extra=fields
                    )
                    await asyncio.sleep(backoff.next_delay_s())
                    continue
                level = (
                    logging.INFO
                    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)
                    else logging.WARNING
                )
                log.log(level, "%s refused: %s: %s", action, code.name, exc.details(), extra=fields)
                return code
