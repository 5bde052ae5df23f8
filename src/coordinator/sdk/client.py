"""``Client``: submit tasks and follow them, from any program::

    async with Client(["node-a:9001", "node-b:9001"]) as client:
        task = await client.submit("summarize", {"text": "..."}, priority="high")
        result = await client.wait(task.task_id, timeout_s=60)

Calls that meet an unavailable node are retried on the next address, with backoff, for up
to ``retry_timeout_s``; ``submit`` keeps its ``request_id`` across those retries, so a retry
never creates a second task.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from aitbc.coordinator.v1 import task_pb2, task_pb2_grpc
from coordinator.api.wire import (
    PRIORITY_PREFIX,
    duration_from_s,
    requirements_to_proto,
    retry_policy_to_proto,
    strategy_to_proto,
    struct_from_dict,
)
from coordinator.balancing import Strategy
from coordinator.sdk.backoff import Backoff
from coordinator.sdk.endpoints import RETRIED_CODES, Endpoints
from coordinator.sdk.errors import RpcError, TaskCancelled, TaskExpired, TaskFailed
from coordinator.sdk.wire import stats_from_proto, task_from_proto
from coordinator.task_models import Priority, Requirements, RetryPolicy, Task, TaskState, TaskStats

T = TypeVar("T")
Call = Callable[[task_pb2_grpc.TaskServiceStub], Awaitable[T]]


def _priority(priority: Priority | str) -> Priority:
    if isinstance(priority, Priority):
        return priority
    try:
        return Priority[priority.upper()]
    except KeyError:
        names = ", ".join(p.name.lower() for p in Priority)
        raise ValueError(f"priority: {priority!r} is not one of {names}") from None


class Client:
    """A submitter's connection to the coordinator cluster (see the module docstring)."""

    def __init__(
        self,
        addresses: str | Sequence[str] = "localhost:9001",
        *,
        call_timeout_s: float = 10.0,
        retry_timeout_s: float = 30.0,
    ) -> None:
        self._endpoints = Endpoints(addresses)
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
        request = task_pb2.SubmitTaskRequest(
            task_type=task_type,
            task_data=struct_from_dict(data or {}),
            priority=PRIORITY_PREFIX + _priority(priority).name,
            requirements=requirements_to_proto(requirements),
            max_attempts=max_attempts,
            request_id=request_id or uuid.uuid4().hex,
            balancing_strategy=strategy_to_proto(strategy),
            routing_key=routing_key,
        )
        if schedule_to_start_s is not None:
            request.schedule_to_start_timeout.CopyFrom(duration_from_s(schedule_to_start_s))
        if start_to_close_s is not None:
            request.start_to_close_timeout.CopyFrom(duration_from_s(start_to_close_s))
        if retry_policy is not None:
            request.retry_policy.CopyFrom(retry_policy_to_proto(retry_policy))
        reply = await self._call(lambda s: s.SubmitTask(request, timeout=self.call_timeout_s))
        return task_from_proto(reply.task)

    async def get(self, task_id: str) -> Task:
        """The task as it is now, with its attempts and transitions."""
        request = task_pb2.GetTaskRequest(task_id=task_id)
        reply = await self._call(lambda s: s.GetTask(request, timeout=self.call_timeout_s))
        return task_from_proto(reply.task)

    async def cancel(self, task_id: str, reason: str = "cancelled by client") -> Task:
        """Cancel a task that has not finished; its agent gets a cancel notice."""
        request = task_pb2.CancelTaskRequest(task_id=task_id, reason=reason)
        reply = await self._call(lambda s: s.CancelTask(request, timeout=self.call_timeout_s))
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

    async def _call(self, call: Call[T]) -> T:
        """One unary call, retried on the next address while nodes are unavailable."""
        backoff = Backoff()
        deadline = time.monotonic() + self.retry_timeout_s
        while True:
            address = self._endpoints.address
            try:
                return await call(self._endpoints.tasks())
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRIED_CODES or time.monotonic() > deadline:
                    raise RpcError(exc.code(), exc.details() or "") from None
                self._endpoints.move_on(away_from=address)
                await asyncio.sleep(backoff.next_delay_s())
