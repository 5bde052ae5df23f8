"""Typed calls of the registry's Lua scripts: each class owns one script's KEYS, ARGV and
reply positions, as documented at the top of its ``lua/<name>.lua``; callers read named
results and never index a reply.

``run(script, call)`` sends one call and parses its reply.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from redis.commands.core import AsyncScript

from coordinator.agents.records import AgentRegistration, AgentStatus
from coordinator.storage import keys

Reply = TypeVar("Reply", covariant=True)


class AgentScriptCall(Protocol[Reply]):
    """One call of a registry script: its KEYS, its ARGV, and how to read its reply."""

    def keys(self) -> list[str]:
        """KEYS of the call."""
        ...

    def args(self) -> list[Any]:
        """ARGV of the call."""
        ...

    def parse(self, reply: Any) -> Reply:
        """The named result of the script's reply."""
        ...


async def run(script: AsyncScript, call: AgentScriptCall[Reply]) -> Reply:
    """Send ``call`` to ``script`` (loaded on its Redis client) and parse the reply."""
    return call.parse(await script(keys=call.keys(), args=call.args()))


@dataclass(frozen=True)
class RecordRead:
    """An agent's stored hash as a script read it, at ``now_ms`` of Redis's clock."""

    now_ms: int
    record: dict[str, str]


def _record_read(now_ms: Any, flat_record: Sequence[str]) -> RecordRead:
    """From a script's ``now_ms`` and HGETALL of the record (a flat field, value list)."""
    record = dict(zip(flat_record[::2], flat_record[1::2], strict=True))
    return RecordRead(int(now_ms), record)


@dataclass(frozen=True)
class Registered:
    """The reply of ``lua/register_agent.lua``."""

    created: bool
    read: RecordRead


@dataclass(frozen=True)
class RegisterAgent:
    """``lua/register_agent.lua``: create or update an agent's record and its indexes."""

    registration: AgentRegistration

    def keys(self) -> list[str]:
        r = self.registration
        return [
            keys.agent(r.agent_id),
            keys.AGENTS_ALL,
            keys.AGENTS_HEARTBEATS,
            *keys.status_indexes(),
            keys.type_index(r.agent_type),
            *(keys.capability_index(c) for c in r.capabilities),
            *(keys.service_index(s) for s in r.services),
            *(keys.label_index(k, v) for k, v in sorted(r.labels.items())),
        ]

    def args(self) -> list[Any]:
        r = self.registration
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
        return [r.agent_id, *(item for pair in fields.items() for item in pair)]

    def parse(self, reply: Any) -> Registered:
        created, now_ms, flat_record = reply
        return Registered(bool(created), _record_read(now_ms, flat_record))


@dataclass(frozen=True)
class Heartbeat:
    """``lua/heartbeat.lua``: refresh liveness, maybe the load metrics and reported status."""

    agent_id: str
    status: AgentStatus | None
    load_metrics: dict[str, float]

    def keys(self) -> list[str]:
        return [
            keys.agent(self.agent_id),
            keys.AGENTS_HEARTBEATS,
            *keys.status_indexes(),
            keys.AGENTS_CONNECTED,
        ]

    def args(self) -> list[Any]:
        return [
            self.agent_id,
            self.status.name if self.status else "",
            json.dumps(self.load_metrics, sort_keys=True) if self.load_metrics else "",
            keys.NODE_PRESENCE_PREFIX,
        ]

    def parse(self, reply: Any) -> HeartbeatRecorded | None:
        """None when the agent is not registered."""
        if not reply:
            return None
        now_ms, flat_record, streaming = reply
        return HeartbeatRecorded(_record_read(now_ms, flat_record), bool(streaming))


@dataclass(frozen=True)
class HeartbeatRecorded:
    """The reply of ``lua/heartbeat.lua`` for a registered agent."""

    read: RecordRead
    streaming: bool
    """Whether the agent's assignment stream is open on a live node."""


@dataclass(frozen=True)
class UpdateAgentStatus:
    """``lua/update_agent_status.lua``: set status, reason and load metrics."""

    agent_id: str
    status: AgentStatus
    load_metrics: dict[str, float]
    reason: str
    liveness_timeout_ms: int

    def keys(self) -> list[str]:
        return [keys.agent(self.agent_id), keys.AGENTS_HEARTBEATS, *keys.status_indexes()]

    def args(self) -> list[Any]:
        return [
            self.agent_id,
            self.status.name,
            json.dumps(self.load_metrics, sort_keys=True),
            self.reason,
            self.liveness_timeout_ms,
        ]

    def parse(self, reply: Any) -> RecordRead | None:
        """None when the agent is not registered."""
        if not reply:
            return None
        now_ms, flat_record = reply
        return _record_read(now_ms, flat_record)


@dataclass(frozen=True)
class DeregisterAgent:
    """``lua/deregister_agent.lua``: remove every trace of an agent (its node is told)."""

    agent_id: str
    heartbeat_bound_ms: int | None = None
    """Only if its last heartbeat is at or before this bound (None: whatever it is)."""

    def keys(self) -> list[str]:
        return [
            keys.agent(self.agent_id),
            keys.AGENTS_ALL,
            keys.AGENTS_HEARTBEATS,
            *keys.status_indexes(),
            keys.AGENTS_CONNECTED,
        ]

    def args(self) -> list[Any]:
        bound = "" if self.heartbeat_bound_ms is None else self.heartbeat_bound_ms
        return [self.agent_id, bound, keys.NODE_CHANNEL_PREFIX]

    def parse(self, reply: Any) -> bool:
        """Whether there was an agent (old enough) to remove."""
        return bool(reply)


@dataclass(frozen=True)
class Discovered:
    """The reply of ``lua/discover_agents.lua``."""

    now_ms: int
    json_rows: list[str]
    """Each candidate's record fields (in the order asked) as one JSON array."""


@dataclass(frozen=True)
class DiscoverAgents:
    """``lua/discover_agents.lua``: the records of a discovery's candidates, read through
    the indexes of the stored statuses asked for and the filter indexes."""

    stored_statuses: Sequence[AgentStatus]
    include_inactive: bool
    filter_keys: Sequence[str]
    liveness_timeout_ms: int
    record_fields: Sequence[str]

    def keys(self) -> list[str]:
        return [
            keys.AGENTS_HEARTBEATS,
            *(keys.status_index(s.name) for s in self.stored_statuses),
            *self.filter_keys,
        ]

    def args(self) -> list[Any]:
        return [
            len(self.stored_statuses),
            1 if self.include_inactive else 0,
            self.liveness_timeout_ms,
            keys.AGENT_KEY_PREFIX,
            *self.record_fields,
        ]

    def parse(self, reply: Any) -> Discovered:
        now_ms, json_rows = reply
        return Discovered(int(now_ms), list(json_rows))


@dataclass(frozen=True)
class SweepStaleAgents:
    """``lua/sweep_stale_agents.lua``: take agents past the liveness timeout out of
    agents:active."""

    liveness_timeout_ms: int

    def keys(self) -> list[str]:
        return [keys.AGENTS_HEARTBEATS, keys.AGENTS_ACTIVE]

    def args(self) -> list[Any]:
        return [self.liveness_timeout_ms]

    def parse(self, reply: Any) -> list[str]:
        """The ids taken out."""
        return [str(agent_id) for agent_id in reply]
