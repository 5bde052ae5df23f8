"""``Client``: submit tasks and follow them, from any program::

    async with Client(["node-a:9001", "node-b:9001"]) as client:
        task = await client.submit("summarize", {"text": "..."}, priority="high")
        result = await client.wait(task.task_id, timeout_s=60)

Calls that meet an unavailable node are retried on the next address, with backoff, for up
to ``retry_timeout_s`` (a node at its bound of batch submits says how long to wait first:
RESOURCE_EXHAUSTED with RetryInfo); ``submit`` keeps its ``request_id`` across those retries, so a retry
never creates a second task. ``submit_many`` queues many tasks with few calls (SubmitTasks,
up to 1000 tasks each), with the same retries and the same guarantee.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2

from aitbc.coordinator.v1 import task_pb2, task_pb2_grpc
from coordinator.sdk.backoff import Backoff
from coordinator.sdk.credentials import TlsOptions, bearer_token
from coordinator.sdk.decoding import entry_error, stats_from_proto, task_from_proto
from coordinator.sdk.endpoints import RETRIED_CODES, Endpoints
from coordinator.sdk.errors import (
    RpcError,
    TaskCancelled,
    TaskExpired,
    TaskFailed,
    UndecodableReply,
)
from coordinator.strategies import Strategy
from coordinator.tasks.models import (
    Priority,
    Requirements,
    RetryPolicy,
    Task,
    TaskState,
    TaskStats,
)
from coordinator.wire_values import (
    PRIORITY_PREFIX,
    duration_from_s,
    requirements_to_proto,
    retry_policy_to_proto,
    strategy_to_proto,
    struct_from_dict,
)

T = TypeVar("T")
Call = Callable[[task_pb2_grpc.TaskServiceStub], Awaitable[T]]

MAX_BATCH_TASKS = 1000
"""Most tasks of one SubmitTasks call (the coordinator's limit)."""
MAX_BATCH_BYTES = 3 * 1024 * 1024
"""Most serialized bytes of one SubmitTasks call: below the coordinator's default message
limit (COORDINATOR_MAX_MESSAGE_BYTES, 4 MiB). A bigger task still goes, alone."""


@dataclass(frozen=True)
class NewTask:
    """One task for ``Client.submit_many``; the fields are ``Client.submit``'s arguments."""

    task_type: str
    data: dict[str, Any] | None = None
    priority: Priority | str = Priority.NORMAL
    requirements: Requirements | None = None
    request_id: str | None = None
    max_attempts: int = 0
    schedule_to_start_s: float | None = None
    start_to_close_s: float | None = None
    retry_policy: RetryPolicy | None = None
    strategy: Strategy | None = None
    routing_key: str = ""


@dataclass(frozen=True)
class SubmitResult:
    """What became of one task of ``Client.submit_many``."""

    request_id: str
    """The task's request_id (generated when not given): submitting it again is harmless."""
    task_id: str = ""
    """The queued task (the existing one when request_id matched); empty when refused."""
    created: bool = False
    """False when the request_id matched an earlier submit (possibly an earlier attempt of
    this same call) and nothing was created, or when refused."""
    created_at_ms: int | None = None
    """When the task was submitted (epoch milliseconds); None when refused."""
    error: RpcError | None = None
    """Why the coordinator refused this task (``code`` and ``message``, which names the
    field), exactly as ``submit`` would have raised it; None when it was queued."""


def _priority(priority: Priority | str) -> Priority:
    if isinstance(priority, Priority):
        return priority
    try:
        return Priority[priority.upper()]
    except KeyError:
        names = ", ".join(p.name.lower() for p in Priority)
        raise ValueError(f"priority: {priority!r} is not one of {names}") from None


def _submit_request(task: NewTask) -> task_pb2.SubmitTaskRequest:
    """The SubmitTaskRequest of one task, with a fresh request_id when it has none."""
    request = task_pb2.SubmitTaskRequest(
        task_type=task.task_type,
        task_data=struct_from_dict(task.data or {}),
        priority=PRIORITY_PREFIX + _priority(task.priority).name,
        requirements=requirements_to_proto(task.requirements),
        max_attempts=task.max_attempts,
        request_id=task.request_id or uuid.uuid4().hex,
        balancing_strategy=strategy_to_proto(task.strategy),
        routing_key=task.routing_key,
    )
    if task.schedule_to_start_s is not None:
        request.schedule_to_start_timeout.CopyFrom(duration_from_s(task.schedule_to_start_s))
    if task.start_to_close_s is not None:
        request.start_to_close_timeout.CopyFrom(duration_from_s(task.start_to_close_s))
    if task.retry_policy is not None:
        request.retry_policy.CopyFrom(retry_policy_to_proto(task.retry_policy))
    return request


def _chunks(
    requests: Sequence[task_pb2.SubmitTaskRequest],
) -> list[list[task_pb2.SubmitTaskRequest]]:
    """Consecutive runs of at most MAX_BATCH_TASKS requests and MAX_BATCH_BYTES bytes."""
    chunks: list[list[task_pb2.SubmitTaskRequest]] = []
    chunk: list[task_pb2.SubmitTaskRequest] = []
    size = 0
    for request in requests:
        entry_bytes = request.ByteSize() + 8  # the field's tag and length prefix, roughly
        if chunk and (len(chunk) == MAX_BATCH_TASKS or size + entry_bytes > MAX_BATCH_BYTES):
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(request)
        size += entry_bytes
    if chunk:
        chunks.append(chunk)
    return chunks


class Client:
    """A submitter's connection to the coordinator cluster (see the module docstring)."""

    def __init__(
        self,
        addresses: str | Sequence[str] = "localhost:9001",
        *,
        call_timeout_s: float = 10.0,
        retry_timeout_s: float = 30.0,
        tls: TlsOptions | None = None,
        token: str | None = None,
        token_file: str | None = None,
    ) -> None:
        self._endpoints = Endpoints(addresses, tls, bearer_token(token, token_file))
        self.call_timeout_s = call_timeout_s
        self.retry_timeout_s = retry_timeout_s

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections."""
        await self._endpoints.close()

    async def submit(
        self,
        task_type: str,
        data: dict[str, Any] | None = None,
        *,
        priority: Priority | str = Priority.NORMAL,
        requirements: Requirements | None = None,
        request_id: str | None = None,
        max_attempts: int = 0,
        schedule_to_start_s: float | None = None,
        start_to_close_s: float | None = None,
        retry_policy: RetryPolicy | None = None,
        strategy: Strategy | None = None,
        routing_key: str = "",
    ) -> Task:
        """Queue a task and return it (PENDING). ``request_id`` defaults to a fresh UUID;
        submitting the same one again returns the first task and creates nothing. Zero or
        None means the coordinator's default (3 attempts, 300 s timeouts)."""
        request = _submit_request(
            NewTask(
                task_type,
                data,
                priority=priority,
                requirements=requirements,
                request_id=request_id,
                max_attempts=max_attempts,
                schedule_to_start_s=schedule_to_start_s,
                start_to_close_s=start_to_close_s,
                retry_policy=retry_policy,
                strategy=strategy,
                routing_key=routing_key,
            )
        )
        reply = await self._call(lambda s: s.SubmitTask(request, timeout=self.call_timeout_s))
        return task_from_proto(reply.task)

    async def submit_many(self, tasks: Iterable[NewTask]) -> list[SubmitResult]:
        """Queue many tasks with few calls: SubmitTasks, up to 1000 tasks (and 3 MiB) each,
        one call after the other. Returns one ``SubmitResult`` per task, in order; a task
        the coordinator refuses (a bad field, too big) has its ``error`` and does not affect
        the others. Each task is handled exactly as ``submit`` would handle it, and keeps
        its ``request_id`` across retries, so a retried call never creates a second task.

        A call that fails for good (no node answered within ``retry_timeout_s``) raises
        ``RpcError``; the tasks of earlier calls are queued then, and calling ``submit_many``
        again with the same request_ids (pass your own) queues only what is missing."""
        requests = [_submit_request(task) for task in tasks]
        results: list[SubmitResult] = []
        for chunk in _chunks(requests):
            reply = await self._submit_batch(task_pb2.SubmitTasksRequest(tasks=chunk))
            for request, result in zip(chunk, reply.results, strict=True):
                if result.HasField("error"):
                    results.append(
                        SubmitResult(request.request_id, error=entry_error(result.error))
                    )
                else:
                    results.append(
                        SubmitResult(
                            request.request_id,
                            task_id=result.task_id,
                            created=result.created,
                            created_at_ms=result.created_at.ToMilliseconds(),
                        )
                    )
        return results

    async def _submit_batch(
        self, request: task_pb2.SubmitTasksRequest
    ) -> task_pb2.SubmitTasksResponse:
        return await self._call(lambda s: s.SubmitTasks(request, timeout=self.call_timeout_s))

    async def get(self, task_id: str) -> Task:
        """The task as it is now, with its attempts and transitions."""
        request = task_pb2.GetTaskRequest(task_id=task_id)
        reply = await self._call(
            lambda s: s.GetTask(request, timeout=self.call_timeout_s), about_task=task_id
        )
        return task_from_proto(reply.task)

    async def cancel(self, task_id: str, reason: str = "cancelled by client") -> Task:
        """Cancel a task that has not finished; its agent gets a cancel notice."""
        request = task_pb2.CancelTaskRequest(task_id=task_id, reason=reason)
        reply = await self._call(
            lambda s: s.CancelTask(request, timeout=self.call_timeout_s), about_task=task_id
        )
        return task_from_proto(reply.task)

    async def stats(self) -> TaskStats:
        """Cluster-wide counters, latencies and queue sizes."""
        request = task_pb2.GetStatsRequest()
        reply = await self._call(lambda s: s.GetStats(request, timeout=self.call_timeout_s))
        return stats_from_proto(reply)

    async def watch(self, task_id: str) -> AsyncIterator[Task]:
        """The task now, then once after each transition, until it is final. If the node
        goes away the watch resumes on another; transitions already seen are not repeated."""
        seen = 0
        backoff = Backoff()
        deadline = time.monotonic() + self.retry_timeout_s
        while True:
            address = self._endpoints.address
            call = self._endpoints.tasks().WatchTask(task_pb2.WatchTaskRequest(task_id=task_id))
            try:
                async for message in call:
                    if message is None:  # see _call
                        raise UndecodableReply(task_id)
                    task = task_from_proto(message.task)
                    backoff.reset()
                    deadline = time.monotonic() + self.retry_timeout_s
                    if len(task.transitions) <= seen and not task.state.final:
                        continue
                    seen = len(task.transitions)
                    yield task
                    if task.state.final:
                        return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRIED_CODES or time.monotonic() > deadline:
                    raise RpcError(exc.code(), exc.details() or "") from None
                self._endpoints.move_on(away_from=address)
                await asyncio.sleep(backoff.next_delay_s())
            finally:
                call.cancel()

    async def wait(self, task_id: str, timeout_s: float | None = None) -> dict[str, Any]:
        """The result of the task once it COMPLETES. Raises ``TaskFailed``, ``TaskCancelled``
        or ``TaskExpired`` if it ends otherwise, ``TimeoutError`` after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            async for task in self.watch(task_id):
                if task.state == TaskState.COMPLETED:
                    return task.result or {}
                if task.state == TaskState.FAILED:
                    why = task.error.message if task.error else "no error recorded"
                    raise TaskFailed(task, f"task {task_id} failed: {why}")
                if task.state == TaskState.CANCELLED:
                    raise TaskCancelled(task, f"task {task_id} was cancelled")
                if task.state == TaskState.EXPIRED:
                    raise TaskExpired(task, f"task {task_id} expired: no agent took it in time")
        raise RpcError(grpc.StatusCode.INTERNAL, f"the watch of task {task_id} ended early")

    async def _call(self, call: Call[T], about_task: str = "") -> T:
        """One unary call, retried on the next address while nodes are unavailable. Raises
        ``UndecodableReply`` naming ``about_task`` when the reply cannot be parsed."""
        backoff = Backoff()
        deadline = time.monotonic() + self.retry_timeout_s
        while True:
            address = self._endpoints.address
            try:
                reply = await call(self._endpoints.tasks())
                if reply is None:
                    # grpc.aio hands back None for a reply its deserializer refused (and
                    # logs why); a None reply is never an answer otherwise.
                    raise UndecodableReply(about_task)
                return reply
            except grpc.aio.AioRpcError as exc:
                pause_s = retry_delay_s(exc)  # a busy node says when to come back
                if pause_s is None and exc.code() not in RETRIED_CODES:
                    raise RpcError(exc.code(), exc.details() or "") from None
                if time.monotonic() > deadline:
                    raise RpcError(exc.code(), exc.details() or "") from None
                self._endpoints.move_on(away_from=address)
                await asyncio.sleep(max(pause_s or 0.0, backoff.next_delay_s()))


def retry_delay_s(exc: grpc.aio.AioRpcError) -> float | None:
    """The ``google.rpc.RetryInfo`` delay of a RESOURCE_EXHAUSTED error (a node at its
    bound of batch submits), None for any other error."""
    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    raw = dict(exc.trailing_metadata() or ()).get("grpc-status-details-bin")
    if not isinstance(raw, bytes):
        return None
    retry_info = error_details_pb2.RetryInfo()
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Unpack(retry_info):
            return retry_info.retry_delay.ToNanoseconds() / 1e9
    return None
