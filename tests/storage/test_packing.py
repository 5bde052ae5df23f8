"""Commands packed by hiredis are the bytes redis-py would send, and reach a real Redis."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from coordinator.server import connect_redis
from coordinator.storage.packing import (
    PackedConnection,
    PackedSSLConnection,
    PackedUnixDomainSocketConnection,
)

COMMANDS = [
    ("EVALSHA", "a" * 40, 0, "task-1", "", 60_000, "NORMAL", '{"k":"v"}'),
    ("SET", "key", "grüße ✓", "PX", 1500),
    ("SET", b"raw", b"\x00\xff\r\n"),
    ("ZADD", "z", 0.1, "m", 1e-7, "n", -3.25, "o"),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETNAME", "name"),
]


@pytest.mark.parametrize("args", COMMANDS)
def test_packs_the_bytes_redis_py_packs(args):
    python = b"".join(Connection().pack_command(*args))

    assert b"".join(PackedConnection().pack_command(*args)) == python


@pytest.mark.parametrize("value", [True, None, object()])
def test_refuses_what_redis_py_refuses(value):
    with pytest.raises(DataError):
        PackedConnection().pack_command("SET", "key", value)


def test_every_url_scheme_gets_its_packing_connection(make_settings):
    for url, kind in (
        ("redis://127.0.0.1:1/0", PackedConnection),
        ("rediss://127.0.0.1:1/0", PackedSSLConnection),
        ("unix:///tmp/none.sock?db=0", PackedUnixDomainSocketConnection),
    ):
        client = connect_redis(make_settings(redis_url=url))
        assert client.connection_pool.connection_class is kind, url


async def test_round_trip_through_a_real_redis(make_settings):
    client = connect_redis(make_settings())
    try:
        await client.set("greeting", "grüße ✓")
        await client.zadd("z", {"m": 0.1})
        async with client.pipeline(transaction=False) as pipe:
            pipe.get("greeting")
            pipe.zscore("z", "m")
            assert await pipe.execute() == ["grüße ✓", 0.1]
    finally:
        await client.aclose()
