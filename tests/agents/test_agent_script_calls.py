"""The typed calls of the registry's scripts against a real Redis: each call's KEYS and ARGV
are the ones its script documents, and each reply reads as the named result."""

from __future__ import annotations

import json

from coordinator.agents.record_codec import RECORD_FIELDS
from coordinator.agents.records import AgentRegistration, AgentStatus
from coordinator.agents.script_calls import (
    DeregisterAgent,
    DiscoverAgents,
    Heartbeat,
    RegisterAgent,
    SweepStaleAgents,
    UpdateAgentStatus,
    run,
)
from coordinator.storage import keys
from coordinator.storage.scripts import Scripts

REGISTRATION = AgentRegistration(
    agent_id="a", agent_type="worker", capabilities=("gpu",), labels={"zone": "eu"}
)


async def test_register_reports_creation_and_the_record_it_wrote(redis_client):
    scripts = Scripts(redis_client)

    first = await run(scripts.register_agent, RegisterAgent(REGISTRATION))
    again = await run(scripts.register_agent, RegisterAgent(REGISTRATION))

    assert (first.created, again.created) == (True, False)
    assert first.read.record["agent_id"] == "a"
    assert json.loads(first.read.record["labels"]) == {"zone": "eu"}
    assert first.read.record["last_heartbeat_at_ms"] == str(first.read.now_ms)
    assert await redis_client.smembers(keys.capability_index("gpu")) == {"a"}


async def test_heartbeat_and_status_update_read_none_for_an_unknown_agent(redis_client):
    scripts = Scripts(redis_client)
    assert await run(scripts.heartbeat, Heartbeat("ghost", None, {})) is None
    update = UpdateAgentStatus("ghost", AgentStatus.BUSY, {}, "", 3000)
    assert await run(scripts.update_agent_status, update) is None

    await run(scripts.register_agent, RegisterAgent(REGISTRATION))
    beat = await run(scripts.heartbeat, Heartbeat("a", AgentStatus.BUSY, {"cpu": 0.5}))
    assert beat is not None and beat.streaming is False
    assert (beat.read.record["status"], beat.read.record["load_metrics"]) == (
        "BUSY",
        '{"cpu": 0.5}',
    )
    update = UpdateAgentStatus("a", AgentStatus.MAINTENANCE, {}, "kernel upgrade", 3000)
    read = await run(scripts.update_agent_status, update)
    assert read is not None and read.record["status_reason"] == "kernel upgrade"


async def test_discover_sweep_and_deregister(redis_client):
    scripts = Scripts(redis_client)
    await run(scripts.register_agent, RegisterAgent(REGISTRATION))
    discover = DiscoverAgents(
        stored_statuses=[AgentStatus.ACTIVE],
        include_inactive=False,
        filter_keys=[keys.capability_index("gpu")],
        liveness_timeout_ms=3000,
        record_fields=RECORD_FIELDS,
    )

    discovered = await run(scripts.discover_agents, discover)
    (row,) = discovered.json_rows
    assert json.loads(row)[:2] == ["a", "worker"]
    assert discovered.now_ms > 0

    assert await run(scripts.sweep_stale_agents, SweepStaleAgents(3_600_000)) == []
    await redis_client.zadd(keys.AGENTS_HEARTBEATS, {"a": 0})  # its heartbeat long ago
    assert await run(scripts.sweep_stale_agents, SweepStaleAgents(3000)) == ["a"]

    assert await run(scripts.deregister_agent, DeregisterAgent("a", heartbeat_bound_ms=-1)) is False
    assert await run(scripts.deregister_agent, DeregisterAgent("a")) is True
    assert await run(scripts.deregister_agent, DeregisterAgent("a")) is False
