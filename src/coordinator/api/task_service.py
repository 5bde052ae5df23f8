"""TaskService: thin async handlers that validate, call the task store and convert.

The batch calls (SubmitTasks, ReportTasks) validate each entry with the same code as the
unary call that would carry it alone, and answer a refused entry with the same status. Their
streams (StreamSubmitTasks, StreamReportTasks) handle each message as one such call."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import grpc

from aitbc.coordinator.v1 import task_pb2, task_pb2_grpc
from coordinator.api import joined_replies, page_bytes, wire
from coordinator.api.batch_errors import answer_entries
from coordinator.auth import checks, ownership
from coordinator.cancellation import raise_if_cancelled
from coordinator.config import Settings
from coordinator.delivery.events import EventHub
from coordinator.errors import InvalidArgument, NotFound
from coordinator.tasks import validation as tv
from coordinator.tasks.calls import Report, ReportOutcome, Submitted
from coordinator.tasks.models import Task, TaskError, TaskState, TaskSubmission
from coordinator.tasks.store import TaskStore
from coordinator.violations import Violations

Context = grpc.aio.ServicerContext[Any, Any]

WATCH_SAFETY_RECHECK_S = 60.0
"""A watch re-reads its task only when the hub says it changed, or may have (a reconnect);
and, as a last resort against a loss nobody noticed, after about this long without news
(jittered, so that watchers opened together do not read together)."""

_STATE_NUMBERS = {
    s: cast(task_pb2.TaskState, task_pb2.TaskState.Value(wire.STATE_PREFIX + s.name))
    for s in TaskState
}
"""The wire number of each task state (a batch sets one per report result)."""


class TaskService(task_pb2_grpc.TaskServiceServicer):
    """Tasks over gRPC."""

    def __init__(self, store: TaskStore, hub: EventHub, settings: Settings) -> None:
        self._store = store
        self._hub = hub
        self._settings = settings

    async def SubmitTask(
        self, request: task_pb2.SubmitTaskRequest, context: Context
    ) -> task_pb2.SubmitTaskResponse:
        task, created = await self._store.submit(self._submission(request))
        return task_pb2.SubmitTaskResponse(task=wire.task_to_proto(task), created=created)

    async def SubmitTasks(
        self, request: task_pb2.SubmitTasksRequest, context: Context
    ) -> task_pb2.SubmitTasksResponse:
        response = task_pb2.SubmitTasksResponse()
        await self._submit_batch(request.tasks, response.results, "SubmitTasks")
        return response

    async def StreamSubmitTasks(
        self, requests: AsyncIterator[task_pb2.StreamSubmitTasksRequest], context: Context
    ) -> AsyncIterator[task_pb2.StreamSubmitTasksResponse]:
        async for request in requests:
            response = task_pb2.StreamSubmitTasksResponse()
            await self._submit_batch(request.tasks, response.results, "StreamSubmitTasks")
            yield response

    async def _submit_batch(
        self, tasks: Sequence[task_pb2.SubmitTaskRequest], results: Any, method: str
    ) -> None:
        """One SubmitTasks batch: each task's result added to ``results``, in order."""
        await answer_entries(
            tasks, "tasks", self._submission, self._store.submit_many, results, _submitted, method
        )

    def _submission(self, request: task_pb2.SubmitTaskRequest) -> TaskSubmission:
        """A validated submission (InvalidArgument names every bad field)."""
        r = request.requirements
        retry = request.retry_policy
        enums = Violations()  # reported with the other fields' problems
        return tv.submission(
            violations=enums,
            task_data=wire.struct_to_dict(
                request.task_data, "task_data", self._settings.max_struct_depth
            ),
            task_data_bytes=request.task_data.ByteSize(),
            max_task_data_bytes=self._settings.max_task_data_bytes,
            task_type=request.task_type,
            priority=wire.enum_from_proto(request.priority, "priority", wire.TASK_PRIORITY, enums),
            requirements_fields=wire.requirements_fields(r),
            requirements_serialized=r.SerializeToString(deterministic=True),
            max_attempts=request.max_attempts,
            schedule_to_start_s=_optional_s(request, "schedule_to_start_timeout"),
            start_to_close_s=_optional_s(request, "start_to_close_timeout"),
            initial_backoff_s=_optional_s(retry, "initial_backoff"),
            max_backoff_s=_optional_s(retry, "max_backoff"),
            backoff_multiplier=retry.backoff_multiplier,
            request_id=request.request_id,
            strategy=wire.enum_from_proto(
                request.balancing_strategy, "balancing_strategy", wire.BALANCING_STRATEGY, enums
            ),
            routing_key=request.routing_key,
        )

    async def GetTask(
        self, request: task_pb2.GetTaskRequest, context: Context
    ) -> task_pb2.GetTaskResponse:
        task = await self._own_task(tv.task_id(request.task_id), "tasks.read", "GetTask")
        return task_pb2.GetTaskResponse(task=wire.task_to_proto(task))

    async def _own_task(self, task_id: str, permission: str, rpc: str) -> Task:
        """The task, if the caller may read it: a client only its own (``auth.ownership``;
        another's and an unknown one are the same PermissionDenied)."""
        owner = ownership.required_submitter(ownership.READ_ANY_TASK)
        try:
            task = await self._store.get(task_id)
        except NotFound:
            if owner is not None:
                raise ownership.not_its_task(permission, rpc, task_id) from None
            raise
        if owner is not None and task.submitted_by != owner:
            raise ownership.not_its_task(permission, rpc, task_id)
        return task

    async def ListTasks(self, request: task_pb2.ListTasksRequest, context: Context) -> bytes:
        """A ListTasksResponse, already serialized (``joined_replies.list_tasks_reply``)."""
        enums = Violations()  # reported with the other fields' problems
        query = tv.list_query(
            violations=enums,
            states=wire.enums_from_proto(request.states, "states", wire.TASK_STATE, enums),
            agent_id=request.agent_id,
            priorities=wire.enums_from_proto(
                request.priorities, "priorities", wire.TASK_PRIORITY, enums
            ),
            dead_letter=request.dead_letter,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        # Each task is serialized once: measured for the page's byte limit, then sent.
        entries: dict[str, bytes] = {}

        def item_bytes(task: Task) -> int:
            entry = entries[task.task_id] = joined_replies.list_tasks_entry(task)
            return len(entry)

        page = await self._store.list_tasks(
            query,
            item_bytes=item_bytes,
            max_page_bytes=page_bytes.page_budget_bytes(self._settings),
        )
        return joined_replies.list_tasks_reply(
            [entries[t.task_id] for t in page.tasks], page.next_page_token
        )

    async def CancelTask(
        self, request: task_pb2.CancelTaskRequest, context: Context
    ) -> task_pb2.CancelTaskResponse:
        task_id = tv.task_id(request.task_id)
        reason = tv.reason(request.reason)
        # A client cancels only its own tasks: lua/cancel_task.lua checks the submitter in
        # the step that cancels, so nothing of another's task changes, or is told.
        owner = ownership.required_submitter(ownership.CANCEL_ANY_TASK)
        try:
            task = await self._store.cancel(task_id, reason, submitted_by=owner)
        except NotFound:
            if owner is not None:
                raise ownership.not_its_task("tasks.cancel", "CancelTask", task_id) from None
            raise
        checks.audit_cancel(task_id, task.submitted_by)
        return task_pb2.CancelTaskResponse(task=wire.task_to_proto(task))

    async def AcknowledgeTask(
        self, request: task_pb2.AcknowledgeTaskRequest, context: Context
    ) -> task_pb2.AcknowledgeTaskResponse:
        checks.require_agent(request.agent_id)  # a stolen fencing token is not enough
        tv.report(request.task_id, request.agent_id, request.fencing_token)
        lease_ms = await self._store.acknowledge(
            request.task_id, request.agent_id, request.fencing_token
        )
        return task_pb2.AcknowledgeTaskResponse(lease_expires_at=wire.timestamp_from_ms(lease_ms))

    async def ExtendTaskLease(
        self, request: task_pb2.ExtendTaskLeaseRequest, context: Context
    ) -> task_pb2.ExtendTaskLeaseResponse:
        checks.require_agent(request.agent_id)  # a stolen fencing token is not enough
        lease_s = _lease(request)
        lease_ms = await self._store.extend_lease(
            request.task_id, request.agent_id, request.fencing_token, lease_s
        )
        return task_pb2.ExtendTaskLeaseResponse(lease_expires_at=wire.timestamp_from_ms(lease_ms))

    async def CompleteTask(
        self, request: task_pb2.CompleteTaskRequest, context: Context
    ) -> task_pb2.CompleteTaskResponse:
        checks.require_agent(request.agent_id)  # a stolen fencing token is not enough
        result = self._result(request)
        task = await self._store.complete(
            request.task_id, request.agent_id, request.fencing_token, result
        )
        return task_pb2.CompleteTaskResponse(task=wire.task_to_proto(task))

    async def FailTask(
        self, request: task_pb2.FailTaskRequest, context: Context
    ) -> task_pb2.FailTaskResponse:
        checks.require_agent(request.agent_id)  # a stolen fencing token is not enough
        error = _error(request, self._settings.max_struct_depth)
        task = await self._store.fail(
            request.task_id, request.agent_id, request.fencing_token, error
        )
        return task_pb2.FailTaskResponse(task=wire.task_to_proto(task))

    async def ReportTasks(
        self, request: task_pb2.ReportTasksRequest, context: Context
    ) -> task_pb2.ReportTasksResponse:
        response = task_pb2.ReportTasksResponse()
        await self._report_batch(request.reports, response.results, "ReportTasks")
        return response

    async def StreamReportTasks(
        self, requests: AsyncIterator[task_pb2.StreamReportTasksRequest], context: Context
    ) -> AsyncIterator[task_pb2.StreamReportTasksResponse]:
        async for request in requests:
            response = task_pb2.StreamReportTasksResponse()
            await self._report_batch(request.reports, response.results, "StreamReportTasks")
            yield response

    async def _report_batch(
        self, reports: Sequence[task_pb2.TaskReport], results: Any, method: str
    ) -> None:
        """One ReportTasks batch: each report's result added to ``results``, in order."""
        await answer_entries(
            reports, "reports", self._report, self._store.report_many, results, _reported, method
        )

    def _report(self, entry: task_pb2.TaskReport) -> Report:
        """One validated report of a ReportTasks call, checked as its unary RPC checks it."""
        kind = entry.WhichOneof("report")
        if kind is not None:  # an entry for an agent the caller is not: that entry's refusal
            checks.require_agent(getattr(entry, kind).agent_id)
        if kind == "acknowledge":
            a = entry.acknowledge
            tv.report(a.task_id, a.agent_id, a.fencing_token)
            return Report.acknowledge(a.task_id, a.agent_id, a.fencing_token)
        if kind == "complete":
            c = entry.complete
            return Report.complete(c.task_id, c.agent_id, c.fencing_token, self._result(c))
        if kind == "fail":
            f = entry.fail
            error = _error(f, self._settings.max_struct_depth)
            return Report.fail(f.task_id, f.agent_id, f.fencing_token, error)
        if kind == "extend_lease":
            x = entry.extend_lease
            return Report.extend(x.task_id, x.agent_id, x.fencing_token, _lease(x))
        raise InvalidArgument.of(
            "report", "is required: one of acknowledge, complete, fail or extend_lease"
        )

    def _result(self, request: task_pb2.CompleteTaskRequest) -> dict[str, Any]:
        """The checked result of a completion report."""
        tv.report(request.task_id, request.agent_id, request.fencing_token)
        size = request.result.ByteSize()
        if size > self._settings.max_task_data_bytes:
            raise InvalidArgument.of(
                "result",
                f"is {size} bytes serialized; at most "
                f"{self._settings.max_task_data_bytes} (COORDINATOR_MAX_TASK_DATA_BYTES)",
            )
        return wire.struct_to_dict(request.result, "result", self._settings.max_struct_depth)

    async def WatchTask(
        self, request: task_pb2.WatchTaskRequest, context: Context
    ) -> AsyncIterator[task_pb2.WatchTaskResponse]:
        task_id = tv.task_id(request.task_id)
        async with self._hub.watch_task(task_id) as changes:
            # A task's submitter never changes: checking the first read covers the watch.
            task = await self._own_task(task_id, "tasks.watch", "WatchTask")
            yield task_pb2.WatchTaskResponse(task=wire.task_to_proto(task))
            seen = len(task.transitions)
            while not task.state.final:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        changes.get(), WATCH_SAFETY_RECHECK_S * random.uniform(0.75, 1.25)
                    )
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
        priority = wire.enum_from_proto(request.priority, "priority", wire.TASK_PRIORITY)
        if priority is None:
            raise InvalidArgument.of("priority", "must name a queue: LOW to URGENT")
        with checks.audited("purge_queue", priority.name):
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
        strategy = wire.enum_from_proto(request.strategy, "strategy", wire.BALANCING_STRATEGY)
        if strategy is None:
            raise InvalidArgument.of(
                "strategy", "must name a strategy, for example BALANCING_STRATEGY_ROUND_ROBIN"
            )
        with checks.audited("set_strategy", strategy.name):
            previous = await self._store.set_strategy(strategy)
        return task_pb2.SetBalancingStrategyResponse(
            strategy=wire.strategy_to_proto(strategy),
            previous_strategy=wire.strategy_to_proto(previous),
        )


def _error(request: task_pb2.FailTaskRequest, max_struct_depth: int) -> TaskError:
    """The checked error of a failure report."""
    tv.report(request.task_id, request.agent_id, request.fencing_token)
    e = request.error
    details = wire.struct_to_dict(e.details, "error.details", max_struct_depth)
    return tv.task_error(e.message, e.type, e.retryable, details)


def _lease(request: task_pb2.ExtendTaskLeaseRequest) -> float | None:
    """The checked lease length of an extension (None: the task's start_to_close)."""
    tv.report(request.task_id, request.agent_id, request.fencing_token)
    return tv.lease(_optional_s(request, "lease_duration"))


def _optional_s(message: Any, field: str) -> float | None:
    """Seconds of an optional Duration field; None when it is not set."""
    if not message.HasField(field):
        return None
    return wire.duration_s(getattr(message, field))


def _submitted(result: task_pb2.SubmitTasksResult, outcome: Submitted) -> None:
    """The result of a task queued (or found by its request_id) by a batch."""
    result.task_id = outcome.task_id
    result.created = outcome.created
    result.created_at.FromMilliseconds(outcome.created_at_ms)


def _reported(result: task_pb2.TaskReportResult, outcome: ReportOutcome) -> None:
    """The result of a report a batch took."""
    result.state = _STATE_NUMBERS[outcome.state]
    if outcome.lease_expires_at_ms is not None:
        result.lease_expires_at.FromMilliseconds(outcome.lease_expires_at_ms)
