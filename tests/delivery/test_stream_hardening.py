"""Assignment streams under pressure: concurrent opens of one agent, a draining node, an
agent that stops reading its stream, and batches too big for one message."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import grpc

from agent_harness import AutoAgent, eventually, get_task, submit_request
from aitbc.coordinator.v1 import agent_pb2, agent_pb2_grpc, task_pb2
from coordinator.storage import keys


class RawStream:
    """One StreamAssignments call, read in the background, that does not wait for ready."""

    def __init__(self, stub: agent_pb2_grpc.AgentServiceStub, agent_id: str) -> None:
        self.agent_id = agent_id
        self.call = stub.StreamAssignments(agent_pb2.StreamAssignmentsRequest(agent_id=agent_id))
        self.ready = False
        self.draining = False
        self.error: grpc.aio.AioRpcError | None = None
        self.ended = asyncio.Event()
        self.assignments: list[agent_pb2.Assignment] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for event in self.call:
                kind = event.WhichOneof("event")
                if kind == "ready":
                    self.ready = True
                elif kind == "draining":
                    self.draining = True
                elif kind == "assignment":
                    self.assignments.append(event.assignment)
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        finally:
            self.ended.set()

    @property
    def open(self) -> bool:
        return self.ready and not self.ended.is_set()

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)


ROUNDS = 5
"""Rounds of 50 pairs: a race lost in one pair of 50 shows in most runs, not all."""


async def test_concurrent_streams_of_one_agent_leave_exactly_one_open_and_recorded(
    node, redis_client
):
    # Two real clients on their own connections, each opening one stream per agent at once.
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") for _ in range(2)]
    stubs = [agent_pb2_grpc.AgentServiceStub(channel) for channel in channels]
    try:
        for round_ in range(ROUNDS):
            await open_pairs_once(
                [node], redis_client, stubs, [f"agent-{round_}-{i:02d}" for i in range(50)]
            )
    finally:
        for channel in channels:
            await channel.close()


async def test_concurrent_streams_of_one_agent_on_two_nodes_leave_one_open_and_recorded(
    start_node, redis_client
):
    nodes = [await start_node(node_id="node-a"), await start_node(node_id="node-b")]
    stubs = [node.agents for node in nodes]
    for round_ in range(ROUNDS):
        await open_pairs_once(
            nodes, redis_client, stubs, [f"agent-{round_}-{i:02d}" for i in range(50)]
        )


async def open_pairs_once(nodes, redis_client, stubs, agent_ids):
    """Open two streams per agent at once (one through each stub), then check that exactly
    one per agent stays open, that it is the one Redis records, and that it gets work."""
    node = nodes[0]
    for agent_id in agent_ids:
        await node.agents.RegisterAgent(
            agent_pb2.RegisterAgentRequest(agent_id=agent_id, agent_type="worker")
        )
    streams = [RawStream(stub, agent_id) for agent_id in agent_ids for stub in stubs]
    try:

        async def settled() -> bool:
            return all(s.ready or s.ended.is_set() for s in streams)

        await eventually(settled, timeout_s=20, what="every stream ready or ended")
        await asyncio.sleep(1.0)  # let every replaced stream end

        sessions: dict[str, list[str]] = {}  # agent id -> "{node_id} {session}" on any node
        for each in nodes:
            node_id = each.coordinator.settings.node_id
            for (
                agent_id,
                session_id,
            ) in each.coordinator.streams.sessions_by_agent().items():
                sessions.setdefault(agent_id, []).append(f"{node_id} {session_id}")
        bad = []
        for agent_id in agent_ids:
            pair = [s for s in streams if s.agent_id == agent_id]
            still_open = [s for s in pair if s.open]
            connection = await redis_client.hget(keys.AGENTS_CONNECTED, agent_id)
            if len(still_open) != 1 or sessions.get(agent_id) != [connection]:
                bad.append((agent_id, len(still_open), connection, sessions.get(agent_id)))
        assert not bad, f"{len(bad)} of {len(agent_ids)} pairs: {bad[:5]}"
        for agent_id in agent_ids:
            pair = [s for s in streams if s.agent_id == agent_id]
            loser = next(s for s in pair if not s.open)
            assert loser.error is not None and loser.error.code() == grpc.StatusCode.ABORTED

        # The stream left open is the one Redis knows: a task pinned to each agent reaches it.
        for agent_id in agent_ids:
            await node.tasks.SubmitTask(
                submit_request(requirements=task_pb2.TaskRequirements(agent_id=agent_id))
            )

        async def all_delivered() -> bool:
            return all(len(s.assignments) == 1 for s in streams if s.open)

        await eventually(all_delivered, timeout_s=20, what="each open stream's pinned task")
    finally:
        for stream in streams:
            await stream.close()


async def test_a_draining_node_refuses_new_streams_and_stops_before_its_grace(start_node):
    node = await start_node(shutdown_grace_s=10.0)
    await node.agents.RegisterAgent(
        agent_pb2.RegisterAgentRequest(agent_id="agent-1", agent_type="worker")
    )
    first = RawStream(node.agents, "agent-1")

    async def ready() -> bool:
        return first.ready

    await eventually(ready, what="the first stream ready")
    loop = asyncio.get_running_loop()
    started = loop.time()
    stopping = asyncio.create_task(node.coordinator.stop())
    # Like the SDK with one address: told to leave, the agent comes back at once.
    await asyncio.wait_for(first.ended.wait(), 5)
    assert first.draining and first.error is None
    second = RawStream(node.agents, "agent-1")
    await asyncio.wait_for(second.ended.wait(), 5)
    assert not second.ready
    assert second.error is not None and second.error.code() == grpc.StatusCode.UNAVAILABLE

    await asyncio.wait_for(stopping, 15)
    assert loop.time() - started < 3.0, "stop() waited for the grace period"


async def test_stopping_a_node_logs_the_close_of_a_stream_once(start_node, caplog):
    caplog.set_level(logging.INFO, logger="coordinator.delivery.streams")
    node = await start_node()
    await node.agents.RegisterAgent(
        agent_pb2.RegisterAgentRequest(agent_id="agent-1", agent_type="worker")
    )
    stream = RawStream(node.agents, "agent-1")

    async def ready() -> bool:
        return stream.ready

    await eventually(ready, what="the stream ready")
    await node.coordinator.stop()
    await asyncio.wait_for(stream.ended.wait(), 5)

    closed = [r for r in caplog.records if r.getMessage() == "assignment stream closed"]
    assert len(closed) == 1


# --------------------------------------------------------------------------- stalled agent

STALL_TIMEOUT_S = 2.0
QUEUE_MAX_BYTES = 1024 * 1024


async def test_an_agent_that_stops_reading_its_stream_loses_it_and_its_work_goes_elsewhere(
    start_node, redis_client, caplog
):
    node = await start_node(
        balancing_strategy="round_robin",
        stream_stall_timeout_s=STALL_TIMEOUT_S,
        stream_queue_max_bytes=QUEUE_MAX_BYTES,
        max_message_bytes=QUEUE_MAX_BYTES,
        max_task_data_bytes=256 * 1024,
        stream_grace_s=1.0,
    )
    worker = await AutoAgent("agent-n", max_concurrency=10).attach(node.channel)
    # Agent S reads its ready event and nothing more, while it heartbeats. Its channel does
    # not probe the bandwidth, so gRPC keeps its window at 64 KiB instead of growing it to
    # tens of MiB: a few assignments fill it, and the test stays small.
    stalled_channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{node.port}", options=[("grpc.http2.bdp_probe", 0)]
    )
    stalled = agent_pb2_grpc.AgentServiceStub(stalled_channel)
    await stalled.RegisterAgent(
        agent_pb2.RegisterAgentRequest(agent_id="agent-s", agent_type="worker", max_concurrency=500)
    )
    call = stalled.StreamAssignments(agent_pb2.StreamAssignmentsRequest(agent_id="agent-s"))
    assert (await call.read()).WhichOneof("event") == "ready"

    async def heartbeat() -> None:
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stalled.Heartbeat(agent_pb2.HeartbeatRequest(agent_id="agent-s"))
            await asyncio.sleep(0.3)

    most_queued = [0, 0]

    async def sample() -> None:
        while True:
            events, size = node.coordinator.streams.queued("agent-s")
            most_queued[0] = max(most_queued[0], events)
            most_queued[1] = max(most_queued[1], size)
            await asyncio.sleep(0.005)

    background = [asyncio.create_task(heartbeat()), asyncio.create_task(sample())]
    try:
        task_ids = []
        for _ in range(10):
            reply = await node.tasks.SubmitTasks(
                task_pb2.SubmitTasksRequest(
                    tasks=[submit_request(data={"blob": "x" * 50_000}) for _ in range(20)]
                )
            )
            assert all(r.task_id for r in reply.results)
            task_ids += [r.task_id for r in reply.results]

        async def stream_ended() -> bool:
            return not await redis_client.hexists(keys.AGENTS_CONNECTED, "agent-s")

        await eventually(stream_ended, STALL_TIMEOUT_S + 4, what="agent-s's stream ended")
        ended_at_ms = int(time.time() * 1000)
        assert "agent-s" not in node.coordinator.streams.sessions_by_agent()

        async def all_completed() -> bool:
            states = [(await get_task(node.tasks, t)).state for t in task_ids]
            assert task_pb2.TASK_STATE_FAILED not in states
            return all(s == task_pb2.TASK_STATE_COMPLETED for s in states)

        await eventually(all_completed, 60, interval_s=0.5, what="every task completed")
        tasks = [await get_task(node.tasks, t) for t in task_ids]
        assert all(t.agent_id == "agent-n" for t in tasks)
        to_stalled = [a for t in tasks for a in t.attempts if a.agent_id == "agent-s"]
        assert to_stalled, "agent-s was never given work: the test did not test anything"
        # Nothing was assigned to S once its stream was ended (100 ms for clocks and rounding).
        assert max(a.assigned_at.ToMilliseconds() for a in to_stalled) <= ended_at_ms + 100
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        call.cancel()
        await worker.close()
        await stalled_channel.close()

    assert most_queued[0] > 0, "nothing was ever queued for agent-s"
    assert most_queued[1] <= QUEUE_MAX_BYTES
    stalls = [r for r in caplog.records if "did not read" in r.getMessage()]
    assert len(stalls) == 1 and stalls[0].agent_id == "agent-s"
