#!/usr/bin/env python3
"""One agent process of the task benchmarks: N no-op agents on one coordinator node.

Each agent registers (capability ``bench``), opens StreamAssignments and completes every
assignment at once with an empty result. It records, per task, when the assignment arrived
and when its completion's reply returned (``time.time_ns``, comparable across processes on one machine).

``--mode raw`` (the default, faster) uses the generated gRPC stubs and skips
AcknowledgeTask: the coordinator accepts a completion straight from ASSIGNED
(lua/report_task.lua). Each agent batches its completions naturally: at most one batch in
flight per agent, the completions made meanwhile go in the next one. With ``--report
stream`` (the default) the batches are the messages of one StreamReportTasks stream per
agent (opened before the agent reports ready, the next message written once the previous
one's response has arrived); ``--report batch`` sends them as ReportTasks calls;
``--report unary`` sends one CompleteTask per task. Assignments made together arrive in one
stream message, up to ``--assignments-per-message`` (64; 1 for one per message). ``--mode
sdk`` runs ``coordinator.Agent`` (acknowledge, then complete, both batched by the SDK).
``--hold`` keeps every assignment and reports nothing (the many-streams scenario: one task
per agent; no report stream is opened).

Writes ``OUT.ready`` once every agent's stream is ready, ``OUT.received`` once ``--expect``
tasks have arrived, and on SIGTERM writes ``OUT``
(JSON: records ``[task_id, agent_id, received_ns, completed_ns]``, errors, the stream
messages and the report calls or messages counted) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import transport
from message_stream import MessageStream

from aitbc.coordinator.v1 import agent_pb2, agent_pb2_grpc, task_pb2, task_pb2_grpc

CAPABILITY = "bench"
CALL_TIMEOUT_S = 60.0
CALL_ATTEMPTS = 5
RETRIED = frozenset({grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE})
"""What an overloaded server drops: the call is made again, as the SDK would."""
REGISTERING = asyncio.Semaphore(64)
MAX_REPORTS_PER_CALL = 1000
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
"""Status code names by google.rpc.Code number (a refused entry of ReportTasks)."""


class Recorder:
    """Time stamps of one process's agents, and the RPC errors they met."""

    def __init__(
        self,
        agents: int,
        on_all_ready: Callable[[], object],
        expect: int = 0,
        on_all_received: Callable[[], object] = lambda: None,
    ) -> None:
        self.received: dict[str, tuple[str, int]] = {}
        self.completed: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.repeats = 0
        self.calls = {"stream_messages": 0, "report_calls": 0}
        """Stream messages with assignments received, report calls (or StreamReportTasks
        messages) made (raw mode)."""
        self.reporting: set[asyncio.Task[Any]] = set()
        """Completion calls in flight: finished before the report is written."""
        self._waiting = agents
        self._on_all_ready = on_all_ready
        self._expect = expect
        self._on_all_received = on_all_received

    def ready(self) -> None:
        self._waiting -= 1
        if self._waiting == 0:
            self._on_all_ready()

    def receive(self, task_id: str, agent_id: str) -> bool:
        """Record an arrival; False for a repeated delivery (already recorded)."""
        if task_id in self.received:
            self.repeats += 1
            return False
        self.received[task_id] = (agent_id, time.time_ns())
        if len(self.received) == self._expect:
            self._on_all_received()
        return True

    def complete(self, task_id: str) -> None:
        self.completed[task_id] = time.time_ns()

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def report(self) -> dict[str, Any]:
        return {
            "records": [
                [task_id, agent_id, received, self.completed.get(task_id, 0)]
                for task_id, (agent_id, received) in self.received.items()
            ],
            "errors": self.errors,
            "repeated_deliveries": self.repeats,
            "calls": self.calls,
        }


class BatchedCompletions:
    """One raw agent's completions through ReportTasks: at most one call in flight; the
    completions made while it is go in the next call (as the SDK's Reporter does)."""

    method = "ReportTasks"

    def __init__(self, tasks: task_pb2_grpc.TaskServiceStub, agent_id: str, rec: Recorder) -> None:
        self._tasks = tasks
        self._agent_id = agent_id
        self._rec = rec
        self._queue: list[agent_pb2.Assignment] = []
        self._sender: asyncio.Task[None] | None = None

    def complete(self, assignment: agent_pb2.Assignment) -> None:
        self._queue.append(assignment)
        if self._sender is None:
            self._sender = asyncio.create_task(self._send())
            self._rec.reporting.add(self._sender)
            self._sender.add_done_callback(self._rec.reporting.discard)

    async def _exchange(
        self, reports: list[task_pb2.TaskReport]
    ) -> Sequence[task_pb2.TaskReportResult]:
        """Send one batch of reports; their results, in order."""
        request = task_pb2.ReportTasksRequest(reports=reports)
        reply: task_pb2.ReportTasksResponse = await self._tasks.ReportTasks(
            request, timeout=CALL_TIMEOUT_S
        )
        return reply.results

    async def _send(self) -> None:
        try:
            while self._queue:
                batch = self._queue[:MAX_REPORTS_PER_CALL]
                del self._queue[:MAX_REPORTS_PER_CALL]
                reports = [
                    task_pb2.TaskReport(
                        complete=task_pb2.CompleteTaskRequest(
                            task_id=a.task_id,
                            agent_id=self._agent_id,
                            fencing_token=a.fencing_token,
                        )
                    )
                    for a in batch
                ]
                self._rec.calls["report_calls"] += 1
                try:
                    results = await self._exchange(reports)
                except grpc.aio.AioRpcError as exc:
                    for _ in batch:
                        self._rec.error(f"{self.method} {exc.code().name}")
                    continue
                for assignment, result in zip(batch, results, strict=True):
                    if result.HasField("error"):
                        name = CODE_NAMES.get(result.error.code, str(result.error.code))
                        self._rec.error(f"{self.method} entry {name}")
                    else:
                        self._rec.complete(assignment.task_id)
        finally:
            self._sender = None

    async def close(self) -> None:
        """Nothing to close: calls end by themselves."""


class StreamedCompletions(BatchedCompletions):
    """The same batching over one StreamReportTasks stream: one message in flight, the
    completions made meanwhile in the next message. The stream is opened before the agent
    reports ready (and again after an error, for the next message)."""

    method = "StreamReportTasks"

    def __init__(self, tasks: task_pb2_grpc.TaskServiceStub, agent_id: str, rec: Recorder) -> None:
        super().__init__(tasks, agent_id, rec)
        self._stream = MessageStream(tasks.StreamReportTasks)

    async def open(self) -> None:
        await self._stream.open()

    async def _exchange(
        self, reports: list[task_pb2.TaskReport]
    ) -> Sequence[task_pb2.TaskReportResult]:
        reply = await self._stream.exchange(task_pb2.StreamReportTasksRequest(reports=reports))
        results: Sequence[task_pb2.TaskReportResult] = reply.results
        return results

    async def close(self) -> None:
        await self._stream.close()


async def retried(rec: Recorder, name: str, call: Callable[[], Awaitable[Any]]) -> Any:
    """``call()``, made again after a drop (``RETRIED``), at most ``CALL_ATTEMPTS`` times in
    all; any other error, or the last attempt's, is raised."""
    for attempt in range(CALL_ATTEMPTS - 1):
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRIED:
                raise
            rec.error(f"{name} {exc.code().name} (retried)")
            await asyncio.sleep(0.1 * (attempt + 1))
    return await call()


async def raw_agent(
    channel: grpc.aio.Channel, agent_id: str, args: argparse.Namespace, rec: Recorder
) -> None:
    """Register, stream, and complete each assignment (no ack): batched over a
    StreamReportTasks stream (``--report stream``) or through ReportTasks calls (``batch``),
    or with one CompleteTask each (``unary``)."""
    agents = transport.stub(agent_pb2_grpc.AgentServiceStub, channel, args)
    tasks = transport.stub(task_pb2_grpc.TaskServiceStub, channel, args)
    request = agent_pb2.RegisterAgentRequest(
        agent_id=agent_id,
        agent_type="worker",
        capabilities=[CAPABILITY],
        max_concurrency=args.max_concurrency,
    )
    # Registration is not what is measured: a bounded number at once per process, and a
    # call the overloaded node drops (CANCELLED, UNAVAILABLE) is retried, as the SDK would.
    async with REGISTERING:
        await retried(
            rec, "RegisterAgent", lambda: agents.RegisterAgent(request, timeout=CALL_TIMEOUT_S)
        )

    async def complete(assignment: agent_pb2.Assignment) -> None:
        # A report the overloaded server drops (CANCELLED, UNAVAILABLE) is sent again, as
        # the SDK does: the same fencing token, so it cannot complete the task twice. (Not
        # retried, one CompleteTask CANCELLED in 20,000 left the relay's drain waiting.)
        request = task_pb2.CompleteTaskRequest(
            task_id=assignment.task_id, agent_id=agent_id, fencing_token=assignment.fencing_token
        )

        async def report() -> None:
            rec.calls["report_calls"] += 1
            await tasks.CompleteTask(request, timeout=CALL_TIMEOUT_S)

        try:
            await retried(rec, "CompleteTask", report)
        except grpc.aio.AioRpcError as exc:
            rec.error(f"CompleteTask {exc.code().name}")
            return
        rec.complete(assignment.task_id)

    batched: BatchedCompletions | None = None
    if args.report == "batch" and not args.hold:
        batched = BatchedCompletions(tasks, agent_id, rec)
    elif args.report == "stream" and not args.hold:
        batched = StreamedCompletions(tasks, agent_id, rec)
        await batched.open()

    def run(assignment: agent_pb2.Assignment) -> None:
        if rec.receive(assignment.task_id, agent_id) and not args.hold:
            if batched is not None:
                batched.complete(assignment)
                return
            task = asyncio.create_task(complete(assignment))
            rec.reporting.add(task)
            task.add_done_callback(rec.reporting.discard)

    call = agents.StreamAssignments(
        agent_pb2.StreamAssignmentsRequest(
            agent_id=agent_id, max_assignments_per_message=args.assignments_per_message
        )
    )
    try:
        async for event in call:
            kind = event.WhichOneof("event")
            if kind in ("assignment", "assignments"):
                rec.calls["stream_messages"] += 1
            if kind == "assignment":
                run(event.assignment)
            elif kind == "assignments":
                for assignment in event.assignments.assignments:
                    run(assignment)
            elif kind == "ready":
                rec.ready()
            elif kind == "draining":
                break
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:
            rec.error(f"StreamAssignments {exc.code().name}")
    finally:
        call.cancel()
        if batched is not None:
            await batched.close()


async def sdk_agent(address: str, agent_id: str, args: argparse.Namespace, rec: Recorder) -> None:
    """``coordinator.Agent`` with a no-op handler; time stamps through two thin wrappers."""
    from coordinator import Agent, TaskContext

    release = asyncio.Event()

    async def noop(task: TaskContext) -> None:
        if args.hold:
            await release.wait()

    agent = Agent(
        agent_id,
        noop,
        addresses=[address],
        capabilities=[CAPABILITY],
        max_concurrency=args.max_concurrency,
        handle_signals=False,
        deregister_on_stop=False,
        tls=transport.tls_options(args),
        token_file=args.token_file,
    )
    # The SDK has no hooks for this: wrap the two private steps that bracket a task, the
    # arrival of an assignment and the CompleteTask report, to record when they happen.
    accept = agent._accept
    report_complete = agent._reporter.complete

    def timed_accept(assignment: Any) -> None:
        rec.receive(assignment.task_id, agent_id)
        accept(assignment)

    async def timed_complete(assignment: Any, *a: Any, **kw: Any) -> Any:
        current = asyncio.current_task()
        if current is not None:
            rec.reporting.add(current)
            current.add_done_callback(rec.reporting.discard)
        code = await report_complete(assignment, *a, **kw)
        if code is None:
            rec.complete(assignment.task_id)
        else:
            rec.error(f"CompleteTask {code.name}")
        return code

    agent._accept = timed_accept  # type: ignore[method-assign]
    agent._reporter.complete = timed_complete  # type: ignore[method-assign,assignment]

    async def watch_ready() -> None:
        await agent.connected.wait()
        rec.ready()

    watcher = asyncio.create_task(watch_ready())
    try:
        await agent.run()
    finally:
        watcher.cancel()


async def main_async(args: argparse.Namespace) -> None:
    out = Path(args.out)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    rec = Recorder(
        args.agents,
        lambda: Path(f"{out}.ready").write_text("ready\n"),
        args.expect,
        lambda: Path(f"{out}.received").write_text("received\n"),
    )
    ids = [f"{args.prefix}-{i:05d}" for i in range(args.agents)]
    channels: list[grpc.aio.Channel] = []
    workers: list[asyncio.Task[None]] = []
    for start in range(0, args.agents, args.agents_per_channel):
        group = ids[start : start + args.agents_per_channel]
        if args.mode == "raw":
            channel = transport.channel(args, args.address)
            channels.append(channel)
            workers += [asyncio.create_task(raw_agent(channel, a, args, rec)) for a in group]
        else:
            workers += [asyncio.create_task(sdk_agent(args.address, a, args, rec)) for a in group]
        if args.agents > 100:
            await asyncio.sleep(0)  # let earlier agents start before creating more

    def crashed(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            rec.error(f"agent crashed: {task.exception()!r}")

    for task in workers:
        task.add_done_callback(crashed)
    await stop.wait()
    # A task the coordinator counts as completed may still have its CompleteTask reply on
    # the way here: let those calls finish before writing the time stamps.
    if rec.reporting:
        await asyncio.wait(rec.reporting, timeout=30)
    report = rec.report()
    for task in workers:
        task.cancel()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*workers, return_exceptions=True), 10)
    for channel in channels:
        await channel.close()
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report))
    tmp.rename(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--prefix", required=True, help="agent ids are PREFIX-00000, ...")
    parser.add_argument("--agents", type=int, default=1)
    parser.add_argument("--agents-per-channel", type=int, default=1)
    parser.add_argument("--max-concurrency", type=int, default=100)
    parser.add_argument("--mode", choices=("raw", "sdk"), default="raw")
    parser.add_argument(
        "--report",
        choices=("stream", "batch", "unary"),
        default="stream",
        help="raw mode: completions as messages of one StreamReportTasks stream per agent "
        "(stream), through ReportTasks calls (batch), or one CompleteTask each (unary)",
    )
    parser.add_argument(
        "--assignments-per-message",
        type=int,
        default=64,
        help="raw mode: max_assignments_per_message of the stream (1: one per message)",
    )
    parser.add_argument("--hold", action="store_true", help="keep assignments, report nothing")
    parser.add_argument("--expect", type=int, default=0, help="write OUT.received after N tasks")
    parser.add_argument("--out", required=True)
    transport.add_arguments(parser)
    asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
