"""One Redis connection that every task-script batch of a node shares: auto-pipelining.

A redis-py pipeline takes a connection from the pool, packs and parses in Python, and holds
the connection until its whole reply is read: about 200 µs of the node's CPU per round
trip on a 2-core VM, paid by every submit, report and dispatch pass. Here each batch is
written at once to one connection, whatever is still in flight on it, and Redis answers a
connection's commands in the order they came, so the replies are matched to the batches by
order. hiredis parses them in the protocol's callback: no pool, no lock and no task per
batch. (ioredis calls this auto-pipelining, redis-rs a multiplexed connection.)

What stays as with redis-py: a command Redis refuses comes back as redis-py's exception
object (NoScriptError, ReadOnlyError, ...) in its place; an outage raises redis-py's
ConnectionError or TimeoutError, and nothing is retried (a lost reply may belong to a
script that ran). The connection is made lazily and again after a failure, from the same
URL settings as the node's other client (TCP, TLS or unix socket, user and password,
database, client name); one idle for ``IDLE_CHECK_S`` is checked with a PING first, as
redis-py's health check does. A timeout closes the connection: the replies still owed on
it could no longer be matched.

Failover: when the node's pool finds the primary through Sentinel, each (re)connection here
asks the sentinels for the primary's address too. A READONLY reply (the primary was demoted
to a replica) retires the connection: the batches already written on it get their replies,
the next batch goes to a new connection, to the new primary. Durability: with
``min_replicas`` (the node's ``Durability``, or per call), WAIT is appended to the batch, in
the same write, and fewer acknowledgements raise ``ReplicationShortfall``.

Redis Cluster mode: each (re)connection goes to the primary owning the node's slot
(``cluster.ClusterOwner``); a reply saying the slot moved (MOVED, with the new owner, or a
script's "non local key") retires the connection the same way, and the owner is learned.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser  # redis-py's table of error prefixes
from redis.asyncio import Redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from coordinator.storage.cluster import ClusterOwner, ClusterOwnerPool
from coordinator.storage.connection import Durability
from coordinator.storage.packing import pack_command
from coordinator.storage.redis_errors import cluster_redirect

AddressOfPrimary = Callable[[], Awaitable[tuple[str, int]]]
"""Where the primary is now (asked of Sentinel on each connection)."""

IDLE_CHECK_S = 30.0
"""A connection unused for this long gets a PING before the next batch (redis-py's
``health_check_interval`` of the node's pool): a batch must not be lost to a connection
that a firewall or Redis's ``timeout`` dropped in silence."""


@dataclass
class _Batch:
    """A batch written and waiting for its replies."""

    future: asyncio.Future[list[Any]]
    expected: int
    replies: list[Any] = field(default_factory=list)


class _ReplyMatcher(asyncio.Protocol):
    """One open connection: writes batches, parses replies, hands each batch its own."""

    def __init__(self, encoding: str | None, errors: str) -> None:
        # An error reply becomes redis-py's exception for it (NoScriptError, ...), also
        # inside an array.
        self._reader = (
            hiredis.Reader(replyError=BaseParser.parse_error, encoding=encoding, errors=errors)
            if encoding
            else hiredis.Reader(replyError=BaseParser.parse_error)
        )
        self._waiting: deque[_Batch] = deque()
        self._transport: asyncio.Transport | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self.lost: Exception | None = None
        """Why the connection closed, once it has."""
        self.retired = False
        """No new batches: closes once the ones written have their replies."""
        self._retired_because: Exception = RedisConnectionError("Connection retired")
        self.last_used = time.monotonic()

    @property
    def is_open(self) -> bool:
        return self._transport is not None and self.lost is None and not self.retired

    def retire(self, reason: Exception) -> None:
        """Take no new batches; close when the waiting ones have their replies."""
        self.retired = True
        self._retired_because = reason
        if not self._waiting:
            self.close(reason)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (a cast, not an isinstance check: uvloop's transports do not
        # derive from asyncio.Transport).
        self._transport = cast(asyncio.Transport, transport)

    def send(self, packed: bytes, expected: int) -> asyncio.Future[list[Any]]:
        """Write one batch of ``expected`` commands; the future gets their replies."""
        if self.lost is not None:
            raise self._failure()
        assert self._transport is not None
        batch = _Batch(asyncio.get_running_loop().create_future(), expected)
        self._waiting.append(batch)
        self._transport.write(packed)
        self.last_used = time.monotonic()
        return batch.future

    async def writable(self) -> None:
        """Wait while the transport's buffer is over its high-water mark."""
        await self._writable.wait()

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except (hiredis.ProtocolError, UnicodeDecodeError) as exc:
                # The replies after it could no longer be matched: like a lost connection.
                self.close(RedisConnectionError(f"unreadable reply from Redis: {exc}"))
                return
            if reply is False:
                return
            if not self._waiting:
                self.close(RedisConnectionError(f"Redis sent a reply nobody asked for: {reply!r}"))
                return
            batch = self._waiting[0]
            batch.replies.append(reply)
            if len(batch.replies) == batch.expected:
                self._waiting.popleft()
                if not batch.future.done():  # its caller may have been cancelled
                    batch.future.set_result(batch.replies)
                if self.retired and not self._waiting:
                    self.close(self._retired_because)
                    return
        self.last_used = time.monotonic()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            reason = f": {exc}" if exc else ""
            self.lost = RedisConnectionError(f"Connection to Redis lost{reason}")
        self._fail_waiting()
        self._writable.set()

    def close(self, reason: Exception) -> None:
        """Close now (a timeout, a protocol error, shutdown): every waiting batch fails."""
        if self.lost is None:
            self.lost = reason
        if self._transport is not None:
            self._transport.abort()
        self._fail_waiting()

    def _fail_waiting(self) -> None:
        while self._waiting:
            future = self._waiting.popleft().future
            if not future.done():
                future.set_exception(self._failure())

    def _failure(self) -> Exception:
        """A new exception for one caller, like the one that closed the connection."""
        lost = self.lost or RedisConnectionError("Connection closed")
        return type(lost)(*lost.args)


class MultiplexedConnection:
    """Runs batches of Redis commands over one shared connection (see the module)."""

    def __init__(
        self,
        settings: AbstractConnection,
        timeout_s: float,
        *,
        address_of_primary: AddressOfPrimary | None = None,
        durability: Durability | None = None,
        cluster_owner: ClusterOwner | None = None,
    ) -> None:
        """``settings``: an unconnected redis-py connection, read for its URL settings only;
        ``address_of_primary``: where to connect instead of its host and port (Sentinel);
        ``durability``: WAIT after every batch (unless a call says otherwise);
        ``cluster_owner``: the owner of the node's slot, in Redis Cluster mode."""
        self._settings = settings
        self._timeout_s = timeout_s
        self._cluster_owner = cluster_owner
        if cluster_owner is not None:
            address_of_primary = cluster_owner.address
        self._address_of_primary = address_of_primary
        self.durability = durability or Durability()
        self._protocol: _ReplyMatcher | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    def like(
        cls, client: Redis, timeout_s: float, durability: Durability | None = None
    ) -> MultiplexedConnection:
        """One with the settings of ``client``'s connection pool (no socket opened yet),
        finding the primary through Sentinel as that pool does."""
        pool = client.connection_pool
        settings = pool.connection_class(**pool.connection_kwargs)
        address = pool.get_master_address if isinstance(pool, SentinelConnectionPool) else None
        owner = pool.cluster_owner if isinstance(pool, ClusterOwnerPool) else None
        return cls(
            settings,
            timeout_s,
            address_of_primary=address,
            durability=durability,
            cluster_owner=owner,
        )

    async def execute(
        self, commands: Sequence[Sequence[Any]], *, min_replicas: int | None = None
    ) -> list[Any]:
        """Send ``commands`` in one write and return their replies, in order; a command Redis
        refused is its exception object in the list. An outage raises: ConnectionError
        (unreachable, closed) or TimeoutError (no reply in time).

        With ``min_replicas`` (default: the connection's ``durability``) above 0, WAIT
        follows the commands in the same write, and ReplicationShortfall (a ConnectionError)
        is raised when fewer replicas than that acknowledged them in time."""
        if not commands:
            return []
        durability = self.durability
        if min_replicas is not None:
            durability = Durability(min_replicas, durability.timeout_ms)
        waits = durability.min_replicas > 0
        if waits:
            commands = [*commands, durability.wait_command()]
        packed = b"".join(pack_command(c) for c in commands)
        protocol = await self._open()
        extra_s = durability.timeout_ms / 1000 if waits else 0.0
        replies = await self._round_trip(protocol, packed, len(commands), extra_s)
        if any(isinstance(r, ReadOnlyError) for r in replies):
            # The primary was demoted (a failover): let the batches already written finish,
            # send the next ones to the primary Sentinel names now.
            protocol.retire(RedisConnectionError("Redis became a read-only replica"))
            if waits:  # WAIT was refused too (a replica): nothing to check, the batch failed
                raise RedisConnectionError("Redis became a read-only replica (a failover?)")
        if self._cluster_owner is not None:
            self._follow_the_slot(protocol, replies)
        if waits:
            durability.check(replies.pop())
        return replies

    def _follow_the_slot(self, protocol: _ReplyMatcher, replies: list[Any]) -> None:
        """Redis Cluster: a reply saying the slot is elsewhere retires the connection; the
        next batch goes to the owner (MOVED names it; otherwise it is asked again)."""
        redirect = next((r for r in replies if cluster_redirect(r)), None)
        if redirect is not None and self._cluster_owner is not None:
            self._cluster_owner.redirected(redirect)
            protocol.retire(RedisConnectionError(f"the Redis Cluster slot moved ({redirect})"))

    async def aclose(self) -> None:
        """Close the connection; batches still waiting fail. Later calls fail too."""
        self._closed = True
        if self._protocol is not None:
            self._protocol.close(RedisConnectionError("Connection closed by the coordinator"))
            self._protocol = None

    async def _round_trip(
        self, protocol: _ReplyMatcher, packed: bytes, expected: int, extra_s: float = 0.0
    ) -> list[Any]:
        try:
            async with asyncio.timeout(self._timeout_s + extra_s):
                await protocol.writable()
                return await protocol.send(packed, expected)
        except TimeoutError:
            protocol.close(RedisTimeoutError("Timeout reading from Redis"))
            raise RedisTimeoutError(
                f"no reply from Redis within {self._timeout_s:g} s (connection closed)"
            ) from None

    async def _open(self) -> _ReplyMatcher:
        """The open connection, made (or checked, when idle) first if need be."""
        protocol = self._protocol
        if protocol is not None and protocol.is_open and not self._idle(protocol):
            return protocol
        async with self._lock:  # one connection attempt at a time, shared by the callers
            if self._closed:
                raise RedisConnectionError("Connection closed by the coordinator")
            protocol = self._protocol
            if protocol is not None and protocol.is_open and self._idle(protocol):
                try:
                    await self._round_trip(protocol, pack_command(("PING",)), 1)
                except (RedisConnectionError, RedisTimeoutError):
                    protocol.close(RedisConnectionError("Connection failed its idle check"))
            if protocol is None or not protocol.is_open:
                protocol = await self._connect()
                if self._closed:  # aclose() ran while the connection was being made
                    protocol.close(RedisConnectionError("Connection closed by the coordinator"))
                    raise RedisConnectionError("Connection closed by the coordinator")
                self._protocol = protocol
            return protocol

    @staticmethod
    def _idle(protocol: _ReplyMatcher) -> bool:
        return time.monotonic() - protocol.last_used > IDLE_CHECK_S

    async def _connect(self) -> _ReplyMatcher:
        s = self._settings
        encoder = s.encoder
        loop = asyncio.get_running_loop()

        def protocol() -> _ReplyMatcher:
            encoding = encoder.encoding if encoder.decode_responses else None
            return _ReplyMatcher(encoding, encoder.encoding_errors)

        where = s.path if isinstance(s, UnixDomainSocketConnection) else ""
        transport: asyncio.Transport | None = None
        try:
            async with asyncio.timeout(s.socket_connect_timeout or self._timeout_s):
                if isinstance(s, UnixDomainSocketConnection):
                    transport, matcher = await loop.create_unix_connection(protocol, s.path)
                elif isinstance(s, Connection):
                    host, port = s.host, s.port
                    if self._address_of_primary is not None:
                        host, port = await self._address_of_primary()
                    where = f"{host}:{port}"
                    ssl = s.ssl_context.get() if isinstance(s, SSLConnection) else None
                    transport, matcher = await loop.create_connection(protocol, host, port, ssl=ssl)
                    if s.socket_keepalive:
                        _keepalive(transport.get_extra_info("socket"), s.socket_keepalive_options)
                else:
                    raise TypeError(f"unsupported Redis connection class {type(s).__name__}")
                replies = await matcher.send(*self._handshake())
            refused = next((r for r in replies if isinstance(r, Exception)), None)
            if refused is not None:
                raise refused  # a wrong password, a database that does not exist
        except BaseException as exc:
            if transport is not None:
                transport.abort()
            if self._cluster_owner is not None and isinstance(exc, OSError | TimeoutError):
                self._cluster_owner.redirected(RedisConnectionError(str(exc)))  # ask again
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(f"Timeout connecting to Redis at {where}") from None
            if isinstance(exc, OSError):
                raise RedisConnectionError(f"Error connecting to Redis at {where}: {exc}") from None
            raise
        return matcher

    def _handshake(self) -> tuple[bytes, int]:
        """AUTH, CLIENT SETNAME and SELECT as the URL asks, packed in one write."""
        s = self._settings
        commands: list[tuple[Any, ...]] = []
        if s.password is not None:
            user = (s.username,) if s.username else ()
            commands.append(("AUTH", *user, s.password))
        if s.client_name:
            commands.append(("CLIENT", "SETNAME", s.client_name))
        if s.db:
            commands.append(("SELECT", s.db))
        commands.append(("PING",))  # so that the handshake always waits for a reply
        return b"".join(pack_command(c) for c in commands), len(commands)


def _keepalive(sock: socket.socket, options: object) -> None:
    """SO_KEEPALIVE and the TCP keepalive timings of redis-py's connection settings."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    assert isinstance(options, Mapping)
    for option, value in options.items():
        sock.setsockopt(socket.IPPROTO_TCP, option, value)
