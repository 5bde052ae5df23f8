"""A scripted agent for tests: registers, holds its StreamAssignments open, heartbeats, and
collects what the coordinator pushes, so tests decide when to acknowledge and report."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct

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
    ) -> None:
        self.agent_id = agent_id
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
        self._call: Any = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, *, register: bool = True, heartbeat: bool = True) -> ScriptedAgent:
        """Register (optionally), open the stream and wait for StreamReady."""
        if register:
            await self.agents.RegisterAgent(self.registration)
        self.ready.clear()
        self._tasks.append(asyncio.create_task(self._read_stream()))
        await asyncio.wait_for(self.ready.wait(), 10)
        if heartbeat:
            self._tasks.append(asyncio.create_task(self._heartbeat()))
        return self

    async def _read_stream(self) -> None:
        self._call = self.agents.StreamAssignments(
            agent_pb2.StreamAssignmentsRequest(agent_id=self.agent_id)
        )
        try:
            async for event in self._call:
                self.events.append(event)
                kind = event.WhichOneof("event")
                if kind == "ready":
                    self.ready.set()
                elif kind == "assignment":
                    self.assignments.put_nowait(event.assignment)
                elif kind == "cancel":
                    self.cancels.put_nowait(event.cancel)
        except grpc.aio.AioRpcError as exc:
            self.stream_error = exc

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

    async def stop(self) -> None:
        """Stop heartbeating and close the stream (the agent stays registered)."""
        for task in self._tasks:
            task.cancel()
        if self._call is not None:
            self._call.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()


def submit_request(**fields: Any) -> task_pb2.SubmitTaskRequest:
    """A SubmitTaskRequest; ``data`` becomes task_data."""
    data = Struct()
    data.update(fields.pop("data", {"n": 1}))
    return task_pb2.SubmitTaskRequest(task_data=data, task_type=fields.pop("task_type", "test"), **fields)
