"""A node refuses a Redis that may evict keys, warns before Redis is full, and a full Redis
refuses new work clearly while keeping what it accepted: each against a real redis-server whose
settings the test changes with CONFIG SET."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2

from agent_harness import eventually, get_task, submit_request
from coordinator.config import ConfigError
from coordinator.node.redis_memory import MemoryWatch, RedisMemory

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health_of(node) -> int:
    return (await node.health.Check(health_pb2.HealthCheckRequest(service=""))).status


async def status_is(node, status: int) -> bool:
    return await health_of(node) == status


@pytest.fixture
async def own_client(own_redis):
    client = aioredis.Redis.from_url(own_redis.url(1))
    yield client
    await client.aclose()


async def test_a_node_does_not_start_on_a_redis_that_may_evict_keys(
    start_node, own_redis, own_client
):
    await own_client.config_set("maxmemory-policy", "allkeys-lru")
    with pytest.raises(ConfigError, match="maxmemory-policy allkeys-lru") as refused:
        await start_node(redis_url=own_redis.url(1))
    assert "COORDINATOR_REDIS_ALLOW_EVICTION" in str(refused.value)


async def test_allowed_eviction_starts_and_says_so_in_the_log(
    start_node, own_redis, own_client, caplog
):
    await own_client.config_set("maxmemory-policy", "volatile-ttl")
    caplog.set_level(logging.ERROR, logger="coordinator.node.redis_memory")
    node = await start_node(redis_url=own_redis.url(1), redis_allow_eviction=True)
    assert await health_of(node) == SERVING
    assert any("volatile-ttl" in r.getMessage() for r in caplog.records)


async def test_an_eviction_policy_set_while_running_makes_the_node_not_serving(
    start_node, own_redis, own_client
):
    node = await start_node(redis_url=own_redis.url(1))
    assert await health_of(node) == SERVING

    await own_client.config_set("maxmemory-policy", "allkeys-random")
    await eventually(lambda: status_is(node, NOT_SERVING), timeout_s=5, what="NOT_SERVING")

    await own_client.config_set("maxmemory-policy", "noeviction")
    await eventually(lambda: status_is(node, SERVING), timeout_s=5, what="SERVING")


async def test_a_full_redis_refuses_new_tasks_clearly_and_keeps_the_accepted_ones(
    start_node, own_redis, own_client, caplog
):
    caplog.set_level(logging.WARNING, logger="coordinator.node.redis_memory")
    node = await start_node(redis_url=own_redis.url(1), redis_memory_warn_ratio=0.5)
    accepted = [(await node.tasks.SubmitTask(submit_request())).task.task_id for _ in range(20)]

    used = int((await own_client.info("memory"))["used_memory"])
    await own_client.config_set("maxmemory", str(used))  # full: the next write is refused
    await eventually(
        lambda: asyncio.sleep(0, any("Redis memory is" in r.getMessage() for r in caplog.records)),
        timeout_s=5,
        what="the warning that Redis is filling up",
    )
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await node.tasks.SubmitTask(submit_request(data={"pad": "x" * 200_000}))
    assert full.value.code() is grpc.StatusCode.UNAVAILABLE
    assert full.value.details().startswith("Redis is full (maxmemory reached)")
    assert len(full.value.details()) < 400

    await own_client.config_set("maxmemory", "0")
    for task_id in accepted:
        assert (await get_task(node.tasks, task_id)).task_id == task_id


def test_the_watch_warns_once_per_crossing_and_only_refuses_eviction(caplog):
    caplog.set_level(logging.INFO, logger="coordinator.node.redis_memory")
    watch = MemoryWatch(warn_ratio=0.8, allow_eviction=False)
    safe = [RedisMemory(used, 100, "noeviction") for used in (10, 85, 90, 50, 95)]
    assert all(watch.acceptable(m) for m in safe)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # at 85 and again at 95, after it went back under at 50
    assert watch.last == safe[-1]
    assert watch.acceptable(RedisMemory(10, 0, "noeviction"))  # no limit: nothing to warn of
    assert not watch.acceptable(RedisMemory(10, 0, "allkeys-lru"))
    assert MemoryWatch(warn_ratio=0.8, allow_eviction=True).acceptable(
        RedisMemory(10, 0, "allkeys-lru")
    )
