"""Round robin's rotation and the consistent hash ring kept in Redis (``lua/rotation_lib.lua``,
``lua/availability_lib.lua``): the assignment script chooses over every free eligible agent
of a class, not the 16 a snapshot's strategy sees; the ring and the rotations stay exact
through every change of an agent."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import redis.asyncio as aioredis

from coordinator.agents.records import AgentRegistration, AgentStatus
from coordinator.dispatch.balancing import (
    VIRTUAL_POINTS_PER_AGENT,
    BalancerState,
    Candidate,
    choose,
    ring_hash,
)
from coordinator.storage import keys
from coordinator.storage.scripts import TaskScripts
from coordinator.strategies import Strategy
from script_support import LIVENESS_MS, NODE, make_agent, new_task


def candidate(agent_id: str) -> Candidate:
    return Candidate(agent_id, 0, 1, 1.0, {}, frozenset(), None, 1.0, 1.0)


def ring_owner(agent_ids, routing_key: str) -> str:
    """The agent the balancer's own ring of ``agent_ids`` gives ``routing_key``."""
    candidates = [candidate(agent_id) for agent_id in agent_ids]
    chosen = choose(Strategy.CONSISTENT_HASH, candidates, BalancerState(), routing_key=routing_key)
    return chosen.agent_id


async def queued(scripts, redis, *, routing_key="", requirements="{}", cls="c0") -> str:
    """A queued task of class ``cls`` (in partition node-1) with these fields."""
    task_id = await new_task(scripts, requirements_class=f"{cls}@{NODE}")
    await redis.hset(
        keys.task(task_id), mapping={"routing_key": routing_key, "requirements": requirements}
    )
    return task_id


async def chosen(scripts, task_id: str, by: str, node: str = NODE) -> list:
    """assign_task.lua choosing the agent itself (ARGV[7])."""
    return await scripts.assign_task(args=[task_id, "", "nonce", LIVENESS_MS, node, "", by])


async def agents(registry, redis, count: int, **options) -> list[str]:
    ids = [f"agent-{index:03d}" for index in range(count)]
    for agent_id in ids:
        await make_agent(registry, redis, agent_id, **options)
    return ids


async def structures(redis) -> dict[str, dict[str, float]]:
    """Every ring and rotation, as {key: {member: score}}."""
    found = {}
    names = [keys.AGENTS_RING, keys.AGENTS_ROTATION]
    names += await redis.keys(keys.AGENTS_ROTATION_PREFIX + "*")
    for key in names:
        if await redis.exists(key):
            found[key] = dict(await redis.zrange(key, 0, -1, withscores=True))
    return found


async def assert_exact(redis, scripts) -> dict[str, dict[str, float]]:
    """The rings and rotations as the scripts kept them equal those built afresh from the
    records, and each rotation has the members of its available set with a free slot."""
    kept = await structures(redis)
    for key in kept:
        await redis.delete(key)
    await scripts.rebuild_available(args=["force"])
    assert await structures(redis) == kept
    for key, members in kept.items():
        if key.startswith(keys.AGENTS_ROTATION):
            available = key.replace(keys.AGENTS_ROTATION, keys.AGENTS_AVAILABLE, 1)
            assert set(members) == set(await redis.zrangebyscore(available, "-inf", "(1"))
    return kept


async def test_the_ring_in_redis_hashes_as_the_balancer(scripts, registry, redis_client):
    ids = await agents(registry, redis_client, 3, max_concurrency=100)
    ring = dict(await redis_client.zrange(keys.AGENTS_RING, 0, -1, withscores=True))
    assert len(ring) == 3 * VIRTUAL_POINTS_PER_AGENT
    assert all(score == ring_hash(member) for member, score in ring.items())
    for index in range(40):
        key = f"user-{index}"
        reply = await chosen(
            scripts, await queued(scripts, redis_client, routing_key=key), "consistent_hash"
        )
        assert reply[0] == "ok" and reply[4] == ring_owner(ids, key)


async def test_a_key_keeps_its_agent_among_200_and_only_a_leaving_agents_keys_move(
    scripts, registry, redis_client
):
    ids = await agents(registry, redis_client, 200, max_concurrency=1000)
    routing_keys = [f"order-{index}" for index in range(400)]

    async def owners() -> dict[str, str]:
        found = {}
        for key in routing_keys:
            task_id = await queued(scripts, redis_client, routing_key=key)
            found[key] = (await chosen(scripts, task_id, "consistent_hash"))[4]
        return found

    first, again = await owners(), await owners()
    assert first == again == {key: ring_owner(ids, key) for key in routing_keys}
    assert len(set(first.values())) > 150  # over all 200, not the 16 least loaded

    leaving = Counter(first.values()).most_common(1)[0][0]
    await scripts.disconnect_stream(args=[leaving, NODE, f"session-{leaving}"])
    after_close = await owners()
    moved = {key for key in routing_keys if after_close[key] != first[key]}
    assert moved == {key for key in routing_keys if first[key] == leaving}
    assert after_close == {key: ring_owner(set(ids) - {leaving}, key) for key in routing_keys}

    await registry.deregister(leaving)  # off the ring now: the same agents get the keys
    assert await owners() == after_close


async def test_a_full_agent_gives_its_keys_to_the_next_on_the_ring_until_it_frees(
    scripts, registry, redis_client
):
    ids = await agents(registry, redis_client, 30, max_concurrency=1)
    key = "session-7"
    owner = ring_owner(ids, key)
    first = await chosen(
        scripts, await queued(scripts, redis_client, routing_key=key), "consistent_hash"
    )
    second = await chosen(
        scripts, await queued(scripts, redis_client, routing_key=key), "consistent_hash"
    )
    assert first[4] == owner
    assert second[4] == ring_owner(set(ids) - {owner}, key)  # the next clockwise


async def test_round_robin_visits_every_one_of_45_agents_in_45_tasks(
    scripts, registry, redis_client
):
    ids = await agents(registry, redis_client, 45, max_concurrency=10)
    rounds = []
    for _ in range(2):
        rounds.append(
            [
                (await chosen(scripts, await queued(scripts, redis_client), "round_robin"))[4]
                for _ in ids
            ]
        )
    assert rounds == [ids, ids]  # in agent_id order, and again from the first
    assert await redis_client.hget(keys.ROTATION_POSITIONS, "c0") == ids[-1]


async def test_the_rotation_and_the_ring_keep_to_the_class(scripts, registry, redis_client):
    for index in range(40):
        capabilities = ("gpu",) if index % 2 else ("cpu",)
        await registry.register(
            AgentRegistration(
                agent_id=f"agent-{index:03d}",
                agent_type="worker",
                capabilities=capabilities,
                max_concurrency=100,
            )
        )
        await redis_client.set(keys.node_presence(NODE), "1")
        await scripts.connect_stream(args=[f"agent-{index:03d}", NODE, f"s-{index}"])
    gpu = sorted(f"agent-{index:03d}" for index in range(1, 40, 2))
    wants_gpu = json.dumps({"capabilities": ["gpu"]})

    rotated = [
        (
            await chosen(
                scripts,
                await queued(scripts, redis_client, requirements=wants_gpu, cls="g"),
                "round_robin",
            )
        )[4]
        for _ in gpu
    ]
    assert rotated == gpu
    for index in range(30):
        key = f"k-{index}"
        task_id = await queued(
            scripts, redis_client, routing_key=key, requirements=wants_gpu, cls="g"
        )
        assert (await chosen(scripts, task_id, "consistent_hash"))[4] == ring_owner(gpu, key)


async def test_two_nodes_assigning_at_once_share_the_rotation(
    scripts, registry, redis_client, redis_url
):
    ids = await agents(registry, redis_client, 40, max_concurrency=4)
    await redis_client.set(keys.node_presence("node-2"), "1")
    other = aioredis.from_url(redis_url, decode_responses=True)
    try:
        other_scripts = TaskScripts(other)
        tasks = [await queued(scripts, redis_client) for _ in range(160)]

        async def node_assigns(node_scripts, node: str, mine: list[str]) -> list[str]:
            got = []
            for start in range(0, len(mine), 8):  # batches, as passes send them
                replies = await asyncio.gather(
                    *(
                        chosen(node_scripts, task_id, "round_robin", node)
                        for task_id in mine[start : start + 8]
                    )
                )
                got += [reply[4] for reply in replies]
            return got

        one, two = await asyncio.gather(
            node_assigns(scripts, NODE, tasks[0::2]),
            node_assigns(other_scripts, "node-2", tasks[1::2]),
        )
    finally:
        await other.aclose()
    order = [await redis_client.hget(keys.task(task_id), "agent_id") for task_id in tasks]
    assert sorted(one + two) == sorted(order)
    # Each agent 4 of 160, as one node alone would give them: neither node's turns
    # overwrote the other's position.
    assert Counter(one + two) == dict.fromkeys(ids, 4)


async def test_a_walk_that_finds_none_near_stops_and_is_counted(scripts, registry, redis_client):
    # 600 agents whose node is gone (their stream's node no longer present: they stay in
    # the sets until they stop heartbeating), and one that can take the task, after them.
    await agents(registry, redis_client, 600, node="node-gone")
    await redis_client.delete(keys.node_presence("node-gone"))
    await make_agent(registry, redis_client, "zz-live")

    reply = await chosen(scripts, await queued(scripts, redis_client), "round_robin")
    assert reply[0] == "walk_bound"
    assert await redis_client.hget(keys.TASK_STATS, "walk_bound_fallbacks") == "1"


async def test_with_every_agent_full_the_class_has_no_free_agent(scripts, registry, redis_client):
    ids = await agents(registry, redis_client, 2, max_concurrency=1)
    replies = [
        await chosen(scripts, await queued(scripts, redis_client), "round_robin") for _ in range(3)
    ]
    assert [reply[0] for reply in replies] == ["ok", "ok", "no_free_agent"]
    assert [reply[4] for reply in replies[:2]] == ids
    assert await redis_client.zcard(keys.AGENTS_ROTATION) == 0  # full: out of the rotation


async def test_every_change_of_an_agent_keeps_the_ring_and_the_rotations_exact(
    scripts, registry, redis_client
):
    points = VIRTUAL_POINTS_PER_AGENT
    gpu_rotation = keys.AGENTS_ROTATION_PREFIX + keys.capability_index("gpu")
    await registry.register(
        AgentRegistration(agent_id="a", agent_type="w", capabilities=("gpu",), max_concurrency=2)
    )
    kept = await assert_exact(redis_client, scripts)
    assert len(kept[keys.AGENTS_RING]) == points and keys.AGENTS_ROTATION not in kept
    await make_agent(registry, redis_client, "b")
    await scripts.connect_stream(args=["a", NODE, "s-a"])
    kept = await assert_exact(redis_client, scripts)
    assert kept[gpu_rotation] == {"a": 0.0} and set(kept[keys.AGENTS_ROTATION]) == {"a", "b"}
    assert len(kept[keys.AGENTS_RING]) == 2 * points

    first = await queued(scripts, redis_client)
    assert (await chosen(scripts, first, "round_robin"))[4] == "a"
    second = await queued(scripts, redis_client)
    assert (await chosen(scripts, second, "round_robin"))[4] == "b"  # b is full now
    assert set((await assert_exact(redis_client, scripts))[keys.AGENTS_ROTATION]) == {"a"}
    token = await redis_client.hget(keys.task(second), "fencing_token")
    await scripts.report_task(args=[second, "b", token, "complete", "{}"])  # b is free again
    assert set((await assert_exact(redis_client, scripts))[keys.AGENTS_ROTATION]) == {"a", "b"}

    await registry.update_status("a", AgentStatus.MAINTENANCE, {}, "test")
    assert set((await assert_exact(redis_client, scripts))[keys.AGENTS_ROTATION]) == {"b"}
    await registry.update_status("a", AgentStatus.ACTIVE, {}, "test")
    await registry.register(  # re-registered without gpu: out of the gpu rotation
        AgentRegistration(agent_id="a", agent_type="w", capabilities=("cpu",), max_concurrency=2)
    )
    kept = await assert_exact(redis_client, scripts)
    assert gpu_rotation not in kept and len(kept[keys.AGENTS_RING]) == 2 * points
    assert kept[keys.AGENTS_ROTATION_PREFIX + keys.capability_index("cpu")] == {"a": 0.0}

    await scripts.disconnect_stream(args=["a", NODE, "s-a"])
    kept = await assert_exact(redis_client, scripts)
    assert set(kept[keys.AGENTS_ROTATION]) == {"b"} and len(kept[keys.AGENTS_RING]) == 2 * points
    await scripts.connect_stream(args=["a", NODE, "s-a2"])
    await redis_client.zadd(keys.AGENTS_HEARTBEATS, {"a": 0})  # stale: the sweep takes it out
    assert await registry.sweep_stale() == ["a"]
    assert set((await assert_exact(redis_client, scripts))[keys.AGENTS_ROTATION]) == {"b"}
    await registry.heartbeat("a", {}, None)
    assert "a" in (await assert_exact(redis_client, scripts))[keys.AGENTS_ROTATION]

    await registry.deregister("a")
    kept = await assert_exact(redis_client, scripts)
    assert set(kept[keys.AGENTS_ROTATION]) == {"b"} and len(kept[keys.AGENTS_RING]) == points
    assert not any(member.startswith("a#") for member in kept[keys.AGENTS_RING])


async def test_a_redis_from_before_gets_its_ring_built_once(scripts, registry, redis_client):
    await make_agent(registry, redis_client, "a", streaming=False)
    ring = await redis_client.zrange(keys.AGENTS_RING, 0, -1, withscores=True)
    await redis_client.delete(keys.AGENTS_RING)
    assert await scripts.rebuild_available(args=[""]) == 0  # no stream open: none available
    assert await redis_client.zrange(keys.AGENTS_RING, 0, -1, withscores=True) == ring
    assert await scripts.rebuild_available(args=[""]) == -1
