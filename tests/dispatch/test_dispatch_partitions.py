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
from coordinator.storage import keys


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

    assert (await agent.next_assignment(timeout_s=5)).task_id == task.task_id


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
