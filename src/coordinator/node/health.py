"""Serving health follows Redis: the standard grpc.health.v1 service reports SERVING only
while Redis answers and accepts writes.

Every COORDINATOR_HEALTH_CHECK_INTERVAL_S (with a COORDINATOR_REDIS_TIMEOUT_S deadline) a
monitor writes the node's presence key (``coordinator:nodes:{node_id}``, expiring after a
few intervals) and sets ``""`` and every service of the coordinator to SERVING or
NOT_SERVING; Watch streams see each change. A write, not a PING, because a Redis that
answers but refuses writes (a replica after a failover, maxmemory, a failing disk) cannot
serve the registry either. Settings keep the interval plus the deadline under 4 s, so a
change shows within 5 s.

The same round trip reads ``INFO memory`` (``coordinator.node.redis_memory``): a Redis that
may evict keys is refused (NOT_SERVING, and no start at all), and a Redis filling up is
logged before it refuses writes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from grpc_health.v1 import health, health_pb2
from redis.asyncio import Redis
from redis.exceptions import RedisError

from coordinator.config import ConfigError
from coordinator.node.redis_memory import MemoryWatch, RedisMemory, eviction_refusal
from coordinator.periodic import Periodic
from coordinator.storage import keys

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class RedisHealthMonitor:
    """Keeps the health servicer in step with Redis reachability."""

    def __init__(
        self,
        servicer: health.aio.HealthServicer,
        redis: Redis,
        service_names: Iterable[str],
        node_id: str,
        interval_s: float,
        timeout_s: float,
        memory: MemoryWatch | None = None,
    ) -> None:
        self.servicer = servicer
        self._redis = redis
        self._presence_key = keys.node_presence(node_id)
        self._presence_ttl_ms = int((3 * interval_s + timeout_s) * 1000)
        self._names = ["", *service_names]
        self._timeout_s = timeout_s
        self._serving: bool | None = None
        self.memory = memory or MemoryWatch(warn_ratio=0.9, allow_eviction=False)
        """What the last check read of Redis' memory, and whether it may serve on it."""
        self._loop = Periodic("redis-health-monitor", interval_s, self.check)

    @property
    def serving(self) -> bool:
        """True while the last check reached Redis."""
        return bool(self._serving)

    async def start(self) -> None:
        """Check once now (so the first answer is already right), then keep checking."""
        await self.check()
        self._loop.start()

    async def stop(self) -> None:
        """Stop checking (idempotent). Call before entering graceful shutdown."""
        await self._loop.stop()

    async def withdraw(self) -> None:
        """Delete the presence key at shutdown (best effort: it expires anyway)."""
        try:
            await asyncio.wait_for(self._redis.delete(self._presence_key), self._timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("could not delete the presence key (%r); it will expire", exc)

    async def refuse_evicting_redis(self) -> None:
        """At start-up: raise ConfigError when Redis may evict keys and that is not allowed.
        A Redis that does not answer yet is left to the health checks."""
        try:
            info = await asyncio.wait_for(self._redis.info("memory"), self._timeout_s)
        except (RedisError, OSError, TimeoutError):
            return
        memory = RedisMemory.from_info(info)
        if not self.memory.acceptable(memory):
            raise ConfigError(eviction_refusal(memory))

    async def check(self) -> bool:
        """Write the presence key and read Redis' memory in one round trip, and publish the
        result; returns whether the node may serve."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(self._presence_key, "1", px=self._presence_ttl_ms)
                pipe.info("memory")
                _, info = await asyncio.wait_for(pipe.execute(), self._timeout_s)
            usable = self.memory.acceptable(RedisMemory.from_info(info))
        except (RedisError, OSError, TimeoutError) as exc:
            usable = False
            if self._serving is not False:
                log.error("Redis is unreachable or refuses writes: health is NOT_SERVING (%r)", exc)
        if usable != self._serving:
            if usable and self._serving is False:
                log.warning("Redis accepts writes again: health is SERVING")
            self._serving = usable
            for name in self._names:
                await self.servicer.set(name, SERVING if usable else NOT_SERVING)
        return usable
