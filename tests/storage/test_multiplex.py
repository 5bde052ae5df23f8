"""The shared auto-pipelined connection (coordinator.storage.multiplex) against a real
redis-server: every caller gets its own replies in order, refusals stay in their place as
redis-py's exceptions, the URL's settings apply, and outages, timeouts, cancellations,
idle drops and closing fail the right batches without shifting anyone's replies.

A batch is made slow for its connection alone with BLPOP on an empty list (DEBUG SLEEP is
refused by this redis-server: ``enable-debug-command`` is off), and released early with an
LPUSH from another client when the test wants to choose the moment.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from coordinator.config import Settings
from coordinator.server import connect_redis
from coordinator.storage import multiplex as redis_multiplex
from coordinator.storage.multiplex import MultiplexedConnection

Connect = Callable[..., MultiplexedConnection]


class RedisServer(Protocol):
    """What the tests use of conftest's ``redis_server`` and ``own_redis`` (support.py's
    RedisServer, described here so that mypy need not read support.py, which is untyped)."""

    port: int

    def url(self, db: int = 0) -> str: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


# --- helpers ---------------------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """``connect(url, timeout_s=2.0, **from_url_kwargs)``: a MultiplexedConnection with the
    settings of ``Redis.from_url(url, decode_responses=True, **kwargs)``; all closed at the end."""
    clients: list[aioredis.Redis] = []
    connections: list[MultiplexedConnection] = []

    def make(url: str, timeout_s: float = 2.0, **kwargs: Any) -> MultiplexedConnection:
        kwargs.setdefault("decode_responses", True)
        client = aioredis.Redis.from_url(url, **kwargs)
        clients.append(client)
        connection = MultiplexedConnection.like(client, timeout_s)
        connections.append(connection)
        return connection

    yield make
    for connection in connections:
        await connection.aclose()
    for client in clients:
        await client.aclose()


async def clients_named(admin: aioredis.Redis, name: str) -> list[dict[str, Any]]:
    """The server's client connections that carry ``name`` (CLIENT LIST)."""
    return [c for c in await admin.client_list() if c.get("name") == name]


async def wait_blocked(admin: aioredis.Redis, name: str) -> None:
    """Until the connection named ``name`` is blocked in its BLPOP: what was written after
    it is queued behind it."""
    deadline = time.monotonic() + 2.0
    while not any(c.get("cmd") == "blpop" for c in await clients_named(admin, name)):
        assert time.monotonic() < deadline, f"{name} never blocked in BLPOP"
        await asyncio.sleep(0.005)


async def elapsed(awaitable: Awaitable[Any], limit_s: float = 3.0) -> tuple[float, Any]:
    """(seconds, the result or the exception raised); a hang ends after ``limit_s`` as the
    builtin TimeoutError (which no test expects: redis-py's TimeoutError is another class)."""
    start = time.monotonic()
    try:
        result = await asyncio.wait_for(awaitable, limit_s)
    except Exception as exc:
        result = exc
    return time.monotonic() - start, result


# --- 1. concurrency on one connection ------------------------------------------------------


async def test_concurrent_callers_get_their_own_replies_on_one_connection(
    connect: Connect, redis_url: str, redis_client: aioredis.Redis
) -> None:
    name = unique("mux-concurrent")
    connection = connect(redis_url, client_name=name)

    async def caller(round_: int, i: int) -> list[Any]:
        return await connection.execute(
            [
                ("SET", f"k:{round_}:{i}", f"v{i}"),
                ("INCRBY", f"n:{round_}:{i}", i),
                ("ECHO", f"echo-{round_}-{i}"),
                ("INCR", f"shared:{round_}"),
                ("GET", f"k:{round_}:{i}"),
            ]
        )

    # Round 0 starts unconnected (all 200 race to connect); in round 1 the connection is
    # open, so all 200 batches are written before the first reply is read.
    for round_ in (0, 1):
        replies = await asyncio.gather(*(caller(round_, i) for i in range(200)))
        for i, reply in enumerate(replies):
            assert reply[:3] == ["OK", i, f"echo-{round_}-{i}"], (round_, i, reply)
            assert reply[4] == f"v{i}", (round_, i, reply)
        # Each INCR of the shared counter went to exactly one batch.
        assert sorted(r[3] for r in replies) == list(range(1, 201))

    assert len(await clients_named(redis_client, name)) == 1


async def test_an_empty_batch_is_answered_without_a_connection(
    connect: Connect, redis_url: str, redis_client: aioredis.Redis
) -> None:
    name = unique("mux-empty")
    connection = connect(redis_url, client_name=name)

    assert await connection.execute([]) == []
    assert await clients_named(redis_client, name) == []


# --- 2. refusals in their place -----------------------------------------------------------


async def test_refused_commands_are_redis_py_exceptions_in_their_place(
    multiplexed: MultiplexedConnection, redis_client: aioredis.Redis
) -> None:
    unknown_sha = "0" * 40
    replies = await multiplexed.execute(
        [
            ("CLIENT", "ID"),
            ("SET", "s", "v"),
            ("EVALSHA", unknown_sha, 0),
            ("LPUSH", "s", "x"),  # a string key: WRONGTYPE
            ("GET", "s"),
            ("EVAL", "return redis.error_reply('MYERR custom refusal')", 0),
            ("ECHO", "end"),
        ]
    )

    client_id, ok, noscript, wrongtype, value, custom, end = replies
    assert (ok, value, end) == ("OK", "v", "end")
    assert type(noscript) is NoScriptError
    assert type(wrongtype) is ResponseError
    assert str(wrongtype).startswith("WRONGTYPE")
    assert type(custom) is ResponseError
    assert str(custom) == "MYERR custom refusal"
    # The same exception, with the same message, as redis-py's own client raises.
    with pytest.raises(NoScriptError) as from_redis_py:
        await redis_client.evalsha(unknown_sha, 0)
    assert str(noscript) == str(from_redis_py.value)

    # A refusal is a reply, not an outage: the same connection goes on.
    assert await multiplexed.execute([("CLIENT", "ID"), ("ECHO", "after")]) == [client_id, "after"]


# --- 3. settings from the URL --------------------------------------------------------------


@pytest.fixture
async def db3(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client on database 3 of the session Redis, flushed before and after."""
    client = aioredis.Redis.from_url(redis_server.url(3), decode_responses=True)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


async def test_the_database_of_the_url(
    connect: Connect,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    db3: aioredis.Redis,
) -> None:
    name = unique("mux-db")
    connection = connect(redis_server.url(3), client_name=name)

    assert await connection.execute([("SET", "where", "db3")]) == ["OK"]

    assert await db3.get("where") == "db3"
    assert await redis_client.get("where") is None  # not in the test database (1)
    (listed,) = await clients_named(redis_client, name)
    assert listed["db"] == "3"


async def test_the_client_name_of_the_client(connect: Connect, redis_url: str) -> None:
    name = unique("mux-name")
    connection = connect(redis_url, client_name=name)

    assert await connection.execute([("CLIENT", "GETNAME")]) == [name]


@pytest.mark.parametrize(
    ("decode", "expected"),
    [
        (True, ["OK", "grüße ✓", "grüße ✓", ["grüße ✓", None]]),
        (False, [b"OK", "grüße ✓".encode(), "grüße ✓".encode(), ["grüße ✓".encode(), None]]),
    ],
)
async def test_decode_responses_of_the_client(
    connect: Connect, redis_url: str, decode: bool, expected: list[Any]
) -> None:
    connection = connect(redis_url, decode_responses=decode)

    replies = await connection.execute(
        [
            ("SET", "text", "grüße ✓"),
            ("GET", "text"),
            ("ECHO", "grüße ✓"),
            ("MGET", "text", "missing"),
        ]
    )

    assert replies == expected
    assert all(type(a) is type(b) for a, b in zip(replies[:3], expected[:3], strict=True))


async def test_the_nodes_own_client_settings(
    make_settings: Callable[..., Settings], redis_client: aioredis.Redis
) -> None:
    """As the node makes it: BlockingConnectionPool, the packing connection class,
    socket_keepalive=True, its client name, the test database."""
    client = connect_redis(make_settings())
    connection = MultiplexedConnection.like(client, timeout_s=0.5)
    try:
        replies = await connection.execute([("CLIENT", "GETNAME"), ("SET", "node", "x")])
        assert replies == ["aitbc-coordinator:test-node", "OK"]
        assert await redis_client.get("node") == "x"
    finally:
        await connection.aclose()
        await client.aclose()


# --- 4. AUTH -----------------------------------------------------------------------------------


@pytest.fixture
async def protected_redis(own_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """``own_redis`` with a user ``u`` (password ``pw``) and the default user's password set
    to ``adminpw`` (nothing runs unauthenticated); yields an admin client."""
    setup = aioredis.Redis(port=own_redis.port)
    await setup.execute_command("ACL", "SETUSER", "u", "on", ">pw", "~*", "&*", "+@all")
    await setup.execute_command("ACL", "SETUSER", "default", "resetpass", ">adminpw")
    await setup.aclose()
    admin = aioredis.Redis(port=own_redis.port, password="adminpw", decode_responses=True)
    yield admin
    await admin.aclose()


async def test_auth_with_user_and_password_before_name_and_database(
    connect: Connect, own_redis: RedisServer, protected_redis: aioredis.Redis
) -> None:
    name = unique("mux-auth")
    connection = connect(f"redis://u:pw@127.0.0.1:{own_redis.port}/2", client_name=name)

    replies = await connection.execute(
        [("ACL", "WHOAMI"), ("CLIENT", "GETNAME"), ("SET", "authed", "yes")]
    )

    assert replies == ["u", name, "OK"]
    await protected_redis.select(2)
    assert await protected_redis.get("authed") == "yes"


async def test_auth_with_a_password_only(
    connect: Connect, own_redis: RedisServer, protected_redis: aioredis.Redis
) -> None:
    connection = connect(f"redis://:adminpw@127.0.0.1:{own_redis.port}/0")

    assert await connection.execute([("ACL", "WHOAMI")]) == ["default"]


@pytest.mark.parametrize(
    "credentials",
    ["u:wrong@", ":wrong@", "", "nobody:pw@"],
    ids=["user", "default", "none", "no-user"],
)
async def test_refused_auth_raises_authentication_error_at_once(
    connect: Connect, own_redis: RedisServer, protected_redis: aioredis.Redis, credentials: str
) -> None:
    name = unique("mux-badauth")
    connection = connect(
        f"redis://{credentials}127.0.0.1:{own_redis.port}/2", timeout_s=2.0, client_name=name
    )

    for _ in range(2):  # and again: a refused connection is not kept
        took, result = await elapsed(connection.execute([("ECHO", "x")]))
        assert isinstance(result, AuthenticationError), repr(result)
        assert took < 1.0
    # The refused connections were closed, not left open on the server.
    await asyncio.sleep(0.05)
    assert len(await protected_redis.client_list()) == 1  # the admin's own


# --- 5. outage ---------------------------------------------------------------------------------


async def test_outage_fails_fast_and_the_next_batch_reconnects(
    connect: Connect, own_redis: RedisServer
) -> None:
    connection = connect(own_redis.url(0), timeout_s=2.0)
    assert await connection.execute([("SET", "before", "1")]) == ["OK"]
    blocked = asyncio.create_task(connection.execute([("BLPOP", "never", "5")]))
    await asyncio.sleep(0.05)

    own_redis.stop()

    took, result = await elapsed(blocked)  # in flight when Redis went away
    assert isinstance(result, RedisConnectionError), repr(result)
    assert took < 1.0  # timeout_s is 2 s
    for _ in range(2):
        took, result = await elapsed(connection.execute([("ECHO", "down")]))
        assert isinstance(result, RedisConnectionError), repr(result)
        assert not isinstance(result, AuthenticationError)
        assert took < 1.0  # timeout_s is 2 s

    own_redis.start()

    assert await connection.execute([("ECHO", "back"), ("EXISTS", "before")]) == ["back", 0]


# --- 6. timeout --------------------------------------------------------------------------------


async def test_timeout_closes_the_connection_and_the_next_batch_gets_its_own_reply(
    connect: Connect, redis_url: str, redis_client: aioredis.Redis
) -> None:
    name = unique("mux-timeout")
    connection = connect(redis_url, timeout_s=0.2, client_name=name)
    (old_id,) = await connection.execute([("CLIENT", "ID")])

    slow = asyncio.create_task(connection.execute([("BLPOP", "q", "0.6"), ("ECHO", "slow")]))
    await wait_blocked(redis_client, name)
    behind = asyncio.create_task(connection.execute([("ECHO", "behind")]))

    took, result = await elapsed(slow)
    assert isinstance(result, RedisTimeoutError), repr(result)
    assert 0.15 < took < 0.55  # the timeout, not the BLPOP's own end (0.6 s)
    # The batch queued behind it on the same connection could never be answered in time.
    _, behind_result = await elapsed(behind)
    assert isinstance(behind_result, RedisTimeoutError), repr(behind_result)

    # At once, while the BLPOP would still block the old connection: a fresh connection,
    # and not the old one's late replies (nil, "slow", "behind").
    took, replies = await elapsed(connection.execute([("ECHO", "new"), ("CLIENT", "ID")]))
    assert isinstance(replies, list), repr(replies)
    assert replies[0] == "new", replies
    assert replies[1] != old_id
    assert took < 0.3  # not queued behind the BLPOP, which blocks its connection to 0.6 s
    await asyncio.sleep(0.5)  # the abandoned BLPOP has ended by now
    assert await connection.execute([("ECHO", "later")]) == ["later"]
    assert len(await clients_named(redis_client, name)) == 1


# --- 7. cancellation ---------------------------------------------------------------------------


@pytest.mark.parametrize("cancelled", ["slow", "behind"])
async def test_a_cancelled_caller_does_not_shift_replies(
    connect: Connect, redis_url: str, redis_client: aioredis.Redis, cancelled: str
) -> None:
    name = unique("mux-cancel")
    connection = connect(redis_url, timeout_s=2.0, client_name=name)
    (client_id,) = await connection.execute([("CLIENT", "ID")])

    tasks = {"slow": asyncio.create_task(connection.execute([("BLPOP", "q", "2"), ("ECHO", "a")]))}
    await wait_blocked(redis_client, name)
    tasks["behind"] = asyncio.create_task(connection.execute([("ECHO", "b1"), ("ECHO", "b2")]))
    await asyncio.sleep(0.02)  # written, queued behind the BLPOP
    tasks[cancelled].cancel()
    with pytest.raises(asyncio.CancelledError):
        await tasks[cancelled]
    after = asyncio.create_task(connection.execute([("ECHO", "c"), ("INCR", "n")]))
    await asyncio.sleep(0.02)

    await redis_client.lpush("q", "item")

    expected = {"slow": [["q", "item"], "a"], "behind": ["b1", "b2"]}
    for key, task in tasks.items():
        if key != cancelled:
            assert await asyncio.wait_for(task, 1.0) == expected[key]
    assert await asyncio.wait_for(after, 1.0) == ["c", 1]
    assert await connection.execute([("ECHO", "d"), ("CLIENT", "ID")]) == ["d", client_id]


# --- 8. idle check -----------------------------------------------------------------------------


async def test_a_connection_killed_while_idle_is_replaced(
    connect: Connect,
    redis_url: str,
    redis_client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_multiplex, "IDLE_CHECK_S", 0.05)
    name = unique("mux-killed")
    connection = connect(redis_url, client_name=name)
    (old_id,) = await connection.execute([("CLIENT", "ID")])

    assert await redis_client.execute_command("CLIENT", "KILL", "ID", old_id) == 1
    await asyncio.sleep(0.1)

    (new_id,) = await connection.execute([("CLIENT", "ID")])
    assert new_id != old_id
    assert len(await clients_named(redis_client, name)) == 1


@dataclass
class _Flow:
    client: asyncio.StreamWriter
    redis: asyncio.StreamWriter
    dropped: bool = False


class SilentDropRelay:
    """A TCP relay to a real Redis that can drop its flows in silence, as a firewall or NAT
    that forgot an idle flow does: Redis sees the client leave, the client sees nothing (no
    FIN, no reply; what it writes is swallowed). Flows opened later are relayed normally.
    (A CLIENT KILL cannot show this: the client sees the FIN and knows at once.)"""

    def __init__(self, redis_port: int) -> None:
        self._redis_port = redis_port
        self._server: asyncio.Server | None = None
        self._flows: list[_Flow] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def drop_silently(self) -> None:
        for flow in self._flows:
            flow.dropped = True
            flow.redis.close()

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        for flow in self._flows:
            flow.client.close()
            flow.redis.close()
        if self._tasks:  # their pumps end at the EOF of the closed streams
            await asyncio.wait(self._tasks, timeout=2.0)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self._redis_port)
        flow = _Flow(client_w, redis_w)
        self._flows.append(flow)
        await asyncio.gather(
            self._pump(client_r, flow, to_redis=True),
            self._pump(redis_r, flow, to_redis=False),
        )

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, flow: _Flow, *, to_redis: bool) -> None:
        try:
            while data := await reader.read(1 << 16):
                if not flow.dropped:
                    (flow.redis if to_redis else flow.client).write(data)
        except OSError:
            pass
        if not flow.dropped:
            (flow.redis if to_redis else flow.client).close()


@pytest.fixture
async def relay(own_redis: RedisServer) -> AsyncIterator[tuple[SilentDropRelay, str]]:
    """A SilentDropRelay to ``own_redis`` and the URL (database 0) through it."""
    relay = SilentDropRelay(own_redis.port)
    port = await relay.start()
    yield relay, f"redis://127.0.0.1:{port}/0"
    await relay.aclose()


@pytest.mark.parametrize("idle_check_s", [0.05, 30.0], ids=["checked", "not-checked"])
async def test_the_idle_check_finds_a_silently_dropped_connection(
    connect: Connect,
    relay: tuple[SilentDropRelay, str],
    monkeypatch: pytest.MonkeyPatch,
    idle_check_s: float,
) -> None:
    """Checked when idle: the PING gets no reply, so the batch goes on a new connection.
    Not checked: the batch is written into the void and times out (what the check is for)."""
    monkeypatch.setattr(redis_multiplex, "IDLE_CHECK_S", idle_check_s)
    drops, url = relay
    connection = connect(url, timeout_s=0.2)
    (old_id,) = await connection.execute([("CLIENT", "ID")])

    drops.drop_silently()
    await asyncio.sleep(0.1)

    took, result = await elapsed(connection.execute([("CLIENT", "ID"), ("ECHO", "x")]))
    if idle_check_s < 0.1:
        assert isinstance(result, list), repr(result)
        assert result[0] != old_id
        assert result[1] == "x"
        assert took < 1.0  # one PING timeout (0.2 s), then a new connection
    else:
        assert isinstance(result, RedisTimeoutError), repr(result)
        # No reconnection loop afterwards either: the next batch gets a fresh connection.
        assert (await connection.execute([("ECHO", "y")])) == ["y"]


async def test_no_idle_ping_while_the_connection_is_busy(
    connect: Connect, own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check costs a round trip only after an idle spell, not before every batch."""
    admin = aioredis.Redis(port=own_redis.port, decode_responses=True)
    try:
        monkeypatch.setattr(redis_multiplex, "IDLE_CHECK_S", 0.3)
        connection = connect(own_redis.url(0))
        await connection.execute([("ECHO", "connect")])  # its handshake ends with a PING

        async def pings() -> int:
            stats = await admin.info("commandstats")
            return int(stats.get("cmdstat_ping", {}).get("calls", 0))

        before = await pings()
        for _ in range(5):
            await connection.execute([("ECHO", "busy")])
        assert await pings() == before
        await asyncio.sleep(0.35)
        await connection.execute([("ECHO", "after idle")])
        assert await pings() == before + 1
    finally:
        await admin.aclose()


# --- 9. unix socket ----------------------------------------------------------------------------


@pytest.fixture
def unix_redis() -> Iterator[Path]:
    """A redis-server listening on a unix socket only; yields the socket's path."""
    binary = shutil.which("redis-server")
    assert binary is not None
    directory = Path(tempfile.mkdtemp(prefix="mux-unix-"))  # short: sun_path is 108 bytes
    path = directory / "r.sock"
    process = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--unixsocket",
            str(path),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--logfile",
            "redis.log",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(unix_socket_path=str(path), socket_connect_timeout=0.2)

        def pings() -> bool:
            assert process.poll() is None, "redis-server exited"
            try:
                return path.exists() and bool(client.ping())
            except redis.RedisError:
                return False

        try:
            deadline = time.monotonic() + 10.0
            while not pings():
                assert time.monotonic() < deadline, f"no redis-server on {path}"
                time.sleep(0.02)
        finally:
            client.close()
        yield path
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


async def test_unix_socket_and_its_database(connect: Connect, unix_redis: Path) -> None:
    name = unique("mux-unix")
    connection = connect(f"unix://{unix_redis}?db=2", client_name=name)

    replies = await connection.execute(
        [("SET", "over", "unix"), ("CLIENT", "GETNAME"), ("CLIENT", "INFO")]
    )

    assert replies[:2] == ["OK", name]
    assert " db=2 " in replies[2]
    check = aioredis.Redis(unix_socket_path=str(unix_redis), db=2, decode_responses=True)
    try:
        assert await check.get("over") == "unix"
        await check.select(0)
        assert await check.get("over") is None
    finally:
        await check.aclose()


# --- 10. aclose --------------------------------------------------------------------------------


async def test_aclose_fails_waiting_batches_and_later_calls(
    connect: Connect, redis_url: str, redis_client: aioredis.Redis
) -> None:
    name = unique("mux-close")
    connection = connect(redis_url, timeout_s=5.0, client_name=name)
    await connection.execute([("ECHO", "open")])
    waiting = [
        asyncio.create_task(connection.execute([("BLPOP", "q", "5")])),
        asyncio.create_task(connection.execute([("ECHO", "behind")])),
    ]
    await wait_blocked(redis_client, name)

    await connection.aclose()

    for task in waiting:
        took, result = await elapsed(task, 1.0)
        assert isinstance(result, RedisConnectionError), repr(result)
        assert took < 1.0  # timeout_s is 2 s
    took, result = await elapsed(connection.execute([("ECHO", "after")]))
    assert isinstance(result, RedisConnectionError), repr(result)
    await asyncio.sleep(0.05)
    assert await clients_named(redis_client, name) == []
    await connection.aclose()  # twice is harmless


async def test_aclose_before_connecting(
    connect: Connect, redis_url: str, redis_client: aioredis.Redis
) -> None:
    name = unique("mux-close-early")
    connection = connect(redis_url, client_name=name)

    await connection.aclose()

    with pytest.raises(RedisConnectionError):
        await connection.execute([("ECHO", "x")])
    assert await clients_named(redis_client, name) == []


async def test_a_batch_still_connecting_at_close_fails_and_later_calls_too(
    connect: Connect, redis_url: str, redis_client: aioredis.Redis
) -> None:
    """aclose() while the first batch is still opening the connection: that batch is
    waiting at close time, so it fails, later calls fail, and no connection stays open."""
    name = unique("mux-close-connecting")
    connection = connect(redis_url, client_name=name)
    connecting = asyncio.create_task(connection.execute([("ECHO", "first")]))
    await asyncio.sleep(0)  # inside create_connection / the handshake

    await connection.aclose()

    _, first = await elapsed(connecting, 1.0)
    _, later = await elapsed(connection.execute([("ECHO", "later")]))
    await asyncio.sleep(0.05)
    left_open = await clients_named(redis_client, name)
    assert isinstance(first, RedisConnectionError), f"batch waiting at close got {first!r}"
    assert isinstance(later, RedisConnectionError), f"call after close got {later!r}"
    assert left_open == [], f"a connection outlived aclose(): {left_open}"


# --- 11. large batches and replies --------------------------------------------------------------


async def test_a_batch_of_5000_commands(multiplexed: MultiplexedConnection) -> None:
    commands = [("RPUSH", "list", i) for i in range(5000)]

    replies = await multiplexed.execute([*commands, ("LLEN", "list"), ("LINDEX", "list", -1)])

    assert replies == [*range(1, 5001), 5000, "4999"]


async def test_multi_megabyte_values_among_small_batches(
    multiplexed: MultiplexedConnection,
) -> None:
    """A 2 MB write goes over the transport's high-water mark (writes pause) and its 2 MB
    reply comes in many reads; small batches around it still get their own replies."""
    big = "".join(chr(ord("a") + i % 26) for i in range(2 * 1024 * 1024))
    big_bytes = uuid.uuid4().hex * (3 * 1024 * 1024 // 32)

    async def small(i: int) -> list[Any]:
        return await multiplexed.execute([("ECHO", f"small-{i}")])

    results = await asyncio.gather(
        *(small(i) for i in range(20)),
        multiplexed.execute([("SET", "big", big), ("GET", "big"), ("STRLEN", "big")]),
        *(small(i) for i in range(20, 40)),
        multiplexed.execute([("ECHO", big_bytes), ("ECHO", "tail")]),
        *(small(i) for i in range(40, 60)),
    )

    smalls = [*results[:20], *results[21:41], *results[42:]]
    assert smalls == [[f"small-{i}"] for i in range(60)]
    ok, got, length = results[20]
    assert (ok, length) == ("OK", len(big))
    assert got == big
    echoed, tail = results[41]
    assert len(echoed) == len(big_bytes)
    assert echoed == big_bytes
    assert tail == "tail"
