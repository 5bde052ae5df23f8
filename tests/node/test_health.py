"""Health follows Redis: NOT_SERVING within 5 s of an outage, SERVING again within 5 s of its
return; RPCs during the outage are UNAVAILABLE, never UNKNOWN."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2

from aitbc.coordinator.v1 import agent_pb2
from coordinator.server import SERVICE_NAMES

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def statuses(node) -> set[int]:
    replies = await asyncio.gather(
        *(node.health.Check(health_pb2.HealthCheckRequest(service=s)) for s in ("", *SERVICE_NAMES))
    )
    return {r.status for r in replies}


async def next_status(stream, timeout_s=5.0) -> int:
    reply = await asyncio.wait_for(stream.read(), timeout_s)
    return reply.status


async def test_redis_outage_flips_health_and_rpcs_are_unavailable(start_node, own_redis):
    node = await start_node(redis_url=own_redis.url(1))
    assert await statuses(node) == {SERVING}
    watch = node.health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert await next_status(watch) == SERVING

    own_redis.stop()
    started = time.monotonic()
    assert await next_status(watch) == NOT_SERVING
    assert time.monotonic() - started < 5.0
    assert await statuses(node) == {NOT_SERVING}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await node.agents.RegisterAgent(
            agent_pb2.RegisterAgentRequest(agent_id="a", agent_type="worker")
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Redis" in caught.value.details()

    own_redis.start()
    started = time.monotonic()
    assert await next_status(watch) == SERVING
    assert time.monotonic() - started < 5.0
    assert await statuses(node) == {SERVING}
    reply = await node.agents.RegisterAgent(
        agent_pb2.RegisterAgentRequest(agent_id="a", agent_type="worker")
    )
    assert reply.created
    watch.cancel()


async def test_unknown_service_name_is_not_found(node):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await node.health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_redis_that_refuses_writes_is_not_serving(start_node, own_redis):
    """A primary demoted to replica (as after a failover) answers PING but refuses writes."""
    import redis.asyncio as aioredis

    node = await start_node(redis_url=own_redis.url(1))
    admin = aioredis.Redis(port=own_redis.port)
    watch = node.health.Watch(health_pb2.HealthCheckRequest(service=""))
    try:
        assert await next_status(watch) == SERVING
        await admin.replicaof("127.0.0.1", "1")  # no primary there: stays a read-only replica
        assert await next_status(watch) == NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await node.agents.RegisterAgent(
                agent_pb2.RegisterAgentRequest(agent_id="a", agent_type="worker")
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "refuses writes" in caught.value.details()

        await admin.replicaof("NO", "ONE")
        assert await next_status(watch) == SERVING
        reply = await node.agents.RegisterAgent(
            agent_pb2.RegisterAgentRequest(agent_id="a", agent_type="worker")
        )
        assert reply.created
    finally:
        watch.cancel()
        await admin.aclose()


async def test_each_node_keeps_a_presence_key_while_it_serves(node, redis_client):
    ttl_ms = await redis_client.pttl("coordinator:nodes:test-node")
    assert 0 < ttl_ms <= 1100  # three 0.2 s health intervals plus the 0.5 s Redis timeout
    await node.coordinator.stop(grace_s=0)
    assert not await redis_client.exists("coordinator:nodes:test-node")
