"""Tasks across coordinator nodes that share one Redis: a task submitted and reported on one
node is run by an agent streaming from another, whose WatchTask sees every transition (even
when that node falls behind), and a burst of tasks submitted through three nodes to ten
agents is completed exactly once each, without any agent ever holding more tasks than it has
slots, with the same statistics on every node."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import time

import grpc
import redis.asyncio as aioredis

from agent_harness import AutoAgent, ScriptedAgent, submit_request
from aitbc.coordinator.v1 import agent_pb2, agent_pb2_grpc, task_pb2, task_pb2_grpc
from coordinator.config import load_settings
from coordinator.storage import keys
from script_support import tasks_in_state

PENDING = task_pb2.TASK_STATE_PENDING
ASSIGNED = task_pb2.TASK_STATE_ASSIGNED
RUNNING = task_pb2.TASK_STATE_RUNNING
COMPLETED = task_pb2.TASK_STATE_COMPLETED

FAST_ENV = {
    "COORDINATOR_HEARTBEAT_INTERVAL_S": "0.5",
    "COORDINATOR_LIVENESS_TIMEOUT_S": "2",
    "COORDINATOR_STREAM_GRACE_S": "1",
    "COORDINATOR_TASK_TIMER_INTERVAL_S": "0.1",
    "COORDINATOR_SWEEP_INTERVAL_S": "0.2",
    "COORDINATOR_HEALTH_CHECK_INTERVAL_S": "0.2",
    "COORDINATOR_REDIS_TIMEOUT_S": "1",
}
"""Short timers for subprocess nodes (the configuration validation accepts them)."""

FAST_SETTINGS = {
    "heartbeat_interval_s": 0.5,
    "liveness_timeout_s": 2.0,
    "stream_grace_s": 1.0,
    "task_timer_interval_s": 0.1,
}
"""The same for in-process nodes."""

TASK_COUNT = 2000
AGENT_SLOTS = (1, 2, 3, 1, 2, 3, 1, 2, 3, 2)
"""max_concurrency of the ten agents of the load test."""


def test_fast_timings_pass_the_configuration_validation():
    settings = load_settings({"REDIS_URL": "redis://127.0.0.1:1/1", **FAST_ENV})
    assert (settings.heartbeat_interval_s, settings.liveness_timeout_s) == (0.5, 2.0)
    assert (settings.stream_grace_s, settings.task_timer_interval_s) == (1.0, 0.1)


async def next_watch(call, timeout_s: float = 10.0) -> task_pb2.Task:
    message = await asyncio.wait_for(call.read(), timeout_s)
    assert message is not grpc.aio.EOF, "WatchTask ended early"
    return message.task


async def test_task_submitted_on_one_node_is_run_through_another_and_watched_there(start_node):
    node_a = await start_node(node_id="node-a", **FAST_SETTINGS)
    node_b = await start_node(node_id="node-b", **FAST_SETTINGS)

    submitted = (await node_a.tasks.SubmitTask(submit_request(data={"x": 7}))).task
    watch = node_b.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=submitted.task_id))
    seen = [await next_watch(watch)]
    assert seen[0].state == PENDING

    # The agent registers and streams on B; the assignment reaches it there.
    agent = await ScriptedAgent(node_b.channel, "agent-b").start()
    try:
        assignment = await agent.next_assignment()
        assert (assignment.task_id, assignment.attempt) == (submitted.task_id, 1)
        seen.append(await next_watch(watch))
        assert (seen[-1].state, seen[-1].agent_id) == (ASSIGNED, "agent-b")

        # Its reports go through A; B's watch sees each transition.
        await node_a.tasks.AcknowledgeTask(
            task_pb2.AcknowledgeTaskRequest(
                task_id=assignment.task_id,
                agent_id="agent-b",
                fencing_token=assignment.fencing_token,
            )
        )
        seen.append(await next_watch(watch))
        assert seen[-1].state == RUNNING
        await node_a.tasks.CompleteTask(
            task_pb2.CompleteTaskRequest(
                task_id=assignment.task_id,
                agent_id="agent-b",
                fencing_token=assignment.fencing_token,
            )
        )
        seen.append(await next_watch(watch))
        assert seen[-1].state == COMPLETED
        # A final state ends the watch.
        assert await asyncio.wait_for(watch.read(), 5) is grpc.aio.EOF
    finally:
        await agent.stop()

    assert [t.state for t in seen] == [PENDING, ASSIGNED, RUNNING, COMPLETED]
    assert [t.state for t in seen[-1].transitions] == [PENDING, ASSIGNED, RUNNING, COMPLETED]
    assert [len(t.transitions) for t in seen] == [1, 2, 3, 4]


async def test_a_watch_whose_node_falls_behind_still_gets_every_transition(spawn_node, channel_to):
    node_a, node_b = (spawn_node(env={"NODE_ID": f"watch-{n}", **FAST_ENV}) for n in "ab")
    node_a.wait_serving()
    node_b.wait_serving()
    tasks_a = task_pb2_grpc.TaskServiceStub(channel_to(node_a))
    tasks_b = task_pb2_grpc.TaskServiceStub(channel_to(node_b))

    submitted = (await tasks_a.SubmitTask(submit_request())).task
    watch = tasks_b.WatchTask(task_pb2.WatchTaskRequest(task_id=submitted.task_id))
    seen = [await next_watch(watch)]
    agent = await ScriptedAgent(channel_to(node_b), "agent-b").start()
    try:
        assignment = await agent.next_assignment()
        seen.append(await next_watch(watch))
        assert seen[-1].state == ASSIGNED

        # B stops for a moment (a long pause, a busy host) while the agent reports through
        # A, quickly, as agents do: B's watch must still send each transition on its own.
        node_b.signal(signal.SIGSTOP)
        try:
            report = {
                "task_id": assignment.task_id,
                "agent_id": "agent-b",
                "fencing_token": assignment.fencing_token,
            }
            await tasks_a.AcknowledgeTask(task_pb2.AcknowledgeTaskRequest(**report))
            await tasks_a.CompleteTask(task_pb2.CompleteTaskRequest(**report))
        finally:
            node_b.signal(signal.SIGCONT)
        while (message := await asyncio.wait_for(watch.read(), 10)) is not grpc.aio.EOF:
            seen.append(message.task)
    finally:
        await agent.stop()

    assert [t.state for t in seen] == [PENDING, ASSIGNED, RUNNING, COMPLETED]
    assert [len(t.transitions) for t in seen] == [1, 2, 3, 4]
    assert [t.state for t in seen[-1].transitions] == [PENDING, ASSIGNED, RUNNING, COMPLETED]
    running = seen[2]
    assert (running.attempt, running.agent_id, running.HasField("result")) == (1, "agent-b", False)


class SlotWatch:
    """Samples every agent's active_tasks in Redis and through GetAgent while a test runs,
    keeping the highest value seen per agent, until ``stop``.

    It is stopped by a flag, not by cancelling it: a cancellation that lands inside a Redis
    pipeline or a gRPC call can be swallowed there (seen about once in 25 runs on a busy
    machine), and the sampler then ran on while the test waited for it forever."""

    def __init__(
        self,
        redis_client: aioredis.Redis,
        agents: list[agent_pb2_grpc.AgentServiceStub],
        agent_ids: list[str],
    ) -> None:
        self._redis = redis_client
        self._agents = agents
        self._agent_ids = agent_ids
        self.in_redis: dict[str, int] = collections.defaultdict(int)
        self.via_get_agent: dict[str, int] = collections.defaultdict(int)
        self.samples = 0
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        rounds = 0
        while not self._stopping.is_set():
            async with self._redis.pipeline(transaction=False) as pipe:
                for agent_id in self._agent_ids:
                    pipe.hget(keys.agent(agent_id), "active_tasks")
                values = await pipe.execute()
            for agent_id, value in zip(self._agent_ids, values, strict=True):
                self.in_redis[agent_id] = max(self.in_redis[agent_id], int(value or 0))
            if rounds % 10 == 0:
                stub = self._agents[rounds // 10 % len(self._agents)]
                for agent_id in self._agent_ids:
                    reply = await stub.GetAgent(agent_pb2.GetAgentRequest(agent_id=agent_id))
                    self.via_get_agent[agent_id] = max(
                        self.via_get_agent[agent_id], reply.agent.active_tasks
                    )
            rounds += 1
            self.samples += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.02)


async def test_two_thousand_tasks_through_three_nodes_complete_exactly_once(
    spawn_node, channel_to, redis_client, capsys
):
    processes = [spawn_node(env={"NODE_ID": f"load-{i}", **FAST_ENV}) for i in range(3)]
    for process in processes:
        process.wait_serving()
    channels = [channel_to(p) for p in processes]
    task_stubs = [task_pb2_grpc.TaskServiceStub(c) for c in channels]
    agent_stubs = [agent_pb2_grpc.AgentServiceStub(c) for c in channels]

    workers = [
        AutoAgent(f"agent-{i}", max_concurrency=slots) for i, slots in enumerate(AGENT_SLOTS)
    ]
    for i, worker in enumerate(workers):
        await worker.attach(channels[i % 3])
    slot_watch = SlotWatch(redis_client, agent_stubs, [w.agent_id for w in workers])
    sampler = asyncio.create_task(slot_watch.run())

    started = time.monotonic()
    limit = asyncio.Semaphore(64)

    async def submit(n: int) -> str:
        async with limit:
            reply = await task_stubs[n % 3].SubmitTask(submit_request(data={"n": n}), timeout=10)
            return reply.task.task_id

    try:
        task_ids = await asyncio.gather(*(submit(n) for n in range(TASK_COUNT)))
        submitted_s = time.monotonic() - started
        assert len(set(task_ids)) == TASK_COUNT

        deadline = time.monotonic() + 60
        while sum(len(w.completed) for w in workers) < TASK_COUNT or not all(
            w.idle for w in workers
        ):
            assert time.monotonic() < deadline, (
                f"{sum(len(w.completed) for w in workers)} of {TASK_COUNT} completed in 60 s"
            )
            await asyncio.sleep(0.05)
        elapsed_s = time.monotonic() - started
    finally:
        slot_watch.stop()
        await asyncio.wait_for(sampler, 30)
        for worker in workers:
            await worker.close()

    with capsys.disabled():
        print(
            f"\n{TASK_COUNT} tasks, 3 nodes, {len(workers)} agents: submitted in "
            f"{submitted_s:.1f} s, all completed in {elapsed_s:.1f} s "
            f"({TASK_COUNT / elapsed_s:.0f} tasks/s); {slot_watch.samples} slot samples"
        )

    # Every task completed once, by one agent; nothing refused, nothing delivered twice.
    completions = collections.Counter(task_id for w in workers for task_id, _ in w.completed)
    assert set(completions) == set(task_ids)
    assert [t for t, count in completions.items() if count > 1] == []
    assert all(attempt == 1 for w in workers for _, attempt in w.completed)
    assert [(w.agent_id, w.refused) for w in workers if w.refused] == []
    assert [(w.agent_id, w.redelivered) for w in workers if w.redelivered] == []
    assert [(w.agent_id, w.cancels) for w in workers if w.cancels] == []
    assert await tasks_in_state(redis_client, "COMPLETED") == TASK_COUNT

    # No agent ever held more than its slots, by its own count or the coordinator's.
    for worker in workers:
        assert 1 <= worker.max_holding <= worker.max_concurrency, worker.agent_id
        assert slot_watch.in_redis[worker.agent_id] <= worker.max_concurrency, worker.agent_id
        assert slot_watch.via_get_agent[worker.agent_id] <= worker.max_concurrency
    assert any(w.max_holding == w.max_concurrency > 1 for w in workers), "slots never filled"

    # Every slot is free again, seen through every node.
    for stub in agent_stubs:
        for worker in workers:
            agent = (await stub.GetAgent(agent_pb2.GetAgentRequest(agent_id=worker.agent_id))).agent
            assert agent.active_tasks == 0, worker.agent_id

    # The statistics live in Redis: every node answers the same.
    stats = [await stub.GetStats(task_pb2.GetStatsRequest()) for stub in task_stubs]
    first = stats[0]
    assert (first.tasks_submitted, first.tasks_distributed, first.tasks_completed) == (
        TASK_COUNT,
        TASK_COUNT,
        TASK_COUNT,
    )
    assert (first.tasks_failed, first.tasks_cancelled, first.tasks_expired) == (0, 0, 0)
    per_agent = dict(first.load_balancer_stats.assignments_per_agent)
    assert per_agent == {w.agent_id: len(w.completed) for w in workers}
    assert first.load_balancer_stats.total_assignments == TASK_COUNT
    for other in stats[1:]:
        assert other == first
