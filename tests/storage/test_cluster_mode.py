"""Redis Cluster mode against a real cluster of three primaries (``cluster_support``): nodes
of one coordinator cluster share the slot of their hash tag, an SDK agent completes tasks,
every key on every shard carries its tag, coordinator clusters with other tags (on other
shards) do not see each other, and a resharding of the slot is followed."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from aitbc.coordinator.v1 import agent_pb2
from cluster_support import RedisCluster
from coordinator.sdk import Agent, Backoff, Client, TaskContext, TaskState
from coordinator.storage.key_tags import slot_of

TAG = "aitbc"


def address(node: Any) -> str:
    return f"127.0.0.1:{node.port}"


def tags_on_different_shards(cluster: RedisCluster, count: int) -> list[str]:
    """``count`` tags whose slots are owned by ``count`` different primaries."""
    chosen: dict[int, str] = {}
    for n in itertools.count():
        tag = f"part-{n}"
        chosen.setdefault(cluster.owner_of(slot_of(tag)), tag)
        if len(chosen) == count:
            return list(chosen.values())
    raise AssertionError("unreachable")


def every_key(cluster: RedisCluster) -> dict[int, list[str]]:
    return {port: cluster.keys_on(port) for port in cluster.ports}


async def start_sdk_agent(node: Any, agent_id: str) -> tuple[Agent, asyncio.Task[None]]:
    async def handler(task: TaskContext) -> dict[str, Any]:
        return {"doubled": task.data["x"] * 2}

    agent = Agent(
        agent_id,
        handler,
        addresses=address(node),
        handle_signals=False,
        reconnect_backoff=Backoff(initial_s=0.05, max_s=0.3),
    )
    run = asyncio.create_task(agent.run())
    await asyncio.wait_for(agent.connected.wait(), 10)
    return agent, run


async def stop_sdk_agent(agent: Agent, run: asyncio.Task[None]) -> None:
    agent.request_stop()
    await asyncio.wait_for(run, 15)


async def test_a_node_serves_from_the_owner_of_its_slot_and_every_key_is_tagged(
    redis_cluster, start_node
):
    seed = next(p for p in redis_cluster.ports if p != redis_cluster.owner_of(slot_of(TAG)))
    node = await start_node(redis_url=f"redis://127.0.0.1:{seed}/0", redis_cluster_tag=TAG)
    reply = await node.health.Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await node.agents.RegisterAgent(
        agent_pb2.RegisterAgentRequest(agent_id="idle", agent_type="worker", max_concurrency=1)
    )
    agent, run = await start_sdk_agent(node, "sdk-agent")
    client = Client(address(node))
    try:
        tasks = [await client.submit("double", {"x": i}) for i in range(20)]
        results = [await client.wait(t.task_id, timeout_s=10) for t in tasks]
        assert results == [{"doubled": 2 * i} for i in range(20)]
        assert (await client.get(tasks[0].task_id)).state == TaskState.COMPLETED
    finally:
        await client.close()
        await stop_sdk_agent(agent, run)

    stored = every_key(redis_cluster)
    owner = redis_cluster.owner_of(slot_of(TAG))
    assert {port for port, names in stored.items() if names} == {owner}
    untagged = [name for name in stored[owner] if not name.startswith("{aitbc}")]
    assert untagged == [] and len(stored[owner]) > 20
    assert "{aitbc}agent:idle" in stored[owner] and "{aitbc}agents:all" in stored[owner]
