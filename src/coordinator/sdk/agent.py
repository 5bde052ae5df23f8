"""``Agent``: register, hold the assignment stream, heartbeat and run a handler on every
task, surviving node failures. The user gives an id, a handler and a few facts::

    async def summarize(task: TaskContext) -> dict:
        return {"summary": task.data["text"][:20]}

    await Agent("summarizer-1", summarize, addresses=["node-a:9001", "node-b:9001"]).run()
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import threading
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from typing import Literal

import grpc

from aitbc.coordinator.v1 import agent_pb2
from coordinator.sdk.assignments import AssignmentInfo, StreamEvent, stream_event
from coordinator.sdk.attempts import Attempts
from coordinator.sdk.backoff import Backoff
from coordinator.sdk.credentials import TlsOptions, bearer_token
from coordinator.sdk.endpoints import Endpoints
from coordinator.sdk.errors import RpcError
from coordinator.sdk.reports import Reporter
from coordinator.sdk.runner import Handler
from coordinator.wire_values import duration_s

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 10.0
ASSIGNMENTS_PER_MESSAGE = 64
"""Assignments made together may come in one stream message, up to this many."""

# Mistakes in what the agent says about itself: retrying cannot help, so run() raises them.
_FATAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)

# Why a stream session ended, and so what the connection loop does next.
Outcome = Literal["draining", "reopen", "register"]


class Agent:
    """An agent process's connection to the coordinator cluster; see the module docstring.

    ``await agent.run()`` works until ``agent.stop()``, SIGTERM or SIGINT (or until another
    instance with the same ``agent_id`` replaces its stream). Stopping takes no new work (the
    agent reports BUSY), lets running tasks finish for ``shutdown_grace_s``, hands the others
    back to be retried, then deregisters if ``deregister_on_stop``.

    A task still running ``acknowledge_after_s`` after it arrived (or a quarter of its lease,
    if that is sooner) is acknowledged: it shows RUNNING, and is not sent again when the
    stream reopens. One that finishes sooner is reported straight from ASSIGNED, a report
    saved. 0 acknowledges every task before its handler runs.
    """

    def __init__(
        self,
        agent_id: str,
        handler: Handler,
        *,
        addresses: str | Sequence[str] = "localhost:9001",
        agent_type: str = "worker",
        capabilities: Sequence[str] = (),
        services: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        endpoints: Mapping[str, str] | None = None,
        max_concurrency: int = 1,
        acknowledge_after_s: float = 1.0,
        weight: float = 1.0,
        shutdown_grace_s: float = 10.0,
        deregister_on_stop: bool = True,
        handle_signals: bool = True,
        reconnect_backoff: Backoff | None = None,
        tls: TlsOptions | None = None,
        token: str | None = None,
        token_file: str | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency: must be at least 1")
        if not acknowledge_after_s >= 0:  # NaN too
            raise ValueError("acknowledge_after_s: must be 0 or more")
        self.agent_id = agent_id
        self.handler = handler
        self.max_concurrency = max_concurrency
        self.shutdown_grace_s = shutdown_grace_s
        self.deregister_on_stop = deregister_on_stop
        self.handle_signals = handle_signals
        self._registration = agent_pb2.RegisterAgentRequest(
            agent_id=agent_id,
            agent_type=agent_type,
            capabilities=list(capabilities),
            services=list(services),
            labels=dict(labels or {}),
            metadata=dict(metadata or {}),
            endpoints=dict(endpoints or {}),
            max_concurrency=max_concurrency,
            weight=weight,
        )
        self._endpoints = Endpoints(addresses, tls, bearer_token(token, token_file))
        self._reporter = Reporter(self._endpoints, agent_id)
        self._backoff = reconnect_backoff or Backoff()
        self._attempts = Attempts(agent_id, self._reporter, max_concurrency, acknowledge_after_s)
        self._stop_requested = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False
        self._wake_heartbeat = asyncio.Event()
        self.connected = asyncio.Event()
        """Set while a stream is open (StreamReady received), cleared when it closes."""
        self.node_id = ""
        """The coordinator node holding the agent's stream now (or last)."""
        self.replaced = False
        """True when run() ended because another instance of this agent took over."""
        self._log = {"agent_id": agent_id}

    @property
    def address(self) -> str:
        """The coordinator address the agent uses now."""
        return self._endpoints.address

    @property
    def running_tasks(self) -> int:
        """Attempts received and not yet reported."""
        return self._attempts.running

    def request_stop(self) -> None:
        """Ask ``run()`` to stop gracefully; returns at once (safe in a signal handler)."""
        self._stop_requested.set()

    async def stop(self) -> None:
        """Stop gracefully and wait until ``run()`` has finished."""
        self.request_stop()
        if self._running:
            await self._finished.wait()

    def run_forever(self) -> None:
        """``asyncio.run(agent.run())``: for scripts with nothing else on their event loop."""
        asyncio.run(self.run())

    async def run(self) -> None:
        """Connect and work until stopped (see the class docstring). Raises ``RpcError`` if
        the coordinator refuses the registration itself (a bad id, type or capability)."""
        if self._running:
            raise RuntimeError("this Agent is already running")
        self._running = True
        self._finished.clear()
        removers = self._install_signal_handlers()
        connection = asyncio.create_task(self._connect_loop())
        stop_requested = asyncio.create_task(self._stop_requested.wait())
        try:
            await asyncio.wait({connection, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
            if connection.done():
                connection.result()  # a fatal registration error propagates from here
            await self._drain()
            connection.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connection
            if self.deregister_on_stop and not self.replaced:
                await self._deregister()
            log.info("agent stopped", extra=self._log)
        finally:
            leftovers = self._attempts.tasks()
            for task in (connection, stop_requested, *leftovers):
                task.cancel()
            await asyncio.gather(connection, stop_requested, *leftovers, return_exceptions=True)
            for remove in removers:
                remove()
            await self._reporter.close()
            await self._endpoints.close()
            self._running = False
            self._finished.set()

    # --- connection ------------------------------------------------------------------------

    async def _connect_loop(self) -> None:
        register = True
        while True:
            address = self._endpoints.address
            try:
                if register:
                    await self._register()
                    register = False
                outcome = await self._stream_session()
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code in _FATAL_CODES:
                    raise RpcError(code, exc.details() or "") from None
                if code == grpc.StatusCode.ABORTED:
                    log.warning(
                        "another instance of this agent took over; stopping", extra=self._log
                    )
                    self.replaced = True
                    self.request_stop()
                    return
                if code == grpc.StatusCode.NOT_FOUND:
                    log.info(
                        "the coordinator does not know this agent; registering again",
                        extra=self._log,
                    )
                    register = True
                else:
                    next_address = self._endpoints.move_on(away_from=address)
                    delay_s = self._backoff.next_delay_s()
                    log.warning(
                        "%s from %s; reconnecting to %s in %.2f s",
                        code.name,
                        address,
                        next_address,
                        delay_s,
                        extra=self._log,
                    )
                    await asyncio.sleep(delay_s)
                continue
            if outcome == "draining":
                # At once: the node asked its agents to leave, nothing is wrong elsewhere.
                next_address = self._endpoints.move_on(away_from=address)
                log.info(
                    "node %s is draining; reconnecting to %s",
                    self.node_id,
                    next_address,
                    extra=self._log,
                )
                continue
            register = outcome == "register"
            await asyncio.sleep(self._backoff.next_delay_s())

    async def _register(self) -> None:
        reply = await self._endpoints.agents().RegisterAgent(
            self._registration, timeout=CALL_TIMEOUT_S
        )
        log.info(
            "registered through %s%s",
            self._endpoints.address,
            "" if reply.created else " (known already)",
            extra=self._log,
        )

    async def _stream_session(self) -> Outcome:
        """One StreamAssignments, with heartbeats alongside, until it ends."""
        # Raw bytes, decoded here: a message that python protobuf cannot parse (a task_data
        # nested too deep) must cost only its own tasks, not the stream or the agent.
        call = self._endpoints.raw_assignment_stream()(
            agent_pb2.StreamAssignmentsRequest(
                agent_id=self.agent_id, max_assignments_per_message=ASSIGNMENTS_PER_MESSAGE
            )
        )
        heartbeat_verdict: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        heartbeats: list[asyncio.Task[None]] = []
        reader: asyncio.Task[Outcome] | None = None
        try:
            reader = asyncio.create_task(self._read_stream(call, heartbeat_verdict, heartbeats))
            await asyncio.wait({reader, heartbeat_verdict}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                return reader.result()
            return heartbeat_verdict.result()
        finally:
            self.connected.clear()
            call.cancel()
            for task in (reader, *heartbeats):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                        await task

    async def _read_stream(
        self,
        call: AsyncIterable[bytes],
        heartbeat_verdict: asyncio.Future[Outcome],
        heartbeats: list[asyncio.Task[None]],
    ) -> Outcome:
        """Act on each message of the stream until it ends or the node drains. The heartbeat
        task that StreamReady starts goes into ``heartbeats``, for the session to stop."""
        async for raw in call:
            event = stream_event(raw)
            if event.kind == "ready":
                heartbeats.append(self._on_ready(event, heartbeat_verdict))
            elif event.kind == "draining":
                return "draining"
            else:
                self._on_event(event)
        return "reopen"

    def _on_ready(
        self, event: StreamEvent, heartbeat_verdict: asyncio.Future[Outcome]
    ) -> asyncio.Task[None]:
        """The stream is open: note its node and start heartbeats at the interval it asks."""
        ready = event.message.ready
        self.node_id = ready.node_id
        self._backoff.reset()
        self.connected.set()
        interval_s = duration_s(ready.heartbeat_interval) or 10.0
        heartbeats = asyncio.create_task(self._heartbeat(interval_s, heartbeat_verdict))
        log.info("stream open on node %s", self.node_id, extra=self._log)
        return heartbeats

    def _on_event(self, event: StreamEvent) -> None:
        """Assignments, a cancel notice, or a message that could not be read at all."""
        kind = event.kind
        if kind in ("assignment", "assignments"):
            for assignment in event.assignments:
                self._accept(assignment)
            for undecodable in event.undecodable:
                self._attempts.refuse(undecodable)
        elif kind == "cancel":
            cancel = event.message.cancel
            self._attempts.cancel(cancel.task_id, cancel.attempt, cancel.reason)
        elif kind is None and event.error:
            # Not even the ids could be read: nothing to report; its tasks come back when
            # their leases end.
            log.error(
                "a stream message could not be decoded and was skipped: %s",
                event.error,
                extra=self._log,
            )

    async def _heartbeat(self, interval_s: float, verdict: asyncio.Future[Outcome]) -> None:
        """Heartbeat every ``interval_s`` (at once when woken); BUSY while stopping."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_heartbeat.wait(), interval_s)
            self._wake_heartbeat.clear()
            status = "AGENT_STATUS_UNSPECIFIED" if self._attempts.accepting else "AGENT_STATUS_BUSY"
            try:
                await self._endpoints.agents().Heartbeat(
                    agent_pb2.HeartbeatRequest(agent_id=self.agent_id, status=status),
                    timeout=CALL_TIMEOUT_S,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    log.info("the coordinator lost this agent's stream; reopening", extra=self._log)
                    verdict.set_result("reopen")
                    return
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    log.info(
                        "the coordinator forgot this agent; registering again", extra=self._log
                    )
                    verdict.set_result("register")
                    return
                # Anything else: the stream itself will say whether the node is gone.
                log.warning("heartbeat failed: %s", exc.code().name, extra=self._log)

    async def _deregister(self) -> None:
        try:
            await self._endpoints.agents().DeregisterAgent(
                agent_pb2.DeregisterAgentRequest(agent_id=self.agent_id), timeout=CALL_TIMEOUT_S
            )
            log.info("deregistered", extra=self._log)
        except grpc.aio.AioRpcError as exc:
            log.warning("could not deregister: %s", exc.code().name, extra=self._log)

    # --- work ------------------------------------------------------------------------------

    def _accept(self, assignment: AssignmentInfo) -> None:
        # One method per delivered attempt: bench/load_agent.py wraps it to time arrivals.
        self._attempts.accept(assignment, self.handler)

    async def _drain(self) -> None:
        """Take no new work, let running attempts finish within the grace period, then hand
        the rest back."""
        self._attempts.accepting = False
        self._wake_heartbeat.set()  # report BUSY now, not at the next interval
        await self._attempts.drain(self.shutdown_grace_s, CALL_TIMEOUT_S)

    def _install_signal_handlers(self) -> list[Callable[[], object]]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return []
        loop = asyncio.get_running_loop()
        removers: list[Callable[[], object]] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop)
            except (NotImplementedError, RuntimeError):  # not on this platform / loop
                continue
            removers.append(functools.partial(loop.remove_signal_handler, sig))
        return removers
