"""The SDK agent's reports over StreamReportTasks: one stream carries many tasks' reports, a
stream that breaks (its node drains, Redis goes away, an answer does not come) has its
unanswered message sent again on a new one, and a node without the stream gets ReportTasks
calls. Real nodes and Redis throughout; the node's metrics count calls and streams."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf.struct_pb2 import Struct

from agent_harness import eventually, get_task
from aitbc.coordinator.v1 import task_pb2
from coordinator.sdk import NewTask, TaskContext, TaskError, TaskState
from coordinator.sdk import reports as reports_module
from coordinator.sdk.assignments import assignment_from_proto
from coordinator.sdk.endpoints import Endpoints
from coordinator.sdk.reports import Reporter

TASKS = "aitbc.coordinator.v1.TaskService"


def addr(node: Any) -> str:
    return f"127.0.0.1:{node.port}"


def handled(node: Any, method: str, rpc_type: str, code: str | None = None) -> float:
    """Calls of a TaskService method the node answered (a stream counts once, when it
    ends), with ``code`` or with any code."""
    total = 0.0
    for metric in node.coordinator.metrics.registry.collect():
        for sample in metric.samples:
            labels = sample.labels
            if (
                sample.name == "aitbc_coordinator_rpc_handled_total"
                and (labels["service"], labels["method"], labels["type"])
                == (TASKS, method, rpc_type)
                and code in (None, labels["code"])
            ):
                total += sample.value
    return total


def unary_reports(node: Any) -> float:
    """Unary report calls of any kind the node answered, whatever their code."""
    return sum(
        handled(node, method, "unary")
        for method in ("ReportTasks", "AcknowledgeTask", "CompleteTask", "FailTask")
    )


def streams(node: Any, code: str | None = None) -> float:
    """StreamReportTasks streams that ended on the node (with ``code``, or any)."""
    return handled(node, "StreamReportTasks", "bidi_stream", code)


async def _true(value: bool) -> bool:
    return value


def gated_handler(gates: dict[int, asyncio.Event], started: set[str]) -> Any:
    """A handler that returns ``{"n": ...}`` once its task's ``wave`` gate is open."""

    async def handler(task: TaskContext) -> dict[str, Any]:
        started.add(task.task_id)
        await gates[task.data["wave"]].wait()
        return {"n": task.data["n"]}

    return handler


async def assert_each_completed_once(client: Any, expected: dict[str, int]) -> None:
    """Every task COMPLETED with its own result, by its first and only attempt."""
    for task_id, n in expected.items():
        task = await client.get(task_id)
        assert task.state == TaskState.COMPLETED, task
        assert task.result == {"n": n}
        assert [a.attempt for a in task.attempts] == [1], task
    assert (await client.stats()).tasks_completed == len(expected)


# --- one stream ----------------------------------------------------------------------------


async def test_an_agent_reports_many_tasks_over_one_stream(node, sdk_agents, make_client):
    count = 60

    async def work(task: TaskContext) -> dict[str, Any]:
        await asyncio.sleep(0.001 * (task.data["n"] % 7))
        return {"n": task.data["n"]}

    agent = await sdk_agents.start(addr(node), work, max_concurrency=8)
    client = make_client(addr(node))
    submitted = await client.submit_many([NewTask("work", {"n": i}) for i in range(count)])
    for result in submitted:
        await client.wait(result.task_id, timeout_s=20)

    # While the agent runs, its stream stays open: the node counts it when it ends.
    assert streams(node) == 0
    await asyncio.wait_for(agent.stop(), 10)

    await assert_each_completed_once(client, {r.task_id: i for i, r in enumerate(submitted)})
    # 60 acknowledgements and 60 completions, all in one stream (not one unary report call).
    assert streams(node) == streams(node, "OK") == 1
    assert unary_reports(node) == 0


def stream_tasks(since: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """Tasks started after ``since`` that serve report streams: the Reporter's, its calls'
    and the node's handlers of StreamReportTasks."""
    found = set()
    for task in asyncio.all_tasks() - since:
        qualname = getattr(task.get_coro(), "__qualname__", "")
        if "StreamReportTasks" in task.get_name() or qualname.startswith(
            ("Reporter.", "_AioCall.", "StreamStreamCall.")
        ):
            found.add(task)
    return found


async def test_close_ends_the_stream_cleanly_and_leaves_no_task(node, pool):
    agent = await pool.start(node.channel, "agent-1")
    await node.tasks.SubmitTask(task_pb2.SubmitTaskRequest(task_type="t"))
    a = assignment_from_proto(await agent.next_assignment())
    before = asyncio.all_tasks()
    endpoints = Endpoints(addr(node))
    reporter = Reporter(endpoints, "agent-1")
    try:
        assert await reporter.complete(a, Struct()) is None
        call = reporter._stream._call  # the open stream, to see how it ends
        assert call is not None and not call.done()
        running = stream_tasks(before)
        assert any("StreamReportTasks" in t.get_name() for t in running)  # the node's handler

        await reporter.close()

        # Half-closed, then ended by the node with OK: not cancelled by the agent.
        assert call.done() and await call.code() == grpc.StatusCode.OK
        assert streams(node) == streams(node, "OK") == 1
        assert unary_reports(node) == 0
    finally:
        await endpoints.close()
    await eventually(
        lambda: _true(all(t.done() for t in running)), what="the stream's tasks finished"
    )
    assert (await get_task(node.tasks, a.task_id)).state == task_pb2.TASK_STATE_COMPLETED


# --- broken streams ------------------------------------------------------------------------


async def test_reports_follow_the_agent_when_its_node_drains(start_node, sdk_agents, make_client):
    node_a = await start_node(node_id="node-a")
    node_b = await start_node(node_id="node-b")
    gates = {wave: asyncio.Event() for wave in (1, 2, 3)}
    started: set[str] = set()
    agent = await sdk_agents.start(
        [addr(node_a), addr(node_b)], gated_handler(gates, started), max_concurrency=20
    )
    assert agent.node_id == "node-a"
    client = make_client([addr(node_a), addr(node_b)])
    expected: dict[str, int] = {}

    async def submit(wave: int, count: int) -> None:
        numbers = [wave * 100 + i for i in range(count)]
        results = await client.submit_many(
            [NewTask("work", {"wave": wave, "n": n}) for n in numbers]
        )
        expected.update((r.task_id, n) for r, n in zip(results, numbers, strict=True))

    await submit(1, 5)
    await submit(2, 5)
    await eventually(lambda: _true(len(started) == 10), what="10 handlers running")
    gates[1].set()  # wave 1 is reported through node-a's stream
    await eventually(lambda: _true(agent.running_tasks == 5), what="wave 1 reported")

    # node-a drains while wave 2 finishes: its reports go through node-a's stream while it
    # still serves it, or again through node-b's once the stream ends or the agent moves.
    stopping = asyncio.create_task(node_a.coordinator.stop(grace_s=1))
    gates[2].set()
    await eventually(
        lambda: _true(agent.node_id == "node-b" and agent.connected.is_set()),
        what="the agent on node-b",
    )
    await stopping
    gates[3].set()  # wave 3 runs and is reported through node-b only
    await submit(3, 5)
    for task_id in expected:
        await client.wait(task_id, timeout_s=20)
    await asyncio.wait_for(agent.stop(), 10)

    await assert_each_completed_once(client, expected)
    assert streams(node_a) >= 1 and streams(node_b) == streams(node_b, "OK") == 1
    assert unary_reports(node_a) == unary_reports(node_b) == 0


async def test_reports_made_during_a_redis_outage_go_through_after_it(
    start_node, own_redis, sdk_agents, make_client
):
    # Liveness far beyond the outage: the tasks must stay the agent's (one attempt each).
    node = await start_node(redis_url=own_redis.url(1), liveness_timeout_s=60)
    gates = {1: asyncio.Event()}
    started: set[str] = set()
    agent = await sdk_agents.start(addr(node), gated_handler(gates, started), max_concurrency=6)
    client = make_client(addr(node))
    submitted = await client.submit_many([NewTask("work", {"wave": 1, "n": i}) for i in range(6)])
    await eventually(lambda: _true(len(started) == 6), what="6 handlers running")

    async def all_running() -> bool:
        states = [(await client.get(r.task_id)).state for r in submitted]
        return all(state == TaskState.RUNNING for state in states)

    await eventually(all_running, what="every task acknowledged")
    # A snapshot for the restart to load (the test Redis keeps nothing otherwise).
    admin = aioredis.Redis(port=own_redis.port)
    try:
        await admin.save()
    finally:
        await admin.aclose()
    await asyncio.to_thread(own_redis.stop)
    gates[1].set()  # the completions meet the outage: their stream ends UNAVAILABLE
    await eventually(
        lambda: _true(streams(node, "UNAVAILABLE") >= 1), what="a stream ended by the outage"
    )
    await asyncio.sleep(0.5)  # and they are retried meanwhile
    assert agent.running_tasks == 6
    await asyncio.to_thread(own_redis.start)

    await eventually(lambda: _true(agent.running_tasks == 0), 20, what="every task reported")
    await asyncio.wait_for(agent.stop(), 10)
    await assert_each_completed_once(client, {r.task_id: i for i, r in enumerate(submitted)})
    assert streams(node, "OK") == 1  # the one open at the end, closed cleanly
    assert unary_reports(node) == 0


# --- a node-like server in front of a real node ------------------------------------------


class Relay:
    """A gRPC server that serves TaskService's ReportTasks by calling a real node's, and,
    with ``stream``, StreamReportTasks by one such call per message (``stall_first``: the
    first stream never answers its first message). Any other method is UNIMPLEMENTED, as
    on a node that predates it."""

    def __init__(self, node: Any, *, stream: bool, stall_first: bool = False) -> None:
        self._node = node
        self._stall_first = stall_first
        self.unary_calls = 0
        self.streams_opened = 0
        self.streams_cancelled = 0
        handlers = {
            "ReportTasks": grpc.unary_unary_rpc_method_handler(
                self._report,
                request_deserializer=task_pb2.ReportTasksRequest.FromString,
                response_serializer=task_pb2.ReportTasksResponse.SerializeToString,
            )
        }
        if stream:
            handlers["StreamReportTasks"] = grpc.stream_stream_rpc_method_handler(
                self._stream,
                request_deserializer=task_pb2.StreamReportTasksRequest.FromString,
                response_serializer=task_pb2.StreamReportTasksResponse.SerializeToString,
            )
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(TASKS, handlers),)
        )
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"

    async def _report(
        self, request: task_pb2.ReportTasksRequest, context: Any
    ) -> task_pb2.ReportTasksResponse:
        self.unary_calls += 1
        return await self._node.tasks.ReportTasks(request)

    async def _stream(
        self, requests: AsyncIterator[task_pb2.StreamReportTasksRequest], context: Any
    ) -> AsyncIterator[task_pb2.StreamReportTasksResponse]:
        self.streams_opened += 1
        stall = self._stall_first and self.streams_opened == 1
        try:
            async for request in requests:
                if stall:
                    await asyncio.Event().wait()  # until the agent gives up and cancels
                reply = await self._node.tasks.ReportTasks(
                    task_pb2.ReportTasksRequest(reports=request.reports)
                )
                yield task_pb2.StreamReportTasksResponse(results=reply.results)
        except asyncio.CancelledError:
            self.streams_cancelled += 1
            raise


@pytest.fixture
async def relay() -> AsyncIterator[Callable[..., Awaitable[Relay]]]:
    """``await relay(node, stream=..., stall_first=...)``: a started Relay, stopped at the end."""
    relays: list[Relay] = []

    async def start(node: Any, **options: Any) -> Relay:
        r = Relay(node, **options)
        relays.append(r)
        await r.server.start()
        return r

    yield start
    for r in relays:
        await r.server.stop(0)


async def three_assignments(node: Any, pool: Any) -> list[Any]:
    agent = await pool.start(node.channel, "agent-1", max_concurrency=3)
    for _ in range(3):
        await node.tasks.SubmitTask(task_pb2.SubmitTaskRequest(task_type="t"))
    return [assignment_from_proto(await agent.next_assignment()) for _ in range(3)]


async def test_a_node_without_the_stream_gets_report_tasks_calls(node, pool, relay, caplog):
    caplog.set_level(logging.INFO, logger="coordinator.sdk.reports")
    old_node = await relay(node, stream=False)
    first, second, third = await three_assignments(node, pool)
    endpoints = Endpoints(old_node.address)
    reporter = Reporter(endpoints, "agent-1")
    try:
        assert await reporter.acknowledge(first) is None
        assert await reporter.complete(first, Struct()) is None
        outcomes = await asyncio.gather(
            reporter.acknowledge(second), reporter.fail(third, TaskError("x", "E", retryable=False))
        )
    finally:
        await reporter.close()
        await endpoints.close()

    assert outcomes == [None, None]
    assert old_node.unary_calls == 3  # one call per batch, after the one refused stream
    assert handled(node, "ReportTasks", "unary", "OK") == 3
    states = [(await get_task(node.tasks, a.task_id)).state for a in (first, second, third)]
    assert states == [
        task_pb2.TASK_STATE_COMPLETED,
        task_pb2.TASK_STATE_RUNNING,
        task_pb2.TASK_STATE_FAILED,
    ]
    told = [r for r in caplog.records if "does not serve StreamReportTasks" in r.getMessage()]
    assert [r.levelno for r in told] == [logging.INFO]  # once


async def test_an_unanswered_message_is_sent_again_on_a_new_stream(node, pool, relay, monkeypatch):
    monkeypatch.setattr(reports_module, "CALL_TIMEOUT_S", 0.5)
    hung = await relay(node, stream=True, stall_first=True)
    first, second, _ = await three_assignments(node, pool)
    endpoints = Endpoints(hung.address)
    reporter = Reporter(endpoints, "agent-1")
    try:
        # The first message is never answered: after 0.5 s the stream is cancelled and the
        # message goes again, on a new stream, with the report made meanwhile.
        completing = asyncio.create_task(reporter.complete(first, Struct()))
        await eventually(lambda: _true(hung.streams_opened == 1), what="the first stream")
        acknowledging = asyncio.create_task(reporter.acknowledge(second))
        assert await asyncio.wait_for(asyncio.gather(completing, acknowledging), 10) == [
            None,
            None,
        ]
    finally:
        await reporter.close()
        await endpoints.close()

    assert hung.streams_cancelled == 1 and hung.streams_opened == 2
    assert hung.unary_calls == 0
    assert (await get_task(node.tasks, first.task_id)).state == task_pb2.TASK_STATE_COMPLETED
    assert (await get_task(node.tasks, second.task_id)).state == task_pb2.TASK_STATE_RUNNING


async def test_close_with_a_message_in_flight_cancels_its_stream(node, pool, relay):
    hung = await relay(node, stream=True, stall_first=True)
    first, _, _ = await three_assignments(node, pool)
    before = asyncio.all_tasks()
    endpoints = Endpoints(hung.address)
    reporter = Reporter(endpoints, "agent-1")
    try:
        completing = asyncio.create_task(reporter.complete(first, Struct()))
        await eventually(lambda: _true(hung.streams_opened == 1), what="the stream")
        running = stream_tasks(before)

        await asyncio.wait_for(reporter.close(), 1)  # at once, not after the message's deadline
    finally:
        await endpoints.close()

    with pytest.raises(asyncio.CancelledError):
        await completing
    await eventually(lambda: _true(hung.streams_cancelled == 1), what="the stream cancelled")
    await eventually(
        lambda: _true(all(t.done() for t in running)), what="the stream's tasks finished"
    )
    assert (await get_task(node.tasks, first.task_id)).state == task_pb2.TASK_STATE_ASSIGNED
