"""The task reaper's judgement of lost agents, on real Redis (its timers are covered end to
end in test_task_failures.py)."""

from __future__ import annotations

import asyncio

import pytest

from agent_harness import eventually, submit_request
from aitbc.coordinator.v1 import task_pb2
from coordinator.agents.records import AgentRegistration
from coordinator.agents.registry import AgentRegistry
from coordinator.server import connect_redis
from coordinator.storage import keys
from coordinator.tasks.reaper import TaskReaper
from script_support import finished_kept


@pytest.fixture
async def redis(make_settings):
    client = connect_redis(make_settings())
    yield client
    await client.aclose()


async def holding_agent(redis, make_settings, agent_id: str, node_id: str) -> None:
    """A registered agent, streaming from ``node_id``, that holds one task."""
    registry = AgentRegistry(redis, make_settings())
    await registry.register(AgentRegistration(agent_id=agent_id, agent_type="worker"))
    await redis.hset(keys.AGENTS_CONNECTED, agent_id, f"{node_id} session-1")
    await redis.sadd(keys.agent_tasks(agent_id), "0" * 32)
    await redis.sadd(keys.AGENTS_HOLDING, agent_id)


async def test_a_dead_node_starts_the_grace_period_and_a_returning_node_ends_it(
    redis, make_settings
):
    reaper = TaskReaper(redis, make_settings(stream_grace_s=60.0))
    await holding_agent(redis, make_settings, "agent-1", "node-x")

    assert await reaper.reap_once()
    assert await redis.zscore(keys.AGENTS_DISCONNECTED, "agent-1") is not None

    await redis.set(keys.node_presence("node-x"), "1")  # the node answers again
    await redis.delete(keys.TASK_REAP_LOCK)
    assert await reaper.reap_once()
    assert await redis.zscore(keys.AGENTS_DISCONNECTED, "agent-1") is None
    assert await redis.sismember(keys.AGENTS_HOLDING, "agent-1")  # nothing was given up


async def test_an_agent_on_a_live_node_is_left_alone(redis, make_settings):
    reaper = TaskReaper(redis, make_settings(stream_grace_s=0.0))
    await holding_agent(redis, make_settings, "agent-1", "node-y")
    await redis.set(keys.node_presence("node-y"), "1")

    assert await reaper.reap_once()
    assert await redis.zscore(keys.AGENTS_DISCONNECTED, "agent-1") is None
    assert await redis.sismember(keys.agent_tasks("agent-1"), "0" * 32)


async def test_one_node_reaps_per_round(redis, make_settings):
    first = TaskReaper(redis, make_settings(node_id="node-1", task_timer_interval_s=5.0))
    second = TaskReaper(redis, make_settings(node_id="node-2", task_timer_interval_s=5.0))
    assert await first.reap_once()
    assert not await second.reap_once()


async def test_the_reaper_keeps_at_most_the_newest_finished_tasks(start_node, redis_client):
    """COORDINATOR_TASK_RETENTION_MAX_TASKS bounds the finished tasks Redis holds, whatever
    the time bound: the oldest finished go first."""
    node = await start_node(task_retention_max_tasks=2)
    finished = []
    for _ in range(4):
        task_id = (await node.tasks.SubmitTask(submit_request())).task.task_id
        await node.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task_id))
        finished.append(task_id)
        await asyncio.sleep(0.005)

    async def kept() -> list[int]:
        present = [await redis_client.exists(keys.task(t)) for t in finished]
        return present if present == [0, 0, 1, 1] else []

    await eventually(kept, timeout_s=5, what="only the two newest finished tasks")
    assert await finished_kept(redis_client) == 2
