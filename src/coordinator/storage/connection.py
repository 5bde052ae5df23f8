"""How a node reaches Redis: one Redis at REDIS_URL, the primary a Sentinel set names, or
the primary of a Redis Cluster that owns the slot of the node's hash tag (``cluster``).

With ``COORDINATOR_REDIS_SENTINELS`` set, every client of the node asks the sentinels for
the primary of ``COORDINATOR_REDIS_SENTINEL_MASTER`` each time it opens a connection (redis-py's
``SentinelConnectionPool``), so a failover is followed without a restart: connections to
the old primary break (it died) or answer READONLY (it was demoted), are dropped, and the
next ones go to the new primary. REDIS_URL then gives only what is not an address: user and
password of the data nodes, database, TLS (``rediss://``).

Durability (``COORDINATOR_REDIS_MIN_REPLICAS``): Redis replicates asynchronously, so a
write the primary acknowledged can be lost when a replica that had not received it is
promoted. ``WAIT n timeout`` after the write, on the same connection and in the same round
trip, answers only once n replicas have it; fewer is ``ReplicationShortfall``, an outage to
the edge (UNAVAILABLE): the write may or may not survive a failover, and a retry with the
same request_id is safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.sentinel
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from coordinator.config import Settings
from coordinator.config_checks import check_redis_cluster
from coordinator.storage import cluster
from coordinator.storage.key_tags import slot_of
from coordinator.storage.packing import PACKED_CLASSES
from coordinator.storage.redis_errors import ReplicationShortfall


@dataclass(frozen=True)
class Durability:
    """``WAIT min_replicas timeout_ms`` after writes; ``min_replicas`` 0 sends no WAIT."""

    min_replicas: int = 0
    timeout_ms: int = 500

    @classmethod
    def of(cls, settings: Settings) -> Durability:
        """The durability the node's settings ask for."""
        return cls(settings.redis_min_replicas, settings.redis_replica_timeout_ms)

    def wait_command(self) -> tuple[str, int, int]:
        """The WAIT command to send after a write."""
        return ("WAIT", self.min_replicas, self.timeout_ms)

    def check(self, acked: Any) -> None:
        """Raise ReplicationShortfall when WAIT's reply ``acked`` is below ``min_replicas``."""
        if isinstance(acked, Exception):
            raise acked
        if int(acked) < self.min_replicas:
            raise ReplicationShortfall(
                f"the write reached only {int(acked)} of {self.min_replicas} Redis replicas "
                f"within {self.timeout_ms} ms; retry with the same request_id"
            )


def _connection_kwargs(settings: Settings) -> dict[str, Any]:
    """Settings shared by every asyncio connection of the node (no silent retries: a script
    whose reply was lost may have run, and running it again is not always harmless; the
    caller gets UNAVAILABLE at once and retries with request_id or fencing tokens)."""
    return {
        "decode_responses": True,
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "retry": Retry(NoBackoff(), retries=0),
        "client_name": f"aitbc-coordinator:{settings.node_id}",
    }


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The primary through Sentinel, waiting for a free connection like the node's pool."""

    async def aclose(self) -> None:
        """Close the pool and the connections to the sentinels (the client's ``aclose``)."""
        await super().aclose()
        await self.sentinel_manager.aclose()


def connect_redis(settings: Settings, max_connections: int | None = None) -> Redis:
    """An asyncio Redis client whose calls fail fast (then UNAVAILABLE) when Redis is down.

    The pool blocks when all its connections are busy (up to the Redis timeout) instead of
    failing at once, so a burst of calls queues rather than being refused. With sentinels
    configured, each new connection goes to the primary the sentinels name now.
    """
    pool_kwargs = {
        **_connection_kwargs(settings),
        "max_connections": max_connections or settings.redis_max_connections,
        "timeout": settings.redis_timeout_s,
    }
    if settings.redis_cluster_tag:
        url, tls = _cluster_url(settings)
        pool: BlockingConnectionPool = cluster.ClusterOwnerPool(
            _cluster_owner(settings),
            **url,
            **pool_kwargs,
            connection_class=(
                cluster.ClusterOwnerSSLConnection if tls else cluster.ClusterOwnerConnection
            ),
        )
    elif settings.redis_sentinels:
        pool = _BlockingSentinelPool(
            settings.redis_sentinel_master,
            _sentinels(settings),
            **_without_address(dict(parse_url(settings.redis_url))),
            **pool_kwargs,
        )
    else:
        pool = BlockingConnectionPool.from_url(settings.redis_url, **pool_kwargs)
        # The URL chose the connection class (TCP, TLS, unix socket): the same, packing in C.
        pool.connection_class = PACKED_CLASSES.get(pool.connection_class, pool.connection_class)
    return Redis.from_pool(pool)  # the client owns the pool and closes it


def _cluster_url(settings: Settings) -> tuple[dict[str, Any], bool]:
    """REDIS_URL's settings but its address (the cluster names the owner's) and database
    (0, the only one), and whether it asks for TLS (rediss://)."""
    url = dict(parse_url(settings.redis_url))
    for name in ("host", "port", "db"):
        url.pop(name, None)
    return url, url.pop("connection_class", None) is not None


def _cluster_owner(settings: Settings) -> cluster.ClusterOwner:
    """Where the owner of the tag's slot is, asked of REDIS_URL's node first."""
    check_redis_cluster(settings)  # settings built in code get the database rule too
    address = parse_url(settings.redis_url)
    url, tls = _cluster_url(settings)
    node_kwargs = {
        **url,
        "ssl": tls,
        "decode_responses": True,
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
    }
    seed = (str(address.get("host", "localhost")), int(address.get("port", 6379)))
    return cluster.ClusterOwner(seed, slot_of(settings.redis_cluster_tag), node_kwargs)


def _sentinels(settings: Settings) -> Sentinel:
    return Sentinel(list(settings.redis_sentinels), sentinel_kwargs=_sentinel_kwargs(settings))


def _sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    """How to talk to the sentinels themselves (their own password, if any)."""
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
    }
    if settings.redis_sentinel_password:
        kwargs["password"] = settings.redis_sentinel_password
    return kwargs


def connect_redis_sync(settings: Settings, client_name: str) -> redis.Redis:
    """A synchronous client (the metrics' scrapes run in the HTTP server's thread), also
    following the primary through Sentinel when sentinels are configured."""
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
        "retry": redis.retry.Retry(NoBackoff(), retries=0),
        "client_name": client_name,
    }
    if settings.redis_cluster_tag:
        url, tls = _cluster_url(settings)
        pool = cluster.SyncClusterOwnerPool(
            _cluster_owner(settings),
            **url,
            **kwargs,
            connection_class=(
                cluster.SyncClusterOwnerSSLConnection if tls else cluster.SyncClusterOwnerConnection
            ),
        )
        return redis.Redis(connection_pool=pool)
    if not settings.redis_sentinels:
        return redis.Redis.from_url(settings.redis_url, **kwargs)
    sentinels = redis.sentinel.Sentinel(
        list(settings.redis_sentinels), sentinel_kwargs=_sentinel_kwargs(settings)
    )
    url = _without_address(dict(redis.connection.parse_url(settings.redis_url)))
    client: redis.Redis = sentinels.master_for(settings.redis_sentinel_master, **url, **kwargs)
    return client


def _without_address(url: dict[str, Any]) -> dict[str, Any]:
    """REDIS_URL's settings but its host and port (the sentinels name the primary's), and
    ``ssl`` for the Sentinel pool instead of the class rediss:// chose."""
    url.pop("host", None)
    url.pop("port", None)
    if url.pop("connection_class", None) is not None:  # rediss://: TLS to the data nodes
        url["ssl"] = True
    return url


async def run_script_durably(
    client: Redis,
    durability: Durability,
    script: AsyncScript,
    keys: Sequence[Any] = (),
    args: Sequence[Any] = (),
) -> Any:
    """Run ``script`` on the pooled ``client`` and return its reply once
    ``durability.min_replicas`` replicas have the write: one round trip, WAIT sent after the
    script on the same connection. ``min_replicas`` 0: the script alone. Raises the script's
    error, or ReplicationShortfall (the write happened on the primary but may not survive a
    failover: retry with the same request_id)."""
    if durability.min_replicas <= 0:
        return await script(keys=keys, args=args)
    async with client.pipeline(transaction=False) as pipe:
        await script(keys=keys, args=args, client=pipe)
        pipe.execute_command(*durability.wait_command())
        reply, acked = await pipe.execute(raise_on_error=False)
    if isinstance(reply, Exception):
        raise reply
    durability.check(acked)
    return reply
