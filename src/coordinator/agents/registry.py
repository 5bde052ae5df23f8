"""The agent registry in Redis: register, heartbeat, status, deregister, get and discover.

Records are hashes at ``agent:{agent_id}``; every multi-key change is one Lua script (their
calls are in ``coordinator.agents.script_calls``), so the indexes stay exact whatever nodes
run concurrently. Time comes from Redis (``TIME``), so liveness and health are the same on
every node whatever its clock says. Records are decoded by ``coordinator.agents.record_codec``
and discovery pages through them in ``coordinator.agents.discovery``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis

from coordinator.agents.discovery import AgentDiscovery
from coordinator.agents.record_codec import RecordDecoder
from coordinator.agents.records import (
    AgentRecord,
    AgentRegistration,
    AgentStatus,
    DiscoverPage,
    DiscoverQuery,
    RegistrationResult,
)
from coordinator.agents.script_calls import (
    DeregisterAgent,
    Heartbeat,
    RecordRead,
    RegisterAgent,
    SweepStaleAgents,
    UpdateAgentStatus,
    run,
)
from coordinator.config import Settings
from coordinator.errors import NotFound
from coordinator.storage import keys
from coordinator.storage.redis_time import epoch_ms
from coordinator.storage.scripts import Scripts

log = logging.getLogger(__name__)


class AgentRegistry:
    """Agents' records and indexes, shared by every node that uses the same Redis."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._scripts = Scripts(redis)
        self._liveness_timeout_ms = int(settings.liveness_timeout_s * 1000)
        self._decoder = RecordDecoder(settings)
        self._discovery = AgentDiscovery(self._scripts, self._decoder, self._liveness_timeout_ms)

    async def register(self, registration: AgentRegistration) -> RegistrationResult:
        """Create or update an agent's record; see ``lua/register_agent.lua``."""
        registered = await run(self._scripts.register_agent, RegisterAgent(registration))
        agent = self._decoded(registered.read)
        log.info(
            "agent registered" if registered.created else "agent re-registered",
            extra={"agent_id": registration.agent_id, "agent_type": registration.agent_type},
        )
        return RegistrationResult(agent=agent, created=registered.created)

    async def heartbeat(
        self, agent_id: str, load_metrics: dict[str, float], status: AgentStatus | None
    ) -> tuple[AgentRecord, bool]:
        """Refresh liveness; replace load metrics if any are given; report ACTIVE or BUSY.

        Returns the agent and whether its assignment stream is open on a live node.
        """
        recorded = await run(self._scripts.heartbeat, Heartbeat(agent_id, status, load_metrics))
        if recorded is None:
            raise _unknown(agent_id)
        return self._decoded(recorded.read), recorded.streaming

    async def update_status(
        self, agent_id: str, status: AgentStatus, load_metrics: dict[str, float], reason: str
    ) -> AgentRecord:
        """Set status, reason and load metrics."""
        call = UpdateAgentStatus(agent_id, status, load_metrics, reason, self._liveness_timeout_ms)
        read = await run(self._scripts.update_agent_status, call)
        if read is None:
            raise _unknown(agent_id)
        agent = self._decoded(read)
        log.info(
            "agent status set to %s", status.name, extra={"agent_id": agent_id, "reason": reason}
        )
        return agent

    async def deregister(self, agent_id: str, heartbeat_bound_ms: int | None = None) -> bool:
        """Remove every trace of an agent; True if there was one. Idempotent.

        With ``heartbeat_bound_ms``, only an agent whose last heartbeat is at or before it.
        """
        removed = await run(
            self._scripts.deregister_agent, DeregisterAgent(agent_id, heartbeat_bound_ms)
        )
        if removed:
            log.info("agent deregistered", extra={"agent_id": agent_id})
        return removed

    async def get(self, agent_id: str) -> AgentRecord:
        """One agent's record with effective status and health; NotFound if unknown."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.hgetall(keys.agent(agent_id))
            redis_time, record = await pipe.execute()
        if not record:
            raise NotFound(f"agent_id: no agent {agent_id!r} is registered")
        return self._decoder.decode(record, epoch_ms(redis_time))

    def decode_records(self, rows: Sequence[Sequence[Any]], now_ms: int) -> list[AgentRecord]:
        """Agents from their records' ``RECORD_FIELDS`` as read at ``now_ms`` (Redis time);
        a row of a record deleted meanwhile (no agent_id) is skipped."""
        return [self._decoder.decode_row(row, now_ms) for row in rows if row[0] is not None]

    async def discover(
        self,
        query: DiscoverQuery,
        *,
        item_bytes: Callable[[AgentRecord], int] | None = None,
        max_page_bytes: int = 0,
    ) -> DiscoverPage:
        """One page of the agents matching ``query``; see ``AgentDiscovery.page``."""
        return await self._discovery.page(
            query, item_bytes=item_bytes, max_page_bytes=max_page_bytes
        )

    async def sweep_stale(self) -> list[str]:
        """Take agents with an expired heartbeat out of agents:active; returns their ids."""
        removed = await run(
            self._scripts.sweep_stale_agents, SweepStaleAgents(self._liveness_timeout_ms)
        )
        for agent_id in removed:
            log.warning("agent missed its heartbeats: now INACTIVE", extra={"agent_id": agent_id})
        return removed

    async def purge_expired(self, batch: int = 500) -> list[str]:
        """Deregister agents that have been INACTIVE longer than the retention."""
        now_ms = epoch_ms(await self._redis.time())
        bound_ms = (
            now_ms - self._liveness_timeout_ms - int(self._settings.inactive_retention_s * 1000)
        )
        expired = [
            str(agent_id)
            for agent_id in await self._redis.zrangebyscore(
                keys.AGENTS_HEARTBEATS, "-inf", bound_ms, start=0, num=batch
            )
        ]
        purged = [a for a in expired if await self.deregister(a, heartbeat_bound_ms=bound_ms)]
        for agent_id in purged:
            log.info("inactive agent past retention deleted", extra={"agent_id": agent_id})
        return purged

    def _decoded(self, read: RecordRead) -> AgentRecord:
        """The agent of a record a script read."""
        return self._decoder.decode(read.record, read.now_ms)


def _unknown(agent_id: str) -> NotFound:
    return NotFound(f"agent_id: no agent {agent_id!r} is registered; register it again")
