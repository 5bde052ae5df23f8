"""A scripted agent for tests: registers, holds its StreamAssignments open, heartbeats, and
collects what the coordinator pushes, so tests decide when to acknowledge and report."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2

from aitbc.coordinator.v1 import agent_pb2, agent_pb2_grpc, task_pb2, task_pb2_grpc


class ScriptedAgent:
    """One agent on one channel. ``await agent.start()``, then read ``agent.assignments``."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        agent_id: str,
        *,
        max_concurrency: int = 1,
        capabilities: tuple[str, ...] = (),
        services: tuple[str, ...] = (),
        labels: dict[str, str] | None = None,
        agent_type: str = "worker",
        weight: float = 1.0,
        heartbeat_interval_s: float = 0.5,
        assignments_per_message: int = 0,
    ) -> None:
        self.agent_id = agent_id
        self.assignments_per_message = assignments_per_message
        self.channel = channel
        self.agents = agent_pb2_grpc.AgentServiceStub(channel)
        self.tasks = task_pb2_grpc.TaskServiceStub(channel)
        self.registration = agent_pb2.RegisterAgentRequest(
            agent_id=agent_id,
            agent_type=agent_type,
            capabilities=capabilities,
            services=services,
            labels=labels or {},
            max_concurrency=max_concurrency,
            weight=weight,
        )
        self.heartbeat_interval_s = heartbeat_interval_s
        self.assignments: asyncio.Queue[agent_pb2.Assignment] = asyncio.Queue()
        self.cancels: asyncio.Queue[agent_pb2.CancelNotice] = asyncio.Queue()
        self.events: list[agent_pb2.StreamAssignmentsResponse] = []
        self.stream_error: grpc.aio.AioRpcError | None = None
        self.ready = asyncio.Event()
        self.stream_closed = asyncio.Event()
        """Set when the stream ends, by an error (``stream_error``) or a NodeDraining."""
        self._call: Any = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, *, register: bool = True, heartbeat: bool = True) -> ScriptedAgent:
        """Register (optionally), open the stream and wait for StreamReady."""
        if register:
            await self.agents.RegisterAgent(self.registration)
        self.ready.clear()
        self.stream_closed.clear()
        self._tasks.append(asyncio.create_task(self._read_stream()))
        await asyncio.wait_for(self.ready.wait(), 10)
        if heartbeat:
            self._tasks.append(asyncio.create_task(self._heartbeat()))
        return self

    async def _read_stream(self) -> None:
        self._call = self.agents.StreamAssignments(
            agent_pb2.StreamAssignmentsRequest(
                agent_id=self.agent_id, max_assignments_per_message=self.assignments_per_message
            )
        )
        try:
            async for event in self._call:
                self.events.append(event)
                kind = event.WhichOneof("event")
                if kind == "ready":
                    self.ready.set()
                elif kind == "assignment":
                    self.assignments.put_nowait(event.assignment)
                elif kind == "assignments":
                    for assignment in event.assignments.assignments:
                        self.assignments.put_nowait(assignment)
                elif kind == "cancel":
                    self.cancels.put_nowait(event.cancel)
        except grpc.aio.AioRpcError as exc:
            self.stream_error = exc
        finally:
            self.stream_closed.set()

    async def _heartbeat(self) -> None:
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.agents.Heartbeat(agent_pb2.HeartbeatRequest(agent_id=self.agent_id))
            await asyncio.sleep(self.heartbeat_interval_s)

    async def next_assignment(self, timeout_s: float = 10.0) -> agent_pb2.Assignment:
        """The next assignment pushed to this agent."""
        return await asyncio.wait_for(self.assignments.get(), timeout_s)

    async def acknowledge(self, assignment: agent_pb2.Assignment) -> Any:
        return await self.tasks.AcknowledgeTask(
            task_pb2.AcknowledgeTaskRequest(
                task_id=assignment.task_id,
                agent_id=self.agent_id,
                fencing_token=assignment.fencing_token,
            )
        )

    async def complete(self, assignment: agent_pb2.Assignment, **result: Any) -> task_pb2.Task:
        data = Struct()
        data.update(result)
        reply = await self.tasks.CompleteTask(
            task_pb2.CompleteTaskRequest(
                task_id=assignment.task_id,
                agent_id=self.agent_id,
                fencing_token=assignment.fencing_token,
                result=data,
            )
        )
        return reply.task

    async def fail(
        self, assignment: agent_pb2.Assignment, message: str, *, retryable: bool = True
    ) -> task_pb2.Task:
        reply = await self.tasks.FailTask(
            task_pb2.FailTaskRequest(
                task_id=assignment.task_id,
                agent_id=self.agent_id,
                fencing_token=assignment.fencing_token,
                error=task_pb2.TaskError(message=message, type="TestError", retryable=retryable),
            )
        )
        return reply.task

    async def report_load(self, **load_metrics: float) -> agent_pb2.HeartbeatResponse:
        """A heartbeat that replaces the agent's load metrics ("cpu", "memory" in [0, 1])."""
        return await self.agents.Heartbeat(
            agent_pb2.HeartbeatRequest(agent_id=self.agent_id, load_metrics=load_metrics)
        )

    async def extend_lease(
        self, assignment: agent_pb2.Assignment, lease_s: float | None = None
    ) -> Timestamp:
        """ExtendTaskLease; ``lease_s`` None asks for the task's start_to_close_timeout."""
        request = task_pb2.ExtendTaskLeaseRequest(
            task_id=assignment.task_id,
            agent_id=self.agent_id,
            fencing_token=assignment.fencing_token,
        )
        if lease_s is not None:
            request.lease_duration.FromNanoseconds(round(lease_s * 1e9))
        return (await self.tasks.ExtendTaskLease(request)).lease_expires_at

    async def next_cancel(self, timeout_s: float = 10.0) -> agent_pb2.CancelNotice:
        """The next cancel notice pushed to this agent."""
        return await asyncio.wait_for(self.cancels.get(), timeout_s)

    def received(self) -> list[agent_pb2.Assignment]:
        """Every assignment pushed so far and not yet taken with next_assignment."""
        taken = []
        while not self.assignments.empty():
            taken.append(self.assignments.get_nowait())
        return taken

    async def stop(self) -> None:
        """Stop heartbeating and close the stream (the agent stays registered)."""
        for task in self._tasks:
            task.cancel()
        if self._call is not None:
            self._call.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()


class AgentPool:
    """Agents started by one test, all stopped at its end (before its nodes stop)."""

    def __init__(self) -> None:
        self.started: list[ScriptedAgent] = []

    async def start(self, channel: grpc.aio.Channel, agent_id: str, **kwargs: Any) -> ScriptedAgent:
        """A ScriptedAgent, registered, streaming and heartbeating."""
        agent = ScriptedAgent(channel, agent_id, **kwargs)
        self.started.append(agent)
        return await agent.start()

    async def stop_all(self) -> None:
        for agent in self.started:
            await agent.stop()
        self.started.clear()


T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
    what: str = "condition",
) -> T:
    """Await ``probe()`` until it returns a truthy value; fail after ``timeout_s``.

    The async twin of ``support.wait_until``: it yields to the event loop between probes, so
    in-process nodes keep serving while a test waits for them.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(interval_s)


async def get_task(tasks: task_pb2_grpc.TaskServiceStub, task_id: str) -> task_pb2.Task:
    """GetTask's task."""
    return (await tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id))).task


async def wait_for_state(
    tasks: task_pb2_grpc.TaskServiceStub, task_id: str, state: int, timeout_s: float = 10.0
) -> task_pb2.Task:
    """The task once it is in ``state`` (a TaskState value)."""

    async def probe() -> task_pb2.Task | None:
        task = await get_task(tasks, task_id)
        return task if task.state == state else None

    name = task_pb2.TaskState.Name(state)
    return await eventually(probe, timeout_s, what=f"task {task_id} to be {name}")


def duration(seconds: float) -> Duration:
    """A Duration of ``seconds``."""
    value = Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The google.rpc.BadRequest field violations carried in an error's rich status details."""
    details = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert details, "INVALID_ARGUMENT must carry google.rpc.Status details"
    status = status_pb2.Status.FromString(details)
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return {v.field: v.description for v in bad_request.field_violations}


def submit_request(**fields: Any) -> task_pb2.SubmitTaskRequest:
    """A SubmitTaskRequest; ``data`` becomes task_data."""
    data = Struct()
    data.update(fields.pop("data", {"n": 1}))
    return task_pb2.SubmitTaskRequest(
        task_data=data, task_type=fields.pop("task_type", "test"), **fields
    )


RETRIED_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
"""Codes a report is retried on (through the agent's current channel): its node went away."""


class AutoAgent:
    """An agent that acknowledges and completes every assignment by itself, and survives
    reconnects: ``attach`` it to a node, and after that node dies or drains ``attach`` it
    again to another (its record persists in Redis, so the second time ``register=False``).

    It records what tests check: the attempts it completed, the reports refused, the cancel
    notices, and ``max_holding``, the most assignments it held un-reported at once. An
    assignment counts as held from its arrival until its CompleteTask is sent: the
    coordinator frees the slot inside that call, so a new assignment may overtake the reply,
    but never the request.

    With ``hold`` given, each assignment waits for that event before the step ``hold_before``
    ("ack" or "complete"): a test keeps tasks ASSIGNED or RUNNING for as long as it likes.
    A report refused with FAILED_PRECONDITION drops the attempt (the coordinator gave it to
    someone else); UNAVAILABLE is retried through whatever channel the agent has by then.
    """

    def __init__(
        self,
        agent_id: str,
        *,
        max_concurrency: int = 1,
        hold: asyncio.Event | None = None,
        hold_before: str = "complete",
        heartbeat_interval_s: float = 0.5,
        report_timeout_s: float = 30.0,
    ) -> None:
        assert hold_before in ("ack", "complete")
        self.agent_id = agent_id
        self.max_concurrency = max_concurrency
        self.hold = hold
        self.hold_before = hold_before
        self.heartbeat_interval_s = heartbeat_interval_s
        self.report_timeout_s = report_timeout_s
        self.agent: ScriptedAgent | None = None
        self.received: list[tuple[str, int]] = []
        self._seen: set[tuple[str, int]] = set()
        self.redelivered: list[tuple[str, int]] = []
        self.completed: list[tuple[str, int]] = []
        self.refused: list[tuple[str, int, str, grpc.StatusCode]] = []
        self.cancels: list[agent_pb2.CancelNotice] = []
        self.holding: set[tuple[str, int]] = set()
        self.max_holding = 0
        self._consumers: list[asyncio.Task[None]] = []
        self._handlers: set[asyncio.Task[None]] = set()

    async def attach(self, channel: grpc.aio.Channel, *, register: bool = True) -> AutoAgent:
        """Open the stream on ``channel`` (registering first if asked) and start working."""
        agent = ScriptedAgent(
            channel,
            self.agent_id,
            max_concurrency=self.max_concurrency,
            heartbeat_interval_s=self.heartbeat_interval_s,
        )
        await agent.start(register=register)
        self.agent = agent
        self._consumers.append(asyncio.create_task(self._consume(agent)))
        return self

    async def detach(self) -> None:
        """Stop reading the current stream and heartbeating (reports in flight go on)."""
        for consumer in self._consumers:
            consumer.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
        self._consumers.clear()
        if self.agent is not None:
            await self.agent.stop()

    async def close(self) -> None:
        """Detach and abandon the reports in flight."""
        await self.detach()
        for handler in self._handlers:
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    @property
    def stream_closed(self) -> asyncio.Event:
        """Set when the current stream ends (its node died or drained)."""
        assert self.agent is not None
        return self.agent.stream_closed

    @property
    def idle(self) -> bool:
        """True when no report is in flight."""
        return not self._handlers

    async def _consume(self, agent: ScriptedAgent) -> None:
        cancels = asyncio.create_task(self._consume_cancels(agent))
        try:
            while True:
                assignment = await agent.assignments.get()
                key = (assignment.task_id, assignment.attempt)
                if key in self._seen:
                    self.redelivered.append(key)  # at-least-once: already being handled
                    continue
                self._seen.add(key)
                self.received.append(key)
                self.holding.add(key)
                self.max_holding = max(self.max_holding, len(self.holding))
                handler = asyncio.create_task(self._handle(assignment))
                self._handlers.add(handler)
                handler.add_done_callback(self._handlers.discard)
        finally:
            cancels.cancel()

    async def _consume_cancels(self, agent: ScriptedAgent) -> None:
        while True:
            notice = await agent.cancels.get()
            self.cancels.append(notice)
            self.holding.discard((notice.task_id, notice.attempt))

    async def _handle(self, assignment: agent_pb2.Assignment) -> None:
        key = (assignment.task_id, assignment.attempt)
        try:
            if self.hold is not None and self.hold_before == "ack":
                await self.hold.wait()
            if not await self._report("ack", assignment):
                return
            if self.hold is not None and self.hold_before == "complete":
                await self.hold.wait()
            self.holding.discard(key)
            if await self._report("complete", assignment):
                self.completed.append(key)
        finally:
            self.holding.discard(key)

    async def _report(self, action: str, assignment: agent_pb2.Assignment) -> bool:
        """One report through the current channel, retried while nodes are unreachable;
        False when the coordinator refused it."""
        deadline = time.monotonic() + self.report_timeout_s
        while True:
            assert self.agent is not None
            agent = self.agent
            try:
                if action == "ack":
                    await agent.tasks.AcknowledgeTask(
                        task_pb2.AcknowledgeTaskRequest(
                            task_id=assignment.task_id,
                            agent_id=self.agent_id,
                            fencing_token=assignment.fencing_token,
                        ),
                        timeout=5,
                    )
                else:
                    result = Struct()
                    result.update({"by": self.agent_id})
                    await agent.tasks.CompleteTask(
                        task_pb2.CompleteTaskRequest(
                            task_id=assignment.task_id,
                            agent_id=self.agent_id,
                            fencing_token=assignment.fencing_token,
                            result=result,
                        ),
                        timeout=5,
                    )
                return True
            except grpc.aio.AioRpcError as exc:
                if exc.code() in RETRIED_CODES and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                    continue
                self.refused.append((assignment.task_id, assignment.attempt, action, exc.code()))
                return False


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error a call fails with (the test fails if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value
