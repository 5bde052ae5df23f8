"""How the node reaches Redis (coordinator.storage.connection and the multiplexed connection's
failover and durability), against real redis-server processes: a primary and its replica,
a Sentinel set, a primary demoted to a replica."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from replication_support import (
    MASTER_NAME,
    RedisProcess,
    start_replica,
    start_sentinels,
)

from coordinator.config import Settings
from coordinator.storage.connection import (
    Durability,
    ReplicationShortfall,
    connect_redis,
    connect_redis_sync,
    run_script_durably,
)
from coordinator.storage.multiplex import MultiplexedConnection

TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def replicated() -> Iterator[tuple[RedisProcess, RedisProcess, list[RedisProcess]]]:
    """A primary, one replica and three sentinels, shared by the tests that only read them."""
    primary = RedisProcess()
    replica = start_replica(primary)
    sentinels = start_sentinels(primary)
    yield primary, replica, sentinels
    for process in (*sentinels, replica, primary):
        process.close()


@pytest.fixture
def lone_redis() -> Iterator[RedisProcess]:
    """A Redis without replicas (WAIT gets 0 acknowledgements)."""
    process = RedisProcess()
    yield process
    process.close()


def settings_for(
    primary: RedisProcess, sentinels: list[RedisProcess] | None = None, **overrides: object
) -> Settings:
    base = Settings(redis_url=f"redis://127.0.0.1:{primary.port}/1", node_id="test-node")
    if sentinels is not None:
        # The URL's host and port must not matter: a port where nothing listens.
        base = dataclasses.replace(
            base,
            redis_url="redis://127.0.0.1:1/1",
            redis_sentinels=tuple(("127.0.0.1", s.port) for s in sentinels),
            redis_sentinel_master=MASTER_NAME,
        )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def node_client(
    replicated: tuple[RedisProcess, RedisProcess, list[RedisProcess]],
) -> AsyncIterator[aioredis.Redis]:
    primary, _, sentinels = replicated
    client = connect_redis(settings_for(primary, sentinels), max_connections=4)
    yield client
    await client.aclose()


async def test_the_pool_finds_the_primary_through_sentinel(
    replicated: tuple[RedisProcess, RedisProcess, list[RedisProcess]], node_client: aioredis.Redis
) -> None:
    primary, _, _ = replicated
    await node_client.set("written-through-sentinel", "1")
    info = await node_client.info("server")
    assert int(info["tcp_port"]) == primary.port
    with primary.client() as direct:
        assert direct.execute_command("SELECT", 1) and direct.get("written-through-sentinel")


async def test_the_multiplexed_connection_finds_the_primary_through_sentinel(
    replicated: tuple[RedisProcess, RedisProcess, list[RedisProcess]], node_client: aioredis.Redis
) -> None:
    primary, _, _ = replicated
    connection = MultiplexedConnection.like(node_client, TIMEOUT_S)
    try:
        [info] = await connection.execute([("INFO", "server")])
        assert f"tcp_port:{primary.port}" in info
    finally:
        await connection.aclose()


def test_the_sync_client_finds_the_primary_through_sentinel(
    replicated: tuple[RedisProcess, RedisProcess, list[RedisProcess]],
) -> None:
    primary, _, sentinels = replicated
    client = connect_redis_sync(settings_for(primary, sentinels), "test-metrics")
    try:
        assert int(client.info("server")["tcp_port"]) == primary.port
    finally:
        client.close()


async def test_a_batch_waits_for_the_replica_and_the_replica_has_it(
    replicated: tuple[RedisProcess, RedisProcess, list[RedisProcess]], node_client: aioredis.Redis
) -> None:
    _, replica, _ = replicated
    connection = MultiplexedConnection.like(node_client, TIMEOUT_S, Durability(1, 1000))
    try:
        replies = await connection.execute([("SET", "durable-key", "v"), ("GET", "durable-key")])
        assert replies == ["OK", "v"]  # WAIT's own reply is not among them
    finally:
        await connection.aclose()
    with replica.client() as direct:
        direct.execute_command("SELECT", 1)
        assert direct.get("durable-key") == "v"  # replicated before the answer


async def test_a_script_on_the_pool_waits_for_the_replica(
    replicated: tuple[RedisProcess, RedisProcess, list[RedisProcess]], node_client: aioredis.Redis
) -> None:
    script = node_client.register_script("return redis.call('INCR', KEYS[1])")
    await node_client.delete("durable-counter")
    assert await run_script_durably(node_client, Durability(1, 1000), script, ["durable-counter"])
    assert await run_script_durably(node_client, Durability(0), script, ["durable-counter"]) == 2


async def test_too_few_replicas_is_an_outage_with_a_clear_message(
    lone_redis: RedisProcess,
) -> None:
    client = connect_redis(settings_for(lone_redis), max_connections=4)
    connection = MultiplexedConnection.like(client, TIMEOUT_S, Durability(1, 50))
    script = client.register_script("return redis.call('SET', KEYS[1], 'x')")
    try:
        with pytest.raises(ReplicationShortfall) as caught:
            await connection.execute([("SET", "k", "v")])
        assert str(caught.value) == (
            "the write reached only 0 of 1 Redis replicas within 50 ms; "
            "retry with the same request_id"
        )
        assert isinstance(caught.value, RedisConnectionError)  # UNAVAILABLE at the edge
        with pytest.raises(ReplicationShortfall):
            await run_script_durably(client, Durability(1, 50), script, ["k2"])
        # Per call: no WAIT, so no shortfall.
        assert await connection.execute([("GET", "k")], min_replicas=0) == ["v"]
    finally:
        await connection.aclose()
        await client.aclose()


async def test_a_demoted_primary_makes_the_connection_reconnect(
    lone_redis: RedisProcess,
) -> None:
    """READONLY (the primary became a replica) retires the connection: the next batch opens
    a new one (here to the same address, as REDIS_URL names it; with Sentinel, to the
    primary the sentinels name)."""
    other = RedisProcess()
    client = connect_redis(settings_for(lone_redis), max_connections=4)
    connection = MultiplexedConnection.like(client, TIMEOUT_S)
    try:
        [before] = await connection.execute([("CLIENT", "ID")])
        with lone_redis.client() as direct:
            direct.replicaof("127.0.0.1", other.port)
        [refused] = await connection.execute([("SET", "k", "v")])
        assert isinstance(refused, ReadOnlyError)  # in its place, as before
        [after] = await connection.execute([("CLIENT", "ID")])
        assert after != before
    finally:
        await connection.aclose()
        await client.aclose()
        other.close()


async def test_batches_written_before_the_readonly_reply_still_get_theirs(
    lone_redis: RedisProcess,
) -> None:
    other = RedisProcess()
    client = connect_redis(settings_for(lone_redis), max_connections=4)
    connection = MultiplexedConnection.like(client, TIMEOUT_S)
    try:
        await connection.execute([("PING",)])
        with lone_redis.client() as direct:
            direct.replicaof("127.0.0.1", other.port)
        replies = await asyncio.gather(
            connection.execute([("SET", "k", "v")]),
            connection.execute([("ECHO", "a")]),
            connection.execute([("ECHO", "b")]),
        )
        assert replies[1:] == [["a"], ["b"]]
    finally:
        await connection.aclose()
        await client.aclose()
        other.close()
