"""``agents:available`` and its per-index sets (``lua/availability_lib.lua``): kept exact by
every script that changes an agent's status, liveness, stream or slots; built once for a
Redis from before them; and what a dispatch snapshot reads instead of every agent: a class
that one agent of a thousand fits still finds it."""

from __future__ import annotations

import asyncio
import json

from agent_harness import submit_request
from aitbc.coordinator.v1 import task_pb2
from coordinator.agents.records import AgentRegistration, AgentStatus
from coordinator.agents.registry import AgentRegistry
from coordinator.config import Settings
from coordinator.dispatch.script_calls import DispatchSnapshotCall
from coordinator.storage import keys
from coordinator.storage.scripts import TaskScripts
from script_support import NODE, assign, make_agent, new_task, report


async def available_sets(redis) -> dict[str, dict[str, float]]:
    """Every available set, as {key: {agent_id: score}}."""
    found = {}
    for key in [keys.AGENTS_AVAILABLE, *await redis.keys(keys.AGENTS_AVAILABLE_PREFIX + "*")]:
        if await redis.exists(key):
            found[key] = dict(await redis.zrange(key, 0, -1, withscores=True))
    return found


async def assert_exact(redis, scripts) -> dict[str, dict[str, float]]:
    """The sets as the scripts kept them equal the sets rebuilt from the records."""
    kept = await available_sets(redis)
    await scripts.rebuild_available(args=["force"])
    assert kept == await available_sets(redis)
    return kept


async def test_every_change_of_an_agent_keeps_the_available_sets_exact(
    scripts, registry, redis_client
):
    gpu = keys.available_in(keys.capability_index("gpu"))
    await registry.register(
        AgentRegistration(agent_id="a", agent_type="w", capabilities=("gpu",), max_concurrency=2)
    )
    assert await assert_exact(redis_client, scripts) == {}  # no stream open yet
    await make_agent(registry, redis_client, "b", max_concurrency=1)
    await redis_client.set(keys.node_presence(NODE), "1")
    await scripts.connect_stream(args=["a", NODE, "s-a"])
    sets = await assert_exact(redis_client, scripts)
    assert sets[keys.AGENTS_AVAILABLE] == {"a": 0.0, "b": 0.0} and sets[gpu] == {"a": 0.0}

    task_id = await new_task(scripts)
    assert (await assign(scripts, task_id, "a"))[0] == "ok"
    sets = await assert_exact(redis_client, scripts)
    assert sets[keys.AGENTS_AVAILABLE]["a"] == 0.5 and sets[gpu] == {"a": 0.5}
    token = await redis_client.hget(keys.task(task_id), "fencing_token")
    assert (await report(scripts, task_id, "a", token, "complete", "{}"))[0] == "ok"
    assert (await assert_exact(redis_client, scripts))[gpu] == {"a": 0.0}

    full = await new_task(scripts)
    assert (await assign(scripts, full, "b"))[0] == "ok"  # full: scored 1, no free slot
    assert (await assert_exact(redis_client, scripts))[keys.AGENTS_AVAILABLE]["b"] == 1.0

    await registry.update_status("a", AgentStatus.MAINTENANCE, {}, "test")
    assert "a" not in (await assert_exact(redis_client, scripts))[keys.AGENTS_AVAILABLE]
    await registry.update_status("a", AgentStatus.ACTIVE, {}, "test")
    await registry.register(  # re-registered without gpu: out of the gpu set
        AgentRegistration(agent_id="a", agent_type="w", capabilities=("cpu",), max_concurrency=2)
    )
    sets = await assert_exact(redis_client, scripts)
    assert gpu not in sets and sets[keys.available_in(keys.capability_index("cpu"))] == {"a": 0}

    await scripts.disconnect_stream(args=["a", NODE, "s-a"])
    assert "a" not in (await assert_exact(redis_client, scripts))[keys.AGENTS_AVAILABLE]
    await scripts.connect_stream(args=["a", NODE, "s-a2"])
    await redis_client.zadd(keys.AGENTS_HEARTBEATS, {"a": 0})  # stale: the sweep takes it out
    assert await registry.sweep_stale() == ["a"]
    assert "a" not in (await assert_exact(redis_client, scripts))[keys.AGENTS_AVAILABLE]
    await registry.heartbeat("a", {}, None)  # back in agents:active, and available again
    assert "a" in (await assert_exact(redis_client, scripts))[keys.AGENTS_AVAILABLE]

    await registry.deregister("a")
    sets = await assert_exact(redis_client, scripts)
    assert list(sets[keys.AGENTS_AVAILABLE]) == ["b"]
    assert not await redis_client.exists(keys.available_in(keys.capability_index("cpu")))


async def test_a_redis_from_before_gets_the_sets_built_once(scripts, registry, redis_client):
    await make_agent(registry, redis_client, "a")
    kept = await available_sets(redis_client)
    for key in kept:  # as a Redis written by a coordinator without them
        await redis_client.delete(key)

    assert await scripts.rebuild_available(args=[""]) == 1
    assert await available_sets(redis_client) == kept
    assert await scripts.rebuild_available(args=[""]) == -1  # built already: left alone
    await scripts.disconnect_stream(args=["a", NODE, "session-a"])
    assert await available_sets(redis_client) == {}
    assert await scripts.rebuild_available(args=[""]) == -1  # no stream open: none needed


async def test_a_node_builds_them_at_start(start_node, redis_client, pool):
    node = await start_node()
    await pool.start(node.channel, "agent-1")
    await redis_client.delete(keys.AGENTS_AVAILABLE)
    await node.coordinator.dispatcher.stop()
    node.coordinator.dispatcher._available_built = False  # as a node starting now
    node.coordinator.dispatcher.start()

    for _ in range(100):
        if await redis_client.exists(keys.AGENTS_AVAILABLE):
            break
        await asyncio.sleep(0.05)
    assert await redis_client.zrange(keys.AGENTS_AVAILABLE, 0, -1) == ["agent-1"]


def requirements(**fields) -> str:
    base = {
        "agent_type": "",
        "capabilities": [],
        "services": [],
        "labels": {},
        "agent_id": "",
        "min_health_score": 0.0,
        "preferred_capabilities": [],
    }
    return json.dumps({**base, **fields})


async def snapshot_agents(scripts, **call) -> list[str]:
    reply = await scripts.dispatch_snapshot(args=DispatchSnapshotCall(**call).args())
    return [row[0] for row in reply[4]]


async def test_a_snapshot_reads_the_least_loaded_few_and_finds_the_rare_one(
    scripts, registry, redis_client
):
    await redis_client.set(keys.node_presence(NODE), "1")
    for i in range(1000):
        capabilities = ("x",) if i == 617 else ()
        agent_id = f"agent-{i:04d}"
        await registry.register(
            AgentRegistration(
                agent_id=agent_id, agent_type="w", capabilities=capabilities, max_concurrency=1
            )
        )
        await scripts.connect_stream(args=[agent_id, NODE, "s"])
    anyone = await new_task(scripts, requirements_class="any")
    await redis_client.hset(keys.task(anyone), "requirements", requirements())
    rare = await new_task(scripts, requirements_class="x")
    await redis_client.hset(keys.task(rare), "requirements", requirements(capabilities=["x"]))

    read = await snapshot_agents(scripts, agents_beyond_tasks=20)

    assert "agent-0617" in read  # the only one with x, whatever its place by load
    assert len(read) <= 1 + 20 + 1  # the class "any": 1 task + 20; x: its only agent
    view = await snapshot_agents(
        scripts, turn_action="view", heads_per_class=0, agents_beyond_tasks=50
    )
    assert 50 <= len(view) <= 52  # the 50 least loaded, and the classes waiting' own


async def test_one_agent_of_a_thousand_with_the_capability_gets_the_task(
    start_node, pool, redis_client
):
    node = await start_node()
    scripts = TaskScripts(redis_client)
    registry = AgentRegistry(redis_client, Settings(liveness_timeout_s=60))
    node_id = node.coordinator.settings.node_id
    for i in range(999):  # idle, less loaded than none, and without x
        await registry.register(
            AgentRegistration(agent_id=f"idle-{i:04d}", agent_type="w", max_concurrency=4)
        )
        await scripts.connect_stream(args=[f"idle-{i:04d}", node_id, "s"])
    rare = await pool.start(node.channel, "zz-the-only-x", capabilities=("x",))

    reply = await node.tasks.SubmitTask(
        submit_request(requirements=task_pb2.TaskRequirements(capabilities=["x"]))
    )

    assignment = await rare.next_assignment()
    assert assignment.task_id == reply.task.task_id


async def test_reads_of_idle_agents_start_where_the_spread_says(scripts, registry, redis_client):
    await redis_client.set(keys.node_presence(NODE), "1")
    for i in range(100):
        await make_agent(registry, redis_client, f"agent-{i:03d}")
    await make_agent(registry, redis_client, "busy", max_concurrency=2)
    assert (await assign(scripts, await new_task(scripts), "busy"))[0] == "ok"  # load 0.5
    view = {"turn_action": "view", "heads_per_class": 0, "agents_beyond_tasks": 10}

    first = await snapshot_agents(scripts, **view)
    middle = await snapshot_agents(scripts, **view, spread=0.5)
    last = await snapshot_agents(scripts, **view, spread=0.999)

    assert first == [f"agent-{i:03d}" for i in range(10)]
    assert middle == [f"agent-{i:03d}" for i in range(45, 55)]  # int(0.5 x 91) = 45
    assert last == [f"agent-{i:03d}" for i in range(90, 100)]  # the band's last, not busy
