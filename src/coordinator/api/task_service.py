"""TaskService: thin async handlers that validate, call the task store and convert."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from aitbc.coordinator.v1 import task_pb2, task_pb2_grpc
from coordinator import task_validation as tv
from coordinator.api import wire
from coordinator.cancellation import raise_if_cancelled
from coordinator.config import Settings
from coordinator.errors import InvalidArgument
from coordinator.events import EventHub
from coordinator.tasks import TaskStore

Context = grpc.aio.ServicerContext[Any, Any]

WATCH_RECHECK_S = 1.0
"""A watch re-reads its task this often even without a message (a lost one costs this much)."""


class TaskService(task_pb2_grpc.TaskServiceServicer):
    """Tasks over gRPC."""

    def __init__(self, store: TaskStore, hub: EventHub, settings: Settings) -> None:
        self._store = store
        self._hub = hub
        self._settings = settings

    async def SubmitTask(
        self, request: task_pb2.SubmitTaskRequest, context: Context
    ) -> task_pb2.SubmitTaskResponse:
        r = request.requirements
        retry = request.retry_policy
        submission = tv.submission(
            task_data=wire.struct_to_dict(request.task_data),
            task_data_bytes=request.task_data.ByteSize(),
            max_task_data_bytes=self._settings.max_task_data_bytes,
            task_type=request.task_type,
            priority_raw=request.priority,
            priority=wire.priority_from_proto(request.priority),
            requirements_fields={
                "agent_type": r.agent_type,
                "capabilities": r.capabilities,
                "services": r.services,
                "labels": r.labels,
                "agent_id": r.agent_id,
                "min_health_score": r.min_health_score,
                "preferred_capabilities": r.preferred_capabilities,
            },
            max_attempts=request.max_attempts,
            schedule_to_start_s=_optional_s(request, "schedule_to_start_timeout"),
            start_to_close_s=_optional_s(request, "start_to_close_timeout"),
            initial_backoff_s=_optional_s(retry, "initial_backoff"),
            max_backoff_s=_optional_s(retry, "max_backoff"),
            backoff_multiplier=retry.backoff_multiplier,
            request_id=request.request_id,
            strategy_raw=request.balancing_strategy,
            strategy=wire.strategy_from_proto(request.balancing_strategy),
            routing_key=request.routing_key,
        )
        task, created = await self._store.submit(submission)
        return task_pb2.SubmitTaskResponse(task=wire.task_to_proto(task), created=created)

    async def GetTask(
        self, request: task_pb2.GetTaskRequest, context: Context
    ) -> task_pb2.GetTaskResponse:
        task = await self._store.get(tv.task_id(request.task_id))
        return task_pb2.GetTaskResponse(task=wire.task_to_proto(task))

    async def ListTasks(
        self, request: task_pb2.ListTasksRequest, context: Context
    ) -> task_pb2.ListTasksResponse:
        query = tv.list_query(
            states=[(s, wire.state_from_proto(s)) for s in request.states],
            agent_id=request.agent_id,
            priorities=[(p, wire.priority_from_proto(p)) for p in request.priorities],
            dead_letter=request.dead_letter,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        page = await self._store.list_tasks(query)
        return task_pb2.ListTasksResponse(
            tasks=[wire.task_to_proto(t) for t in page.tasks],
            next_page_token=page.next_page_token,
        )

    async def CancelTask(
        self, request: task_pb2.CancelTaskRequest, context: Context
    ) -> task_pb2.CancelTaskResponse:
        task = await self._store.cancel(tv.task_id(request.task_id), tv.reason(request.reason))
        return task_pb2.CancelTaskResponse(task=wire.task_to_proto(task))

    async def AcknowledgeTask(
        self, request: task_pb2.AcknowledgeTaskRequest, context: Context
    ) -> task_pb2.AcknowledgeTaskResponse:
        tv.report(request.task_id, request.agent_id, request.fencing_token)
        lease_ms = await self._store.acknowledge(
            request.task_id, request.agent_id, request.fencing_token
        )
        return task_pb2.AcknowledgeTaskResponse(lease_expires_at=wire.timestamp_from_ms(lease_ms))

    async def ExtendTaskLease(
        self, request: task_pb2.ExtendTaskLeaseRequest, context: Context
    ) -> task_pb2.ExtendTaskLeaseResponse:
        tv.report(request.task_id, request.agent_id, request.fencing_token)
        lease_s = tv.lease(_optional_s(request, "lease_duration"))
        lease_ms = await self._store.extend_lease(
            request.task_id, request.agent_id, request.fencing_token, lease_s
        )
        return task_pb2.ExtendTaskLeaseResponse(lease_expires_at=wire.timestamp_from_ms(lease_ms))

    async def CompleteTask(
        self, request: task_pb2.CompleteTaskRequest, context: Context
    ) -> task_pb2.CompleteTaskResponse:
        tv.report(request.task_id, request.agent_id, request.fencing_token)
        if request.result.ByteSize() > self._settings.max_task_data_bytes:
            raise InvalidArgument.of(
                "result",
                f"is {request.result.ByteSize()} bytes serialized; at most "
                f"{self._settings.max_task_data_bytes} (COORDINATOR_MAX_TASK_DATA_BYTES)",
            )
        task = await self._store.complete(
            request.task_id,
            request.agent_id,
            request.fencing_token,
            wire.struct_to_dict(request.result),
        )
        return task_pb2.CompleteTaskResponse(task=wire.task_to_proto(task))

    async def FailTask(
        self, request: task_pb2.FailTaskRequest, context: Context
    ) -> task_pb2.FailTaskResponse:
        tv.report(request.task_id, request.agent_id, request.fencing_token)
        e = request.error
        error = tv.task_error(e.message, e.type, e.retryable, wire.struct_to_dict(e.details))
        task = await self._store.fail(
            request.task_id, request.agent_id, request.fencing_token, error
        )
        return task_pb2.FailTaskResponse(task=wire.task_to_proto(task))

    async def WatchTask(
        self, request: task_pb2.WatchTaskRequest, context: Context
    ) -> AsyncIterator[task_pb2.WatchTaskResponse]:
        task_id = tv.task_id(request.task_id)
        async with self._hub.watch_task(task_id) as changes:
            task = await self._store.get(task_id)
            yield task_pb2.WatchTaskResponse(task=wire.task_to_proto(task))
            seen = len(task.transitions)
            while not task.state.final:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changes.get(), WATCH_RECHECK_S)
                while not changes.empty():
                    changes.get_nowait()
                task = await self._store.get(task_id)
                raise_if_cancelled()  # the watcher may be gone (see coordinator.cancellation)
                # Several transitions may have happened since the last read (quick reports,
                # a busy node): one message each, as the contract promises.
                for count in range(seen + 1, len(task.transitions) + 1):
                    yield task_pb2.WatchTaskResponse(task=wire.task_to_proto(task.as_of(count)))
                seen = max(seen, len(task.transitions))

    async def GetStats(
        self, request: task_pb2.GetStatsRequest, context: Context
    ) -> task_pb2.GetStatsResponse:
        return wire.stats_to_proto(await self._store.stats())

    async def ListQueues(
        self, request: task_pb2.ListQueuesRequest, context: Context
    ) -> task_pb2.ListQueuesResponse:
        report = await self._store.queues()
        return task_pb2.ListQueuesResponse(
            queues=[wire.queue_stats_to_proto(q) for q in report.queues],
            scheduled_retries=report.scheduled_retries,
            dead_letter=report.dead_letter,
        )

    async def PurgeQueue(
        self, request: task_pb2.PurgeQueueRequest, context: Context
    ) -> task_pb2.PurgeQueueResponse:
        priority = wire.priority_from_proto(request.priority)
        if priority is None:
            raise InvalidArgument.of("priority", "must name a queue: LOW to URGENT")
        cancelled = await self._store.purge(priority, tv.reason(request.reason))
        return task_pb2.PurgeQueueResponse(cancelled_count=cancelled)

    async def GetBalancingStrategy(
        self, request: task_pb2.GetBalancingStrategyRequest, context: Context
    ) -> task_pb2.GetBalancingStrategyResponse:
        strategy = await self._store.strategy()
        return task_pb2.GetBalancingStrategyResponse(strategy=wire.strategy_to_proto(strategy))

    async def SetBalancingStrategy(
        self, request: task_pb2.SetBalancingStrategyRequest, context: Context
    ) -> task_pb2.SetBalancingStrategyResponse:
        strategy = wire.strategy_from_proto(request.strategy)
        if strategy is None:
            raise InvalidArgument.of(
                "strategy", "must name a strategy, for example BALANCING_STRATEGY_ROUND_ROBIN"
            )
        previous = await self._store.set_strategy(strategy)
        return task_pb2.SetBalancingStrategyResponse(
            strategy=wire.strategy_to_proto(strategy),
            previous_strategy=wire.strategy_to_proto(previous),
        )


def _optional_s(message: Any, field: str) -> float | None:
    """Seconds of an optional Duration field; None when it is not set."""
    if not message.HasField(field):
        return None
    return wire.duration_s(getattr(message, field))
