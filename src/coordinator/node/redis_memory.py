"""What the node reads of Redis' memory: how full it is, and whether it may evict keys.

Every key the coordinator writes is state: a queued task, an agent's record, a lease. Redis
under ``maxmemory`` with an eviction policy (``allkeys-lru``, ``volatile-ttl``, ...) drops
keys silently to make room, which here means tasks that vanish from their queues; only
``noeviction`` (refuse the write, which the node answers UNAVAILABLE "Redis is full") keeps
what was accepted. So, like Sidekiq and BullMQ, the node refuses an evicting Redis: it does
not start on one, and health is NOT_SERVING while one is found later, unless
COORDINATOR_REDIS_ALLOW_EVICTION says the operator knows better (then it logs an error).

The reading comes from ``INFO memory``, not ``CONFIG GET`` (which managed Redis services
often disable), piggybacked on the health check's round trip.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

SAFE_POLICY = "noeviction"
"""The only ``maxmemory-policy`` under which Redis never drops a key on its own."""


@dataclass(frozen=True)
class RedisMemory:
    """One reading of ``INFO memory``."""

    used_bytes: int
    max_bytes: int
    """``maxmemory``: 0 when Redis has no limit (it grows until the machine runs out)."""
    policy: str
    """``maxmemory-policy``; empty when Redis did not say."""

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> RedisMemory:
        """From redis-py's parsed ``INFO memory`` reply."""
        return cls(
            used_bytes=int(info.get("used_memory", 0)),
            max_bytes=int(info.get("maxmemory", 0)),
            policy=str(info.get("maxmemory_policy", "")),
        )

    @property
    def evicts(self) -> bool:
        """True when Redis may drop keys to make room (an eviction policy and a limit: with
        no ``maxmemory`` no policy ever runs, but a limit set later would start it, so any
        policy but noeviction counts)."""
        return bool(self.policy) and self.policy != SAFE_POLICY

    @property
    def used_ratio(self) -> float | None:
        """used / maxmemory, or None without a limit."""
        return self.used_bytes / self.max_bytes if self.max_bytes else None


def eviction_refusal(memory: RedisMemory) -> str:
    """The message with which a node refuses an evicting Redis."""
    return (
        f"Redis has maxmemory-policy {memory.policy}: under memory pressure it would silently "
        f"delete queued tasks and agent records. Set `maxmemory-policy {SAFE_POLICY}` (writes "
        "are then refused when Redis is full, and nothing accepted is lost), or set "
        "COORDINATOR_REDIS_ALLOW_EVICTION=true to run anyway"
    )


class MemoryWatch:
    """Judges each reading: whether the node may serve on this Redis, and when to warn that
    it is filling up (once per crossing of ``warn_ratio``, not on every check)."""

    def __init__(self, *, warn_ratio: float, allow_eviction: bool) -> None:
        self._warn_ratio = warn_ratio
        self._allow_eviction = allow_eviction
        self._warned_full = False
        self._warned_policy: str | None = None
        self.last: RedisMemory | None = None
        """The latest reading (metrics read it)."""

    def acceptable(self, memory: RedisMemory) -> bool:
        """Record ``memory``; False when its policy may evict keys and that is not allowed."""
        self.last = memory
        self._note_fill(memory)
        if not memory.evicts:
            self._warned_policy = None
            return True
        if self._warned_policy != memory.policy:
            self._warned_policy = memory.policy
            if self._allow_eviction:
                log.error(
                    "%s (allowed by COORDINATOR_REDIS_ALLOW_EVICTION)", eviction_refusal(memory)
                )
            else:
                log.error("health is NOT_SERVING: %s", eviction_refusal(memory))
        return self._allow_eviction

    def _note_fill(self, memory: RedisMemory) -> None:
        ratio = memory.used_ratio
        if ratio is None:
            return
        full = ratio >= self._warn_ratio
        if full and not self._warned_full:
            log.warning(
                "Redis memory is %.0f%% of maxmemory (%d of %d bytes): when it is full, writes "
                "are refused (UNAVAILABLE) until finished tasks are forgotten or the limit rises",
                ratio * 100,
                memory.used_bytes,
                memory.max_bytes,
            )
        elif not full and self._warned_full:
            log.info("Redis memory is back under %.0f%% of maxmemory", self._warn_ratio * 100)
        self._warned_full = full
