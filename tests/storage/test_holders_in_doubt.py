"""``lua/holders_in_doubt.lua``: of the agents holding tasks, only those the reaper must look
at come back (a round costs the node nothing per agent that is plainly well)."""

from __future__ import annotations

from coordinator.storage import keys
from script_support import LIVENESS_MS, assign, make_agent, new_task


async def holding(scripts, registry, redis, agent_id, node="node-1") -> None:
    await make_agent(registry, redis, agent_id, node=node)
    assert (await assign(scripts, await new_task(scripts), agent_id))[0] == "ok"


async def test_only_the_holders_in_doubt_come_back(scripts, registry, redis_client):
    for agent_id in ("well", "stale", "closed", "deregistered"):
        await holding(scripts, registry, redis_client, agent_id)
    await holding(scripts, registry, redis_client, "node-gone", node="node-2")
    await redis_client.delete(keys.node_presence("node-2"))
    await redis_client.zadd(keys.AGENTS_HEARTBEATS, {"stale": 1})
    await scripts.disconnect_stream(args=["closed", "node-1", "session-closed"])
    await registry.deregister("deregistered")
    (now_s, _) = await redis_client.time()

    cursor, rows = await scripts.holders_in_doubt(args=[now_s * 1000 - LIVENESS_MS, "0", 100])

    by_agent = {row[0]: row[1:] for row in rows}
    assert sorted(by_agent) == ["closed", "deregistered", "node-gone", "stale"]
    assert by_agent["deregistered"][0] == 0
    assert by_agent["stale"][1] == "1"
    assert by_agent["closed"][2] is None and by_agent["closed"][3] is not None
    assert by_agent["node-gone"][2].startswith("node-2 ") and by_agent["node-gone"][4] == 0
    assert cursor == "0"  # a small set: gone through in one step


async def test_a_large_set_is_gone_through_a_step_a_round(scripts, redis_client):
    await redis_client.sadd(keys.AGENTS_HOLDING, *(f"gone-{i:04d}" for i in range(3000)))
    seen: set[str] = set()
    cursor, steps = "0", 0
    while True:
        cursor, rows = await scripts.holders_in_doubt(args=[0, cursor, 500])
        assert len(rows) < 1500  # about 500 a step, never all 3,000
        seen.update(row[0] for row in rows)
        steps += 1
        if cursor == "0":
            break
    assert len(seen) == 3000 and steps >= 4  # none registered: every one in doubt
