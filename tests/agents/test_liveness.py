"""Liveness: INACTIVE is computed from the shared heartbeat timestamp; one node at a time
sweeps agents:active and deletes agents past the retention."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from aitbc.coordinator.v1 import agent_pb2
from coordinator.storage import keys

FAST = {"heartbeat_interval_s": 0.2, "liveness_timeout_s": 0.6, "sweep_interval_s": 0.1}


async def eventually(predicate, timeout_s=5.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def get(node, agent_id):
    return (await node.agents.GetAgent(agent_pb2.GetAgentRequest(agent_id=agent_id))).agent


async def test_missed_heartbeats_make_an_agent_inactive_and_a_heartbeat_revives_it(
    start_node, redis_client, hold_stream
):
    node = await start_node(**FAST)
    await node.agents.RegisterAgent(
        agent_pb2.RegisterAgentRequest(agent_id="a", agent_type="worker", capabilities=["x"])
    )
    assert (await get(node, "a")).status == agent_pb2.AGENT_STATUS_ACTIVE

    async def swept():
        return not await redis_client.sismember(keys.AGENTS_ACTIVE, "a")

    await eventually(swept)
    agent = await get(node, "a")
    assert agent.status == agent_pb2.AGENT_STATUS_INACTIVE
    assert agent.health_score == 0.0
    assert await redis_client.hget("agent:a", "status") == "ACTIVE"  # stored status is kept
    discovered = await node.agents.DiscoverAgents(
        agent_pb2.DiscoverAgentsRequest(capabilities=["x"])
    )
    assert list(discovered.agents) == []

    await hold_stream(node, "a")  # a stream alone does not revive it: heartbeats do
    assert (await get(node, "a")).status == agent_pb2.AGENT_STATUS_INACTIVE
    reply = await node.agents.Heartbeat(agent_pb2.HeartbeatRequest(agent_id="a"))
    assert reply.status == agent_pb2.AGENT_STATUS_ACTIVE
    assert await redis_client.sismember(keys.AGENTS_ACTIVE, "a")


async def test_health_decays_between_heartbeats(start_node, redis_client):
    node = await start_node(heartbeat_interval_s=10.0, liveness_timeout_s=30.0)
    await node.agents.RegisterAgent(
        agent_pb2.RegisterAgentRequest(agent_id="a", agent_type="worker")
    )
    # Pretend the last heartbeat was 20 s ago (half way from one interval to the timeout).
    seconds, micros = await redis_client.time()
    twenty_s_ago = seconds * 1000 + micros // 1000 - 20_000
    await redis_client.hset("agent:a", "last_heartbeat_at_ms", twenty_s_ago)
    await redis_client.zadd(keys.AGENTS_HEARTBEATS, {"a": twenty_s_ago})
    agent = await get(node, "a")
    assert agent.status == agent_pb2.AGENT_STATUS_ACTIVE
    assert agent.health_score == pytest.approx(0.5, abs=0.01)


async def test_an_operator_status_stays_while_the_agent_is_away(start_node, hold_stream):
    node = await start_node(**FAST)
    await node.agents.RegisterAgent(
        agent_pb2.RegisterAgentRequest(agent_id="a", agent_type="worker")
    )
    await node.agents.UpdateAgentStatus(
        agent_pb2.UpdateAgentStatusRequest(agent_id="a", status=agent_pb2.AGENT_STATUS_MAINTENANCE)
    )
    await asyncio.sleep(0.8)
    assert (await get(node, "a")).status == agent_pb2.AGENT_STATUS_INACTIVE
    await hold_stream(node, "a")
    reply = await node.agents.Heartbeat(
        agent_pb2.HeartbeatRequest(agent_id="a", status=agent_pb2.AGENT_STATUS_ACTIVE)
    )
    assert reply.status == agent_pb2.AGENT_STATUS_MAINTENANCE


async def test_agents_past_the_retention_are_deleted(start_node, redis_client, hold_stream):
    node = await start_node(**FAST, inactive_retention_s=0.3)
    await node.agents.RegisterAgent(
        agent_pb2.RegisterAgentRequest(agent_id="gone", agent_type="worker", labels={"z": "1"})
    )
    await node.agents.RegisterAgent(
        agent_pb2.RegisterAgentRequest(agent_id="kept", agent_type="worker")
    )
    await hold_stream(node, "kept")

    async def keep_alive():
        while True:
            await node.agents.Heartbeat(agent_pb2.HeartbeatRequest(agent_id="kept"))
            await asyncio.sleep(0.1)

    heartbeats = asyncio.create_task(keep_alive())
    try:

        async def deleted():
            return not await redis_client.exists("agent:gone")

        await eventually(deleted)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get(node, "gone")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert not await redis_client.exists("agents:label:z=1")
        assert await redis_client.zscore(keys.AGENTS_HEARTBEATS, "gone") is None
        assert (await get(node, "kept")).status == agent_pb2.AGENT_STATUS_ACTIVE
    finally:
        heartbeats.cancel()


async def test_one_node_sweeps_per_round(start_node):
    nodes = [await start_node(sweep_interval_s=30.0) for _ in range(3)]
    results = await asyncio.gather(*(n.coordinator.sweeper.sweep_once() for n in nodes))
    assert sorted(results) == [False, False, True]
