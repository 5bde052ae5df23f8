"""Each named Lua script on its own, against a real Redis."""

from __future__ import annotations

import json

import pytest

from coordinator.storage import keys
from coordinator.storage.scripts import SCRIPT_NAMES, Scripts, source

STATUS_SETS = keys.status_indexes()


@pytest.fixture
def scripts(redis_client):
    return Scripts(redis_client)


def pairs(flat):
    return dict(zip(flat[::2], flat[1::2], strict=True))


async def register(scripts, agent_id, index_keys=(), **fields):
    fields = {"agent_type": "worker", "max_concurrency": "1", **fields}
    return await scripts.register_agent(
        keys=[
            keys.agent(agent_id),
            keys.AGENTS_ALL,
            keys.AGENTS_HEARTBEATS,
            *STATUS_SETS,
            *index_keys,
        ],
        args=[agent_id, *(x for kv in fields.items() for x in kv)],
    )


async def heartbeat(scripts, agent_id, status="", metrics=""):
    return await scripts.heartbeat(
        keys=[keys.agent(agent_id), keys.AGENTS_HEARTBEATS, *STATUS_SETS, keys.AGENTS_CONNECTED],
        args=[agent_id, status, metrics, keys.NODE_PRESENCE_PREFIX],
    )


def test_every_script_documents_its_keys_and_args():
    for name in SCRIPT_NAMES:
        text = source(name)
        assert "KEYS[1]" in text and "ARGV[1]" in text and "Returns" in text, name


async def test_register_adds_then_moves_index_entries(scripts, redis_client):
    created, now_ms, record = await register(
        scripts, "a", ["agents:capability:x", "agents:capability:y"]
    )
    assert created == 1
    stored = pairs(record)
    assert stored["registered_at_ms"] == stored["last_heartbeat_at_ms"] == str(now_ms)
    assert stored["status"] == "ACTIVE" and stored["active_tasks"] == "0"
    assert await redis_client.smembers("agents:capability:x") == {"a"}

    await redis_client.hset("agent:a", mapping={"active_tasks": 2, "node_id": "n1"})
    created, _, record = await register(
        scripts, "a", ["agents:capability:y", "agents:capability:z"]
    )
    assert created == 0
    assert pairs(record)["registered_at_ms"] == stored["registered_at_ms"]
    assert pairs(record)["active_tasks"] == "2" and pairs(record)["node_id"] == "n1"  # kept
    assert not await redis_client.exists("agents:capability:x")
    assert await redis_client.smembers("agents:capability:z") == {"a"}


async def test_register_keeps_sticky_statuses_and_resets_busy(scripts, redis_client):
    await register(scripts, "a")
    await redis_client.hset("agent:a", "status", "BUSY")
    await redis_client.smove(keys.AGENTS_ACTIVE, "agents:status:busy", "a")
    _, _, record = await register(scripts, "a")
    assert pairs(record)["status"] == "ACTIVE"
    assert not await redis_client.exists("agents:status:busy")
    await redis_client.hset("agent:a", "status", "ERROR")
    _, _, record = await register(scripts, "a")
    assert pairs(record)["status"] == "ERROR"
    assert await redis_client.smembers("agents:status:error") == {"a"}
    assert not await redis_client.sismember(keys.AGENTS_ACTIVE, "a")


async def test_heartbeat_unknown_agent_returns_empty(scripts):
    assert await heartbeat(scripts, "ghost") == []


async def test_heartbeat_never_overwrites_maintenance(scripts, redis_client):
    await register(scripts, "a")
    await redis_client.hset("agent:a", "status", "MAINTENANCE")
    await redis_client.smove(keys.AGENTS_ACTIVE, "agents:status:maintenance", "a")
    now_ms, record, streaming = await heartbeat(scripts, "a", status="BUSY", metrics='{"cpu": 0.5}')
    assert streaming == 0
    assert pairs(record)["status"] == "MAINTENANCE"
    assert pairs(record)["load_metrics"] == '{"cpu": 0.5}'
    assert pairs(record)["last_heartbeat_at_ms"] == str(now_ms)
    assert await redis_client.smembers("agents:status:maintenance") == {"a"}
    assert not await redis_client.exists("agents:status:busy")


async def test_heartbeat_says_whether_the_stream_is_open_on_a_live_node(scripts, redis_client):
    await register(scripts, "a")
    await redis_client.zadd(keys.AGENTS_HEARTBEATS, {"a": 1})
    now_ms, _, streaming = await heartbeat(scripts, "a")
    assert streaming == 0  # no stream at all
    assert await redis_client.zscore(keys.AGENTS_HEARTBEATS, "a") == now_ms  # still recorded

    await redis_client.hset(keys.AGENTS_CONNECTED, "a", "node-1 session-1")
    assert (await heartbeat(scripts, "a"))[2] == 0  # its node has no presence key
    await redis_client.set(keys.node_presence("node-1"), "1")
    assert (await heartbeat(scripts, "a"))[2] == 1
    await redis_client.delete(keys.node_presence("node-1"))
    assert (await heartbeat(scripts, "a"))[2] == 0


async def test_update_status_does_not_put_a_stale_agent_into_active(scripts, redis_client):
    await register(scripts, "a")
    await redis_client.zadd(keys.AGENTS_HEARTBEATS, {"a": 1})
    await redis_client.srem(keys.AGENTS_ACTIVE, "a")
    reply = await scripts.update_agent_status(
        keys=[keys.agent("a"), keys.AGENTS_HEARTBEATS, *STATUS_SETS],
        args=["a", "ACTIVE", "{}", "", 3000],
    )
    assert pairs(reply[1])["status"] == "ACTIVE"
    assert not await redis_client.sismember(keys.AGENTS_ACTIVE, "a")


async def test_deregister_respects_the_heartbeat_bound(scripts, redis_client):
    _, now_ms, _ = await register(scripts, "a", ["agents:label:z=1"])
    deregister_keys = [
        keys.agent("a"),
        keys.AGENTS_ALL,
        keys.AGENTS_HEARTBEATS,
        *STATUS_SETS,
        keys.AGENTS_CONNECTED,
    ]
    prefix = keys.NODE_CHANNEL_PREFIX
    assert await scripts.deregister_agent(keys=deregister_keys, args=["a", now_ms - 1, prefix]) == 0
    assert await redis_client.exists("agent:a")
    assert await scripts.deregister_agent(keys=deregister_keys, args=["a", now_ms, prefix]) == 1
    assert await redis_client.keys("agent*") == []
    assert await scripts.deregister_agent(keys=deregister_keys, args=["a", "", prefix]) == 0


async def test_deregister_ends_the_agents_stream(scripts, redis_client):
    await register(scripts, "a")
    await redis_client.hset(keys.AGENTS_CONNECTED, "a", "node-1 session-1")
    deregister_keys = [
        keys.agent("a"),
        keys.AGENTS_ALL,
        keys.AGENTS_HEARTBEATS,
        *STATUS_SETS,
        keys.AGENTS_CONNECTED,
    ]
    async with redis_client.pubsub() as pubsub:
        await pubsub.subscribe(keys.node_channel("node-1"))
        await pubsub.get_message(timeout=1)  # the subscribe confirmation
        args = ["a", "", keys.NODE_CHANNEL_PREFIX]
        assert await scripts.deregister_agent(keys=deregister_keys, args=args) == 1
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
    assert message is not None
    assert json.loads(message["data"]) == {"kind": "deregistered", "agent_id": "a"}
    assert not await redis_client.hexists(keys.AGENTS_CONNECTED, "a")


async def test_sweep_takes_only_stale_agents_out_of_active(scripts, redis_client):
    for agent_id in ("fresh", "stale", "stale-busy"):
        await register(scripts, agent_id)
    await redis_client.zadd(keys.AGENTS_HEARTBEATS, {"stale": 1, "stale-busy": 1})
    await redis_client.smove(keys.AGENTS_ACTIVE, "agents:status:busy", "stale-busy")
    removed = await scripts.sweep_stale_agents(
        keys=[keys.AGENTS_HEARTBEATS, keys.AGENTS_ACTIVE], args=[3000]
    )
    assert removed == ["stale"]
    assert await redis_client.smembers(keys.AGENTS_ACTIVE) == {"fresh"}
    assert (
        await scripts.sweep_stale_agents(
            keys=[keys.AGENTS_HEARTBEATS, keys.AGENTS_ACTIVE], args=[3000]
        )
        == []
    )


async def test_discover_intersects_indexes_and_adds_stale_candidates(scripts, redis_client):
    await register(scripts, "a", ["agents:capability:x", "agents:label:z=1"])
    await register(scripts, "b", ["agents:capability:x"])
    await register(scripts, "c", ["agents:capability:x", "agents:label:z=1"])
    await redis_client.zadd(keys.AGENTS_HEARTBEATS, {"c": 1})

    async def discover(status_keys, filters, include_inactive):
        _, records = await scripts.discover_agents(
            keys=[keys.AGENTS_HEARTBEATS, *status_keys, *filters],
            args=[
                len(status_keys),
                int(include_inactive),
                3000,
                keys.AGENT_KEY_PREFIX,
                "agent_id",
                "status",
            ],
        )
        rows = [json.loads(record) for record in records]  # one JSON array per record
        assert all(status == "ACTIVE" for _, status in rows)
        return sorted(agent_id for agent_id, _ in rows)

    both = ["agents:capability:x", "agents:label:z=1"]
    assert await discover([keys.AGENTS_ACTIVE], both, False) == ["a", "c"]  # c: caller filters
    assert await discover([], both, True) == ["c"]
    assert await discover([], ["agents:capability:x"], True) == ["c"]
    assert await discover([keys.AGENTS_ACTIVE], [], False) == ["a", "b", "c"]
