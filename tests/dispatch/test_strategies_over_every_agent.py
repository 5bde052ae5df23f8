"""Round robin and consistent hash through a real node's passes, over more free eligible
agents than a strategy sees in a snapshot (``slots.CANDIDATES_PER_TASK``): the assignment
script chooses from the rotation and the ring kept in Redis (``lua/rotation_lib.lua``), and
the node falls back to its own choice when the script finds no agent near."""

from __future__ import annotations

import asyncio
from collections import Counter

from agent_harness import submit_request, wait_for_state
from aitbc.coordinator.v1 import task_pb2
from coordinator.agents.registry import AgentRegistry
from coordinator.config import Settings
from coordinator.dispatch.balancing import BalancerState, Candidate, choose
from coordinator.dispatch.slots import CANDIDATES_PER_TASK
from coordinator.storage import keys
from coordinator.storage.scripts import TaskScripts
from coordinator.strategies import Strategy
from script_support import make_agent

S = task_pb2.BalancingStrategy


async def agents(redis_client, count: int, max_concurrency: int) -> list[str]:
    """``count`` registered agents, streaming from a live node (not this one: the
    assignments are published to it; the tasks are ASSIGNED all the same)."""
    registry = AgentRegistry(redis_client, Settings())
    ids = [f"agent-{index:03d}" for index in range(count)]
    for agent_id in ids:
        await make_agent(registry, redis_client, agent_id, max_concurrency=max_concurrency)
    return ids


async def assigned_to(node, **fields) -> str:
    task = (await node.tasks.SubmitTask(submit_request(**fields))).task
    return (await wait_for_state(node.tasks, task.task_id, task_pb2.TASK_STATE_ASSIGNED)).agent_id


async def test_round_robin_gives_n_tasks_to_n_agents_beyond_a_snapshots_few(node, redis_client):
    ids = await agents(redis_client, 3 * CANDIDATES_PER_TASK, max_concurrency=4)
    for index, agent_id in enumerate(ids):  # loaded unevenly: round robin pays no heed
        await redis_client.hset(keys.agent(agent_id), "active_tasks", index % 2)
    await TaskScripts(redis_client).rebuild_available(args=["force"])
    strategy = S.Value("BALANCING_STRATEGY_ROUND_ROBIN")

    chosen = [await assigned_to(node, balancing_strategy=strategy) for _ in range(2 * len(ids))]

    assert chosen == ids + ids


async def test_consistent_hash_keeps_each_key_on_its_agent_among_all_of_them(node, redis_client):
    ids = await agents(redis_client, 3 * CANDIDATES_PER_TASK, max_concurrency=100)
    strategy = S.Value("BALANCING_STRATEGY_CONSISTENT_HASH")
    candidates = [Candidate(a, 0, 1, 1.0, {}, frozenset(), None, 1.0, 1.0) for a in ids]
    routing_keys = [f"user-{index}" for index in range(40)]

    for _ in range(2):
        for key in routing_keys:
            ring = choose(Strategy.CONSISTENT_HASH, candidates, BalancerState(), routing_key=key)
            got = await assigned_to(node, balancing_strategy=strategy, routing_key=key)
            assert got == ring.agent_id


async def test_a_walk_that_finds_none_near_falls_back_to_the_nodes_choice(node, redis_client):
    # 600 agents whose node is gone, before the one that can take the task: the script's
    # walk stops at its bound; the snapshot skips them, and the node chooses the live one.
    registry = AgentRegistry(redis_client, Settings())
    for index in range(600):
        await make_agent(registry, redis_client, f"agent-{index:03d}", node="node-gone")
    await redis_client.delete(keys.node_presence("node-gone"))
    await make_agent(registry, redis_client, "zz-live")

    got = await assigned_to(node, balancing_strategy=S.Value("BALANCING_STRATEGY_ROUND_ROBIN"))

    assert got == "zz-live"
    assert await redis_client.hget(keys.TASK_STATS, "walk_bound_fallbacks") == "1"


async def test_two_nodes_passing_at_once_share_one_rotation(start_node, redis_client):
    nodes = [await start_node(node_id="node-a"), await start_node(node_id="node-b")]
    ids = await agents(redis_client, 3 * CANDIDATES_PER_TASK, max_concurrency=3)
    strategy = S.Value("BALANCING_STRATEGY_ROUND_ROBIN")

    # Each node queues its half in its own partition and passes over it at the same time.
    chosen = await asyncio.gather(
        *(assigned_to(nodes[i % 2], balancing_strategy=strategy) for i in range(2 * len(ids)))
    )

    # Two tasks for each agent: neither node's passes went back over the other's part of
    # the rotation.
    assert Counter(chosen) == dict.fromkeys(ids, 2)
