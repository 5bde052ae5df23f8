"""An agent's reports about its attempts (acknowledge, extend, complete, fail), each retried
through whatever node the agent reaches while nodes are unavailable."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct

from aitbc.coordinator.v1 import task_pb2, task_pb2_grpc
from coordinator.api.wire import duration_from_s, error_to_proto
from coordinator.sdk.backoff import Backoff
from coordinator.sdk.endpoints import RETRIED_CODES, Endpoints
from coordinator.sdk.wire import AssignmentInfo
from coordinator.task_models import TaskError

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 10.0
# A report may also time out because its node died mid-call: retry that as well. Every
# report is safe to repeat (the coordinator answers OK to a repeat of one that succeeded).
_RETRIED = RETRIED_CODES | {grpc.StatusCode.DEADLINE_EXCEEDED}

Send = Callable[[task_pb2_grpc.TaskServiceStub], Awaitable[Any]]


class Reporter:
    """Sends one agent's reports. Each method returns None when the coordinator took the
    report, otherwise the status code that refused it (FAILED_PRECONDITION or NOT_FOUND mean
    the attempt is no longer this agent's: drop its work)."""

    def __init__(self, endpoints: Endpoints, agent_id: str, give_up_s: float = 60.0) -> None:
        self._endpoints = endpoints
        self._agent_id = agent_id
        self._give_up_s = give_up_s

    async def acknowledge(self, a: AssignmentInfo) -> grpc.StatusCode | None:
        """AcknowledgeTask: the attempt is RUNNING."""
        request = task_pb2.AcknowledgeTaskRequest(
            task_id=a.task_id, agent_id=self._agent_id, fencing_token=a.fencing_token
        )
        return await self._send(
            "acknowledge", a, lambda s: s.AcknowledgeTask(request, timeout=CALL_TIMEOUT_S)
        )

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
        """CompleteTask with ``result``."""
        request = task_pb2.CompleteTaskRequest(
            task_id=a.task_id, agent_id=self._agent_id, fencing_token=a.fencing_token, result=result
        )
        return await self._send(
            "complete", a, lambda s: s.CompleteTask(request, timeout=CALL_TIMEOUT_S)
        )

    async def fail(self, a: AssignmentInfo, error: TaskError) -> grpc.StatusCode | None:
        """FailTask with ``error`` (its ``retryable`` decides whether the task is retried)."""
        request = task_pb2.FailTaskRequest(
            task_id=a.task_id,
            agent_id=self._agent_id,
            fencing_token=a.fencing_token,
            error=error_to_proto(error),
        )
        return await self._send("fail", a, lambda s: s.FailTask(request, timeout=CALL_TIMEOUT_S))

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
