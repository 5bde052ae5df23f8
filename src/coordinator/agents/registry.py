"""The agent registry in Redis: register, heartbeat, status, deregister, get and discover.

Records are hashes at ``agent:{agent_id}``; every multi-key change is one Lua script, so the
indexes stay exact whatever nodes run concurrently. Time comes from Redis (``TIME``), so
liveness and health are the same on every node whatever its clock says.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis

from coordinator import page_tokens
from coordinator.agents.health_score import health_score
from coordinator.agents.records import (
    AgentRecord,
    AgentRegistration,
    AgentStatus,
    DiscoverPage,
    DiscoverQuery,
    RegistrationResult,
)
from coordinator.config import Settings
from coordinator.errors import NotFound
from coordinator.storage import keys
from coordinator.storage.scripts import Scripts

log = logging.getLogger(__name__)

RECORD_FIELDS = (
    "agent_id",
    "agent_type",
    "capabilities",
    "services",
    "endpoints",
    "metadata",
    "labels",
    "max_concurrency",
    "weight",
    "status",
    "status_reason",
    "load_metrics",
    "active_tasks",
    "registered_at_ms",
    "last_heartbeat_at_ms",
    "node_id",
    "avg_duration_ms",
    "recent_success",
)
"""The fields of ``agent:{agent_id}`` that make an AgentRecord (``index_keys`` is the scripts' own)."""

DECODED_AGENTS_CACHED = 16_384
"""Decoded agents a node keeps, keyed by the raw values of their records (see ``_decode_row``)."""


class AgentRegistry:
    """Agents' records and indexes, shared by every node that uses the same Redis."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._scripts = Scripts(redis)
        self._liveness_timeout_ms = int(settings.liveness_timeout_s * 1000)
        # An agent read within this long of its last heartbeat is live with freshness 1: its
        # status and health score, like the rest, depend on its record alone (health_score).
        self._steady_window_s = min(settings.heartbeat_interval_s, settings.liveness_timeout_s)
        self._decoded: OrderedDict[tuple[Any, ...] | str, AgentRecord] = OrderedDict()

    async def register(self, registration: AgentRegistration) -> RegistrationResult:
        """Create or update an agent's record; see ``lua/register_agent.lua``."""
        r = registration
        index_keys = [
            keys.type_index(r.agent_type),
            *(keys.capability_index(c) for c in r.capabilities),
            *(keys.service_index(s) for s in r.services),
            *(keys.label_index(k, v) for k, v in sorted(r.labels.items())),
        ]
        fields = {
            "agent_type": r.agent_type,
            "capabilities": json.dumps(list(r.capabilities)),
            "services": json.dumps(list(r.services)),
            "endpoints": json.dumps(r.endpoints, sort_keys=True),
            "metadata": json.dumps(r.metadata, sort_keys=True),
            "labels": json.dumps(r.labels, sort_keys=True),
            "max_concurrency": str(r.max_concurrency),
            "weight": repr(r.weight),
        }
        created, now_ms, record = await self._scripts.register_agent(
            keys=[
                keys.agent(r.agent_id),
                keys.AGENTS_ALL,
                keys.AGENTS_HEARTBEATS,
                *keys.status_indexes(),
                *index_keys,
            ],
            args=[r.agent_id, *(item for pair in fields.items() for item in pair)],
        )
        agent = self._decode(_pairs(record), int(now_ms))
        log.info(
            "agent registered" if created else "agent re-registered",
            extra={"agent_id": r.agent_id, "agent_type": r.agent_type},
        )
        return RegistrationResult(agent=agent, created=bool(created))

    async def heartbeat(
        self, agent_id: str, load_metrics: dict[str, float], status: AgentStatus | None
    ) -> tuple[AgentRecord, bool]:
        """Refresh liveness; replace load metrics if any are given; report ACTIVE or BUSY.

        Returns the agent and whether its assignment stream is open on a live node.
        """
        reply = await self._scripts.heartbeat(
            keys=[
                keys.agent(agent_id),
                keys.AGENTS_HEARTBEATS,
                *keys.status_indexes(),
                keys.AGENTS_CONNECTED,
            ],
            args=[
                agent_id,
                status.name if status else "",
                json.dumps(load_metrics, sort_keys=True) if load_metrics else "",
                keys.NODE_PRESENCE_PREFIX,
            ],
        )
        agent = self._decode_reply(agent_id, reply[:2])
        return agent, bool(reply[2])

    async def update_status(
        self, agent_id: str, status: AgentStatus, load_metrics: dict[str, float], reason: str
    ) -> AgentRecord:
        """Set status, reason and load metrics."""
        reply = await self._scripts.update_agent_status(
            keys=[keys.agent(agent_id), keys.AGENTS_HEARTBEATS, *keys.status_indexes()],
            args=[
                agent_id,
                status.name,
                json.dumps(load_metrics, sort_keys=True),
                reason,
                self._liveness_timeout_ms,
            ],
        )
        agent = self._decode_reply(agent_id, reply)
        log.info(
            "agent status set to %s", status.name, extra={"agent_id": agent_id, "reason": reason}
        )
        return agent

    async def deregister(self, agent_id: str, heartbeat_bound_ms: int | None = None) -> bool:
        """Remove every trace of an agent; True if there was one. Idempotent.

        With ``heartbeat_bound_ms``, only an agent whose last heartbeat is at or before it.
        """
        removed = await self._scripts.deregister_agent(
            keys=[
                keys.agent(agent_id),
                keys.AGENTS_ALL,
                keys.AGENTS_HEARTBEATS,
                *keys.status_indexes(),
                keys.AGENTS_CONNECTED,
            ],
            args=[
                agent_id,
                "" if heartbeat_bound_ms is None else heartbeat_bound_ms,
                keys.NODE_CHANNEL_PREFIX,
            ],
        )
        if removed:
            log.info("agent deregistered", extra={"agent_id": agent_id})
        return bool(removed)

    async def get(self, agent_id: str) -> AgentRecord:
        """One agent's record with effective status and health; NotFound if unknown."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.hgetall(keys.agent(agent_id))
            redis_time, record = await pipe.execute()
        if not record:
            raise NotFound(f"agent_id: no agent {agent_id!r} is registered")
        return self._decode(record, epoch_ms(redis_time))

    def decode_records(self, rows: Sequence[Sequence[Any]], now_ms: int) -> list[AgentRecord]:
        """Agents from their records' ``RECORD_FIELDS`` as read at ``now_ms`` (Redis time);
        a row of a record deleted meanwhile (no agent_id) is skipped."""
        return [self._decode_row(row, now_ms) for row in rows if row[0] is not None]

    async def discover(
        self,
        query: DiscoverQuery,
        *,
        item_bytes: Callable[[AgentRecord], int] | None = None,
        max_page_bytes: int = 0,
    ) -> DiscoverPage:
        """Agents matching ``query``, best health first, then by id, one page at a time.
        With ``item_bytes`` (what an agent adds to the reply), a page also ends before its
        items would exceed ``max_page_bytes``, though it always holds one agent when any
        remains; the next_page_token then continues right after the last agent returned."""
        fingerprint = _fingerprint(query)
        after = page_tokens.decode(query.page_token, fingerprint)
        stored = [s for s in keys.STORED_STATUSES if s in query.statuses]
        filter_keys = [
            *([keys.type_index(query.agent_type)] if query.agent_type else []),
            *(keys.capability_index(c) for c in query.capabilities),
            *(keys.service_index(s) for s in query.services),
            *(keys.label_index(k, v) for k, v in sorted(query.labels.items())),
        ]
        now_ms, records = await self._scripts.discover_agents(
            keys=[keys.AGENTS_HEARTBEATS, *(keys.status_index(s) for s in stored), *filter_keys],
            args=[
                len(stored),
                1 if AgentStatus.INACTIVE in query.statuses else 0,
                self._liveness_timeout_ms,
                keys.AGENT_KEY_PREFIX,
                *RECORD_FIELDS,
            ],
        )
        now_ms = int(now_ms)
        matches = [
            agent
            for agent in (self._decode_json_row(raw, now_ms) for raw in records)
            if agent is not None and _matches(agent, query)
        ]
        matches.sort(key=_order)
        remaining = matches if after is None else [a for a in matches if _order(a) > after]
        page = _within_bytes(remaining[: query.page_size], item_bytes, max_page_bytes)
        more = len(remaining) > len(page)
        return DiscoverPage(
            agents=page,
            next_page_token=page_tokens.encode(_order(page[-1]), fingerprint) if more else "",
            total_size=len(matches),
        )

    async def sweep_stale(self) -> list[str]:
        """Take agents with an expired heartbeat out of agents:active; returns their ids."""
        removed: list[str] = await self._scripts.sweep_stale_agents(
            keys=[keys.AGENTS_HEARTBEATS, keys.AGENTS_ACTIVE],
            args=[self._liveness_timeout_ms],
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

    def _decode_reply(self, agent_id: str, reply: Sequence[Any]) -> AgentRecord:
        if not reply:
            raise NotFound(f"agent_id: no agent {agent_id!r} is registered; register it again")
        now_ms, record = reply
        return self._decode(_pairs(record), int(now_ms))

    def _decode_row(self, row: Sequence[Any], now_ms: int) -> AgentRecord:
        """An AgentRecord from its record's ``RECORD_FIELDS`` values, as read at ``now_ms``.

        Discovery and dispatch read the same unchanged records again and again, and decoding
        them (JSON, health score, the dataclass) was most of their time. A decoded agent is
        kept under the record's raw values, so any change to the record (heartbeat, status,
        load, a finished task) is a different key and can never be answered from an older
        decoding. Only agents inside the steady window after their heartbeat are kept: there
        nothing of the AgentRecord depends on ``now_ms``. Later reads decode afresh.
        """
        key = tuple(row)
        agent = self._kept(key, now_ms)
        if agent is None:
            agent = self._decode(dict(zip(RECORD_FIELDS, row, strict=True)), now_ms)
            self._keep(key, agent, now_ms)
        return agent

    def _decode_json_row(self, raw: str, now_ms: int) -> AgentRecord | None:
        """Like ``_decode_row`` for a record as ``lua/discover_agents.lua`` returns it (its
        values as one JSON array), kept under that string; None for a deleted record."""
        agent = self._kept(raw, now_ms)
        if agent is None:
            row: list[Any] = [None if value is False else value for value in json.loads(raw)]
            if row[0] is None:
                return None
            agent = self._decode(dict(zip(RECORD_FIELDS, row, strict=True)), now_ms)
            self._keep(raw, agent, now_ms)
        return agent

    def _kept(self, key: tuple[Any, ...] | str, now_ms: int) -> AgentRecord | None:
        """The agent decoded from the record ``key``, if kept and still steady at ``now_ms``."""
        agent = self._decoded.get(key)
        if agent is None:
            return None
        if self._steady(agent, now_ms):
            self._decoded.move_to_end(key)
            return agent
        del self._decoded[key]  # past its window for good: time only moves on
        return None

    def _keep(self, key: tuple[Any, ...] | str, agent: AgentRecord, now_ms: int) -> None:
        """Keep ``agent`` under its record ``key`` if it is steady at ``now_ms``."""
        if self._steady(agent, now_ms):
            self._decoded[key] = agent
            if len(self._decoded) > DECODED_AGENTS_CACHED:
                self._decoded.popitem(last=False)

    def _steady(self, agent: AgentRecord, now_ms: int) -> bool:
        """Whether ``agent``, read at ``now_ms``, is inside the steady window (see __init__).
        The same arithmetic as ``_decode``, so both agree at the window's edge."""
        age_s = max(0.0, (now_ms - agent.last_heartbeat_at_ms) / 1000)
        return age_s <= self._steady_window_s

    def _decode(self, record: dict[str, str], now_ms: int) -> AgentRecord:
        """An AgentRecord from its stored hash, with status and health computed for ``now_ms``."""
        stored_status = AgentStatus[record["status"]]
        last_heartbeat_ms = int(record["last_heartbeat_at_ms"])
        age_s = max(0.0, (now_ms - last_heartbeat_ms) / 1000)
        live = age_s <= self._settings.liveness_timeout_s
        status = stored_status if live else AgentStatus.INACTIVE
        raw_metrics = record.get("load_metrics", "{}")  # differs per agent: not cached
        load_metrics = (
            {k: float(v) for k, v in json.loads(raw_metrics).items()} if raw_metrics != "{}" else {}
        )
        active_tasks = int(record.get("active_tasks") or 0)
        max_concurrency = int(record["max_concurrency"])
        recent_success = float(record.get("recent_success") or 1.0)
        avg_duration_ms = record.get("avg_duration_ms")
        return AgentRecord(
            agent_id=record["agent_id"],
            agent_type=record["agent_type"],
            capabilities=_json_list(record["capabilities"]),
            services=_json_list(record["services"]),
            endpoints=dict(_json_items(record["endpoints"])),
            metadata=dict(_json_items(record["metadata"])),
            labels=dict(_json_items(record["labels"])),
            max_concurrency=max_concurrency,
            weight=float(record["weight"]),
            status=status,
            stored_status=stored_status,
            health_score=health_score(
                status=status,
                heartbeat_age_s=age_s,
                heartbeat_interval_s=self._settings.heartbeat_interval_s,
                liveness_timeout_s=self._settings.liveness_timeout_s,
                active_tasks=active_tasks,
                max_concurrency=max_concurrency,
                load_metrics=load_metrics,
                recent_failure_rate=1.0 - recent_success,
            ),
            load_metrics=load_metrics,
            active_tasks=active_tasks,
            registered_at_ms=int(record["registered_at_ms"]),
            last_heartbeat_at_ms=last_heartbeat_ms,
            node_id=record.get("node_id") or "",
            status_reason=record.get("status_reason") or "",
            avg_duration_ms=float(avg_duration_ms) if avg_duration_ms else None,
            recent_success=recent_success,
        )


# Decoding records is the hot path of discovery. Agents of one fleet share most of their
# JSON fields (capabilities, labels, empty maps), so decoded values are cached by their raw
# text, as immutable tuples.
@functools.lru_cache(maxsize=8192)
def _json_list(raw: str) -> tuple[str, ...]:
    return tuple(json.loads(raw))


@functools.lru_cache(maxsize=8192)
def _json_items(raw: str) -> tuple[tuple[str, Any], ...]:
    return tuple(json.loads(raw).items())


def epoch_ms(redis_time: Sequence[Any]) -> int:
    """Epoch milliseconds from a Redis TIME reply (seconds, microseconds)."""
    seconds, micros = redis_time
    return int(seconds) * 1000 + int(micros) // 1000


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    """A dict from a Lua HGETALL reply (a flat list of field, value)."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _matches(agent: AgentRecord, query: DiscoverQuery) -> bool:
    """The full check of one candidate (the indexes only narrow the candidates down)."""
    return agent.status in query.statuses and agent.matches(
        agent_type=query.agent_type,
        capabilities=query.capabilities,
        services=query.services,
        labels=query.labels,
        min_health_score=query.min_health_score,
    )


def _within_bytes(
    agents: list[AgentRecord], item_bytes: Callable[[AgentRecord], int] | None, max_bytes: int
) -> list[AgentRecord]:
    """The longest head of ``agents`` whose items fit in ``max_bytes`` (at least one)."""
    if item_bytes is None:
        return agents
    total = 0
    for index, agent in enumerate(agents):
        total += item_bytes(agent)
        if index and total > max_bytes:
            return agents[:index]
    return agents


def _order(agent: AgentRecord) -> tuple[float, str]:
    """Discovery order: best health first, then agent_id."""
    return (-agent.health_score, agent.agent_id)


def _fingerprint(query: DiscoverQuery) -> str:
    return page_tokens.fingerprint(
        [
            sorted(s.name for s in query.statuses),
            query.agent_type,
            sorted(query.capabilities),
            sorted(query.services),
            sorted(query.labels.items()),
            query.min_health_score,
        ]
    )
