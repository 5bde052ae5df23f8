"""AgentRegistry's decoding of agent records, which discovery and dispatch share: decoded
agents are kept between reads, and must read exactly as a fresh decoding would."""

from __future__ import annotations

import pytest

from coordinator.agents import record_codec
from coordinator.agents.record_codec import RECORD_FIELDS
from coordinator.agents.records import AgentRegistration, AgentStatus
from coordinator.agents.registry import AgentRegistry


async def stored_row(registry, redis_client, agent_id: str) -> list[str | None]:
    await registry.register(AgentRegistration(agent_id=agent_id, agent_type="worker"))
    return await redis_client.hmget(f"agent:{agent_id}", RECORD_FIELDS)


async def test_a_kept_agent_reads_as_a_fresh_decoding_would_at_every_later_moment(
    redis_client, make_settings
):
    settings = make_settings()  # heartbeat interval 1 s, liveness timeout 3 s
    registry = AgentRegistry(redis_client, settings)
    row = await stored_row(registry, redis_client, "a")
    beat_ms = int(row[RECORD_FIELDS.index("last_heartbeat_at_ms")])

    (first,) = registry.decode_records([row], beat_ms)
    (again,) = registry.decode_records([row], beat_ms + 500)
    assert again is first  # the same record within the heartbeat interval: kept

    for after_ms, status, health in [
        (1000, AgentStatus.ACTIVE, 1.0),
        (1001, AgentStatus.ACTIVE, 0.9995),  # freshness starts to fall: no longer kept
        (2000, AgentStatus.ACTIVE, 0.5),
        (3001, AgentStatus.INACTIVE, 0.0),
    ]:
        (read,) = registry.decode_records([row], beat_ms + after_ms)
        (fresh,) = AgentRegistry(redis_client, settings).decode_records([row], beat_ms + after_ms)
        assert read == fresh
        assert (read.status, read.health_score) == (status, health)


async def test_kept_agents_are_bounded_least_recently_read_first(
    redis_client, make_settings, monkeypatch
):
    monkeypatch.setattr(record_codec, "DECODED_AGENTS_CACHED", 2)
    registry = AgentRegistry(redis_client, make_settings())
    rows = [await stored_row(registry, redis_client, agent_id) for agent_id in "abc"]
    now_ms = int(rows[0][RECORD_FIELDS.index("last_heartbeat_at_ms")])
    a, b = registry.decode_records(rows[:2], now_ms)
    assert registry.decode_records(rows[:1], now_ms)[0] is a  # a is now the most recent
    registry.decode_records(rows[2:], now_ms)  # c pushes out b, the least recently read

    a_again, b_again = registry.decode_records(rows[:2], now_ms)
    assert a_again is a
    assert b_again is not b
    assert b_again == b


@pytest.mark.parametrize("field", ["status", "load_metrics", "active_tasks", "labels"])
async def test_a_changed_record_is_decoded_again(redis_client, make_settings, field):
    registry = AgentRegistry(redis_client, make_settings())
    row = await stored_row(registry, redis_client, "a")
    now_ms = int(row[RECORD_FIELDS.index("last_heartbeat_at_ms")])
    (before,) = registry.decode_records([row], now_ms)
    changed = {
        "status": "BUSY",
        "load_metrics": '{"cpu": 0.5}',
        "active_tasks": "1",
        "labels": '{"zone": "eu"}',
    }[field]
    row[RECORD_FIELDS.index(field)] = changed

    (after,) = registry.decode_records([row], now_ms)
    assert after != before
    assert after == AgentRegistry(redis_client, make_settings()).decode_records([row], now_ms)[0]
