"""Dispatch partitions across nodes: each node queues the tasks it accepts in its own
partition and passes over them in its own turn, so nodes pass at the same time without
waiting for each other; least connections keeps an assignment on the node that made it
when an agent there is within one task of the least loaded. Nothing a node queued waits
for that node when it is gone."""

from __future__ import annotations

import asyncio
from collections import Counter

from test_dispatch_turns import LONG_TIMER

from agent_harness import eventually, submit_request
from coordinator.agents.records import AgentRecord, AgentStatus
from coordinator.dispatch.slots import AgentSlots
from coordinator.storage import keys


def record(agent_id: str, active_tasks: int, max_concurrency: int = 4) -> AgentRecord:
    return AgentRecord(
        agent_id=agent_id,
        agent_type="worker",
        capabilities=(),
        services=(),
        endpoints={},
        metadata={},
        labels={},
        max_concurrency=max_concurrency,
        weight=1.0,
        status=AgentStatus.ACTIVE,
        stored_status=AgentStatus.ACTIVE,
        health_score=1.0,
        load_metrics={},
        active_tasks=active_tasks,
        registered_at_ms=0,
        last_heartbeat_at_ms=0,
        node_id="",
        status_reason="",
    )


def least_loaded(agents: list[AgentRecord], here=None) -> list[str]:
    slots = AgentSlots({a.agent_id: a for a in agents})
    return [c.agent_id for c in slots.candidates("c0", agents, here)]


def test_least_connections_keeps_an_assignment_on_its_node_within_one_task():
    here = {"local-1", "local-2"}.__contains__
    idle_there = record("remote", 0)
    one_more = record("local-1", 1)  # 1 of 4: one task above the least loaded
    two_more = record("local-2", 2)

    assert least_loaded([idle_there, one_more, two_more], here) == ["local-1", "local-2"]
    # Two tasks above the least loaded: every agent, least loaded first, as with no nodes.
    assert least_loaded([idle_there, two_more], here) == ["remote", "local-2"]
    assert least_loaded([idle_there], here) == ["remote"]
    # Relative to its own slots: 5 of 100 is within one task of 4 of 100.
    assert least_loaded([record("remote", 4, 100), record("local-1", 5, 100)], here) == ["local-1"]


def test_among_many_idle_agents_each_node_chooses_its_own():
    """The least loaded of all are not a sample of the nodes (ties go by agent_id): with a
    thousand idle agents, the ones streaming here are still found."""
    agents = [record(f"agent-{i:04}", 0) for i in range(1000)]
    on_the_second = {f"agent-{i:04}" for i in range(500, 1000)}.__contains__

    chosen = least_loaded(agents, on_the_second)

    assert len(chosen) == 16 and all(on_the_second(a) for a in chosen)
    assert least_loaded(agents)[0] == "agent-0000"  # without a node: the least loaded of all


async def test_each_node_queues_in_its_own_partition_and_its_agents_take_its_tasks(
    start_node, pool, redis_client
):
    first = await start_node(node_id="node-a", **LONG_TIMER)
    second = await start_node(node_id="node-b", **LONG_TIMER)
    here = await pool.start(first.channel, "agent-here", max_concurrency=10)
    await pool.start(second.channel, "agent-there", max_concurrency=10)
    for agent_id, node_id in (("agent-here", "node-a"), ("agent-there", "node-b")):
        await eventually(
            lambda a=agent_id, n=node_id: _streams_on(redis_client, a, n), what="streams open"
        )

    submitted = [(await first.tasks.SubmitTask(submit_request())).task for _ in range(6)]
    received = [await here.next_assignment(timeout_s=5) for _ in range(4)]

    # Within one task of the least loaded, node-a's own agent: 4 of 6 (without it, 3 of 6,
    # every assignment's message over pub/sub to node-b for half of them).
    assert {r.task_id for r in received} < {t.task_id for t in submitted}
    records = [await redis_client.hget(keys.task(t.task_id), "class") for t in submitted]
    assert all(r.endswith("@node-a") for r in records)  # node-a's partition
    agents = Counter([await redis_client.hget(keys.task(t.task_id), "agent_id") for t in submitted])
    assert agents == {"agent-here": 4, "agent-there": 2}


async def test_a_gone_nodes_queued_tasks_are_passed_by_another(start_node, pool, redis_client):
    gone = await start_node(node_id="node-gone", **LONG_TIMER)
    task = (await gone.tasks.SubmitTask(submit_request())).task  # no agent yet: it waits
    await gone.coordinator.stop(grace_s=0)
    await redis_client.delete(keys.node_presence("node-gone"))
    other = await start_node(node_id="node-other", task_timer_interval_s=0.1)
    agent = await pool.start(other.channel, "agent-1")

    # Well before a turn left held would expire (5 s).
    assert (await agent.next_assignment(timeout_s=2)).task_id == task.task_id


async def test_two_nodes_pass_their_own_partitions_without_waiting(start_node, pool, redis_client):
    nodes = [await start_node(node_id=f"node-{i}", **LONG_TIMER) for i in range(2)]
    agents = [
        await pool.start(n.channel, f"agent-{i}", max_concurrency=5) for i, n in enumerate(nodes)
    ]
    tasks = 40

    async def submit_and_complete(i: int) -> None:
        for _ in range(tasks // 2):
            await nodes[i].tasks.SubmitTask(submit_request())

    async def work(agent) -> int:
        done = 0
        try:
            while True:
                await agent.complete(await agent.next_assignment(timeout_s=2))
                done += 1
        except TimeoutError:
            return done

    workers = [asyncio.create_task(work(a)) for a in agents]
    await asyncio.gather(*(submit_and_complete(i) for i in range(2)))
    assert sum(await asyncio.gather(*workers)) == tasks
    stats = await redis_client.hgetall(keys.TASK_STATS)
    assert int(stats["tasks_completed"]) == tasks


async def _streams_on(redis_client, agent_id: str, node_id: str) -> bool:
    connection = await redis_client.hget(keys.AGENTS_CONNECTED, agent_id)
    return bool(connection) and connection.split()[0] == node_id
