"""Admission of heavy calls: a batch submit (SubmitTasks, or one message of
StreamSubmitTasks) may carry 1,000 tasks and megabytes, and holds the node's event loop and
its Redis connection far longer than a small call. Such calls are weighed by their entries
(tasks): beyond a bound of entries being submitted at once on the node, or through one
connection (peer), a new call is refused at once with RESOURCE_EXHAUSTED and
google.rpc.RetryInfo, instead of queueing for seconds behind the others while every small
call waits too. A call of up to 1,000 entries (the most one may hold) always fits alone.

While the node's bound is reached, a call is refused before its request is decoded (the
request deserializer checks first), so a flood costs the node little more than reading the
bytes. Single calls and reports (ReportTasks, StreamReportTasks: the agents' lane, paced by
the tasks they hold) are never counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from coordinator.api.method_wrapping import WrappingInterceptor
from coordinator.config import Settings
from coordinator.errors import ResourceExhausted

HEAVY_METHODS = frozenset(
    {
        "/aitbc.coordinator.v1.TaskService/SubmitTasks",
        "/aitbc.coordinator.v1.TaskService/StreamSubmitTasks",
    }
)
"""The methods admitted by ``AdmissionLimiter`` (a stream: each of its messages)."""


class _Refused:
    """Stands in for a request that was not decoded: the node was at its bound."""


REFUSED = _Refused()


class AdmissionLimiter:
    """Counts the entries of the heavy calls running, on the node and per peer (a client
    connection)."""

    def __init__(self, per_node: int, per_peer: int, retry_after_s: float) -> None:
        self.per_node = per_node
        self.per_peer = per_peer
        self.retry_after_s = retry_after_s
        self.running = 0
        """Entries of the heavy calls running on the node."""
        self._by_peer: Counter[str] = Counter()
        self.refused = 0
        """Calls refused so far (for tests and the benchmark)."""

    @classmethod
    def of(cls, settings: Settings) -> AdmissionLimiter:
        """The limiter the COORDINATOR_BATCH_* settings describe."""
        return cls(
            per_node=settings.batch_tasks_per_node,
            per_peer=settings.batch_tasks_per_peer,
            retry_after_s=settings.batch_retry_after_s,
        )

    @property
    def full(self) -> bool:
        """True when the node admits no more entries at all."""
        return self.running >= self.per_node

    def enter(self, peer: str, entries: int) -> None:
        """Count a heavy call of ``entries`` from ``peer``; ResourceExhausted beyond a bound
        (a call always fits when nothing else runs)."""
        entries = max(entries, 1)
        if self.running and self.running + entries > self.per_node:
            raise self.node_refusal()
        held = self._by_peer[peer]
        if held and held + entries > self.per_peer:
            raise self.refusal(
                f"this connection is submitting {held} tasks in batches already, at most "
                f"{self.per_peer} at once (COORDINATOR_BATCH_TASKS_PER_PEER)"
            )
        self.running += entries
        self._by_peer[peer] = held + entries

    def leave(self, peer: str, entries: int) -> None:
        """A heavy call that ``enter`` counted has ended."""
        entries = max(entries, 1)
        self.running -= entries
        self._by_peer[peer] -= entries
        if self._by_peer[peer] <= 0:
            del self._by_peer[peer]

    def node_refusal(self) -> ResourceExhausted:
        """The error of a call refused because the node is at its bound."""
        return self.refusal(
            f"the node is submitting {self.running} tasks in batches already, at most "
            f"{self.per_node} at once (COORDINATOR_BATCH_TASKS_PER_NODE)"
        )

    def refusal(self, why: str) -> ResourceExhausted:
        """The error of a refused call (it is counted)."""
        self.refused += 1
        return ResourceExhausted(
            f"{why}; retry after {self.retry_after_s:g} s", retry_after_s=self.retry_after_s
        )


class AdmissionInterceptor(WrappingInterceptor):
    """Admits the calls of HEAVY_METHODS through an ``AdmissionLimiter``. Placed inside the
    error mapping, which turns its refusals into RESOURCE_EXHAUSTED with RetryInfo."""

    def __init__(self, limiter: AdmissionLimiter) -> None:
        super().__init__()
        self._limiter = limiter

    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if method not in HEAVY_METHODS:
            return handler
        deserializer = self._checked(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._admitted_unary(handler.unary_unary),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._admitted_stream(handler.stream_stream),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _checked(self, deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
        """Decode a request only if the node may admit it (decoding 1,000 tasks is a good
        share of their cost)."""
        limiter = self._limiter

        def decode(data: bytes) -> Any:
            if limiter.full:
                return REFUSED
            return deserializer(data) if deserializer is not None else data

        return decode

    def _admitted_unary(self, behavior: Any) -> Any:
        limiter = self._limiter

        async def admitted(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            peer = context.peer()
            if request is REFUSED:
                raise limiter.node_refusal()
            entries = len(request.tasks)
            limiter.enter(peer, entries)
            try:
                return await behavior(request, context)
            finally:
                limiter.leave(peer, entries)

        return admitted

    def _admitted_stream(self, behavior: Any) -> Any:
        limiter = self._limiter

        async def admitted(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            gate = _StreamGate(limiter, context.peer())
            try:
                async for response in behavior(gate.messages(requests), context):
                    yield response
            finally:
                gate.release()

        return admitted


class _StreamGate:
    """Admits each message of one stream: a message holds its place from when the handler
    takes it until the handler asks for the next one (it has answered it) or the stream
    ends. One refused message ends the stream with RESOURCE_EXHAUSTED; the client opens a
    new one after the RetryInfo delay and sends the unanswered messages again."""

    def __init__(self, limiter: AdmissionLimiter, peer: str) -> None:
        self._limiter = limiter
        self._peer = peer
        self._holding = 0
        """Entries of the message being answered (0: none)."""

    async def messages(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        iterator = aiter(requests)
        while True:
            self.release()  # before waiting for the client's next message
            try:
                request = await anext(iterator)
            except StopAsyncIteration:
                return
            if request is REFUSED:
                raise self._limiter.node_refusal()
            entries = len(request.tasks)
            self._limiter.enter(self._peer, entries)
            self._holding = entries
            yield request

    def release(self) -> None:
        if self._holding:
            entries, self._holding = self._holding, 0
            self._limiter.leave(self._peer, entries)
