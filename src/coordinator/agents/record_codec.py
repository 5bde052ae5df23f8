"""Agents from their stored records: the hash at ``agent:{agent_id}`` decoded into an
AgentRecord whose effective status and health score are computed for a moment of Redis's
clock, and decoded agents kept between reads (discovery and dispatch read the same
unchanged records again and again)."""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from coordinator.agents.health_score import health_score
from coordinator.agents.records import AgentRecord, AgentStatus
from coordinator.config import Settings

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
"""Decoded agents a node keeps, keyed by the raw values of their records (see ``decode_row``)."""


class RecordDecoder:
    """Decodes agents' records for one node's settings, keeping the steady ones."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        # An agent read within this long of its last heartbeat is live with freshness 1: its
        # status and health score, like the rest, depend on its record alone (health_score).
        self._steady_window_s = min(settings.heartbeat_interval_s, settings.liveness_timeout_s)
        self._decoded: OrderedDict[tuple[Any, ...] | str, AgentRecord] = OrderedDict()

    def decode_row(self, row: Sequence[Any], now_ms: int) -> AgentRecord:
        """An AgentRecord from its record's ``RECORD_FIELDS`` values, as read at ``now_ms``.

        Decoding records (JSON, health score, the dataclass) was most of the time of
        discovery and dispatch. A decoded agent is kept under the record's raw values, so any
        change to the record (heartbeat, status, load, a finished task) is a different key
        and can never be answered from an older decoding. Only agents inside the steady
        window after their heartbeat are kept: there nothing of the AgentRecord depends on
        ``now_ms``. Later reads decode afresh.
        """
        key = tuple(row)
        agent = self._kept(key, now_ms)
        if agent is None:
            agent = self.decode(dict(zip(RECORD_FIELDS, row, strict=True)), now_ms)
            self._keep(key, agent, now_ms)
        return agent

    def decode_json_row(self, raw: str, now_ms: int) -> AgentRecord | None:
        """Like ``decode_row`` for a record as ``lua/discover_agents.lua`` returns it (its
        values as one JSON array), kept under that string; None for a deleted record."""
        agent = self._kept(raw, now_ms)
        if agent is None:
            row: list[Any] = [None if value is False else value for value in json.loads(raw)]
            if row[0] is None:
                return None
            agent = self.decode(dict(zip(RECORD_FIELDS, row, strict=True)), now_ms)
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
        The same arithmetic as ``decode``, so both agree at the window's edge."""
        age_s = max(0.0, (now_ms - agent.last_heartbeat_at_ms) / 1000)
        return age_s <= self._steady_window_s

    def decode(self, record: dict[str, str], now_ms: int) -> AgentRecord:
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


# Agents of one fleet share most of their JSON fields (capabilities, labels, empty maps),
# so decoded values are cached by their raw text, as immutable tuples.
@functools.lru_cache(maxsize=8192)
def _json_list(raw: str) -> tuple[str, ...]:
    return tuple(json.loads(raw))


@functools.lru_cache(maxsize=8192)
def _json_items(raw: str) -> tuple[tuple[str, Any], ...]:
    return tuple(json.loads(raw).items())
