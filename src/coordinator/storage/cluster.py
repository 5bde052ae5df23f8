"""Redis Cluster mode: the node talks to the one primary that owns its hash tag's slot.

With ``COORDINATOR_REDIS_CLUSTER_TAG`` every key of the node is in one hash slot
(``key_tags``), so the node needs no cluster client: it asks the nodes it knows (REDIS_URL's,
the seed, then every node a previous answer named) ``CLUSTER SLOTS``, connects to the
primary that owns the slot, and uses it like a single Redis, the way Sentinel mode uses the
primary Sentinel names (``connection``). Each new connection asks where the owner is now.

Resharding and failover: once the slot has moved, the old owner answers MOVED (with the new
owner's address, remembered at once) and a script's first key is "non local" (it stops
before any write); a dead owner refuses connections (the owner is then asked again of the
seeds). Each of those calls fails (UNAVAILABLE at the edge, ``redis_errors``), and the
pooled connections still on the old owner are replaced when next taken from the pool. The
scripts name their keys inside (``K``), not in KEYS, so Redis cannot refuse them whole
while the slot is half moved: move it in one step (docs/scaling.md, "Resharding").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis
from redis.asyncio import BlockingConnectionPool
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.connection import Connection as SyncConnection
from redis.connection import ConnectionPool as SyncConnectionPool
from redis.connection import SSLConnection as SyncSSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, RedisError
from redis.retry import Retry

from coordinator.storage.packing import PackedConnection, PackedSSLConnection
from coordinator.storage.redis_errors import cluster_redirect

log = logging.getLogger(__name__)

Address = tuple[str, int]


class ClusterOwner:
    """Where the primary owning one hash slot is, asked of the cluster's nodes when unknown."""

    def __init__(self, seed: Address, slot: int, node_kwargs: dict[str, Any]) -> None:
        """``node_kwargs``: how to talk to any node (user, password, TLS, timeouts). Each
        node is asked once, without retries: a dead one must not hold up asking the next."""
        self.slot = slot
        self._seeds: list[Address] = [seed]
        self._node_kwargs = node_kwargs
        self.known: Address | None = None
        """The owner as last learned; None: ask again."""
        self._last_failure = ""

    async def address(self) -> Address:
        """The owner's host and port (asked of the nodes when not known)."""
        if self.known is None:
            for node in self._candidates():
                client = AsyncRedis(
                    host=node[0],
                    port=node[1],
                    retry=AsyncRetry(NoBackoff(), 0),
                    **self._node_kwargs,
                )
                try:
                    reply = await client.execute_command("CLUSTER SLOTS")
                except (RedisError, OSError) as exc:
                    self._failed(node, exc)
                    continue
                finally:
                    await client.aclose()
                if self._learn(node, reply):
                    break
        return self._owner()

    def address_sync(self) -> Address:
        """``address`` for synchronous clients."""
        if self.known is None:
            for node in self._candidates():
                client = redis.Redis(
                    host=node[0], port=node[1], retry=Retry(NoBackoff(), 0), **self._node_kwargs
                )
                try:
                    reply = client.execute_command("CLUSTER SLOTS")
                except (RedisError, OSError) as exc:
                    self._failed(node, exc)
                    continue
                finally:
                    client.close()
                if self._learn(node, reply):
                    break
        return self._owner()

    def redirected(self, exc: BaseException) -> None:
        """A reply said the slot is elsewhere: MOVED names the new owner; any other
        redirect or a failed connection sends the next connection to ask again."""
        if isinstance(exc, MovedError):
            moved: Address = (exc.host, int(exc.port))
            if moved != self.known:
                log.warning("the Redis Cluster moved slot %s to %s:%s", self.slot, *moved)
            self.known = moved
        elif cluster_redirect(exc) or isinstance(exc, RedisConnectionError | OSError):
            self.known = None

    def _failed(self, node: Address, exc: BaseException) -> None:
        """Keep why a node did not answer, for the error when none did ("cluster support
        disabled": REDIS_URL is a plain Redis, not a node of a Redis Cluster)."""
        self._last_failure = f"{node[0]}:{node[1]}: {exc}"
        log.debug("cluster node %s:%s did not answer CLUSTER SLOTS: %r", *node, exc)

    def _candidates(self) -> list[Address]:
        return list(self._seeds)

    def _learn(self, asked: Address, reply: Sequence[Any]) -> bool:
        """Take the owner (and every node, as a seed for later) from a CLUSTER SLOTS reply."""
        for start, end, primary, *_replicas in reply:
            for node in (primary, *_replicas):
                seed = (_text(node[0]) or asked[0], int(node[1]))  # "" or "?": the one asked
                if seed not in self._seeds:
                    self._seeds.append(seed)
            if int(start) <= self.slot <= int(end):
                self.known = (_text(primary[0]) or asked[0], int(primary[1]))
        return self.known is not None

    def _owner(self) -> Address:
        if self.known is None:
            nodes = ", ".join(f"{h}:{p}" for h, p in self._candidates())
            raise RedisConnectionError(
                f"no node of the Redis Cluster ({nodes}) named an owner of slot {self.slot} "
                f"(last: {self._last_failure or 'the slot is not assigned'})"
            )
        return self.known


def _text(value: Any) -> str:
    text = value.decode() if isinstance(value, bytes) else str(value)
    return "" if text == "?" else text


class _OwnerAware:
    """What the connection mixins below share: the ``ClusterOwner`` their pool passes in
    the connection keyword arguments (``_OwnerPool``)."""

    cluster_owner: ClusterOwner
    host: str
    port: int

    def __init__(self, **kwargs: Any) -> None:
        self.cluster_owner = kwargs.pop("cluster_owner")
        super().__init__(**kwargs)


class _OwnerAddressed(_OwnerAware):
    """Mixed in before a redis-py asyncio connection class: connects to the slot's owner."""

    async def _connect(self) -> None:
        self.host, self.port = await self.cluster_owner.address()
        try:
            await super()._connect()  # type: ignore[misc]
        except BaseException as exc:
            self.cluster_owner.redirected(exc)
            raise

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)  # type: ignore[misc]
        except RedisError as exc:
            self.cluster_owner.redirected(exc)
            raise


class ClusterOwnerConnection(_OwnerAddressed, PackedConnection):
    """TCP to the slot's owner."""


class ClusterOwnerSSLConnection(_OwnerAddressed, PackedSSLConnection):
    """TLS (rediss://) to the slot's owner."""


class _OwnerPool:
    """Mixed in before a redis-py pool class: its connections are given the owner."""

    cluster_owner: ClusterOwner
    connection_kwargs: dict[str, Any]

    def __init__(self, cluster_owner: ClusterOwner, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cluster_owner = cluster_owner
        self.connection_kwargs["cluster_owner"] = cluster_owner


class ClusterOwnerPool(_OwnerPool, BlockingConnectionPool):
    """The node's pool in cluster mode: a connection still on a former owner is made again
    (to the owner now) when taken from the pool."""

    async def ensure_connection(self, connection: Any) -> None:
        known = self.cluster_owner.known
        if connection.is_connected and (connection.host, connection.port) != known:
            await connection.disconnect()
        await super().ensure_connection(connection)


class _SyncOwnerAddressed(_OwnerAware):
    """Mixed in before a synchronous redis-py connection class (the metrics' scrapes)."""

    def _connect(self) -> Any:
        self.host, self.port = self.cluster_owner.address_sync()
        try:
            return super()._connect()  # type: ignore[misc]
        except BaseException as exc:
            self.cluster_owner.redirected(exc)
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except RedisError as exc:
            self.cluster_owner.redirected(exc)
            raise


class SyncClusterOwnerConnection(_SyncOwnerAddressed, SyncConnection):
    """TCP to the slot's owner, synchronous."""


class SyncClusterOwnerSSLConnection(_SyncOwnerAddressed, SyncSSLConnection):
    """TLS to the slot's owner, synchronous."""


class SyncClusterOwnerPool(_OwnerPool, SyncConnectionPool):
    """``ClusterOwnerPool`` for synchronous clients."""

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        connection = super().get_connection(*args, **kwargs)
        if (connection.host, connection.port) != self.cluster_owner.known:
            connection.disconnect()
            connection.connect()
        return connection
