"""The liveness sweeper: one node at a time takes agents with expired heartbeats out of
``agents:active`` and deletes agents inactive for longer than the retention.

Every node runs a sweeper; each round, only the node that wins a short Redis lock sweeps.
The sweep itself is idempotent, so a lock that lapses mid-sweep costs nothing but work.
Liveness never depends on the sweep: readers compute INACTIVE from the heartbeat timestamp.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis

from coordinator.agents.registry import AgentRegistry
from coordinator.periodic import Periodic
from coordinator.storage import keys
from coordinator.storage.redis_errors import redis_unavailable

log = logging.getLogger(__name__)


class LivenessSweeper:
    """Runs ``sweep_once`` every ``interval_s`` on whichever node holds the lock."""

    def __init__(
        self, registry: AgentRegistry, redis: Redis, node_id: str, interval_s: float
    ) -> None:
        self._registry = registry
        self._redis = redis
        self._node_id = node_id
        self._interval_s = interval_s
        self._loop = Periodic("liveness-sweeper", interval_s, self._sweep_round)

    def start(self) -> None:
        """Begin sweeping in the background."""
        self._loop.start()

    async def stop(self) -> None:
        """Stop sweeping (idempotent)."""
        await self._loop.stop()

    async def sweep_once(self) -> bool:
        """Sweep if this node wins this round's lock; returns whether it swept.

        The lock is not released: it expires after one interval, so the cluster sweeps about
        once per interval whatever the number of nodes.
        """
        won = await self._redis.set(
            keys.LIVENESS_SWEEP_LOCK, self._node_id, nx=True, px=int(self._interval_s * 1000)
        )
        if not won:
            return False
        await self._registry.sweep_stale()
        await self._registry.purge_expired()
        return True

    async def _sweep_round(self) -> None:
        try:
            await self.sweep_once()
        except Exception as exc:
            if not redis_unavailable(exc):
                raise
            log.debug("liveness sweep skipped: Redis unavailable (%r)", exc)
