"""The attacks of issue 15, replayed against a node with authentication on: each is
refused, and Redis holds exactly what it held before.

The attacker is a real agent with a valid token, granted its own ids (``attacker-*``); it
knows the victim's id and, for the reports, even the victim's real fencing token.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from auth_support import Keys, bearer_channel
from google.rpc import code_pb2

from agent_harness import ScriptedAgent, submit_request
from aitbc.coordinator.v1 import agent_pb2, agent_pb2_grpc, task_pb2, task_pb2_grpc
from coordinator.storage import keys as redis_keys

VICTIM = "victim-1"

PERIODIC_PREFIXES = (
    redis_keys.NODE_PRESENCE_PREFIX,  # the node's health check rewrites it every 0.2 s
    "coordinator:lock:",
    redis_keys.DISPATCH_WANTED,
)
"""Keys the node's own periodic work writes, whoever calls: left out of the comparison."""


async def snapshot(client: aioredis.Redis) -> dict[str, Any]:
    """Every key with its value, read according to its type."""
    state: dict[str, Any] = {}
    async for key in client.scan_iter(count=1000):
        if key.startswith(PERIODIC_PREFIXES):
            continue
        kind = await client.type(key)
        if kind == "hash":
            state[key] = await client.hgetall(key)
        elif kind == "zset":
            state[key] = await client.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            state[key] = sorted(await client.smembers(key))
        elif kind == "list":
            state[key] = await client.lrange(key, 0, -1)
        elif kind == "string":
            state[key] = await client.get(key)
        else:
            state[key] = kind
    return state


@pytest.fixture
async def scene(auth_node: Any, keys: Keys) -> AsyncIterator[dict[str, Any]]:
    """A victim agent holding a running task, and the channels of an attacker agent and of a
    client."""
    channels = {
        "victim": bearer_channel(auth_node.port, keys.mint("victim", ["agent"], ["victim-*"])),
        "attacker": bearer_channel(
            auth_node.port, keys.mint("attacker", ["agent"], ["attacker-*"])
        ),
        "client": bearer_channel(auth_node.port, keys.mint("client-a", ["client"])),
    }
    victim = await ScriptedAgent(channels["victim"], VICTIM).start(heartbeat=False)
    client_tasks = task_pb2_grpc.TaskServiceStub(channels["client"])
    await client_tasks.SubmitTask(submit_request(data={"api_key": "sk-live-secret"}))
    assignment = await victim.next_assignment()
    await victim.acknowledge(assignment)
    yield {"victim": victim, "assignment": assignment, "channels": channels}
    await victim.stop()
    for channel in channels.values():
        await channel.close()


async def refused(call: Any) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, caught.value.details()
    return caught.value.details() or ""


async def test_every_attack_is_refused_and_changes_nothing(
    scene: dict[str, Any], redis_client: aioredis.Redis
) -> None:
    assignment = scene["assignment"]
    agents = agent_pb2_grpc.AgentServiceStub(scene["channels"]["attacker"])
    tasks = task_pb2_grpc.TaskServiceStub(scene["channels"]["attacker"])
    client_tasks = task_pb2_grpc.TaskServiceStub(scene["channels"]["client"])
    stolen = {
        "task_id": assignment.task_id,
        "agent_id": VICTIM,
        "fencing_token": assignment.fencing_token,
    }
    await asyncio.sleep(0.3)  # let the dispatcher's pass after the acknowledgement settle
    before = await snapshot(redis_client)

    # Hijacking the victim's stream: refused before it opens, so the victim's stays open.
    hijack = agents.StreamAssignments(agent_pb2.StreamAssignmentsRequest(agent_id=VICTIM))
    assert "may not act as agent 'victim-1'" in await refused(hijack.read())
    # Reporting for it with its real fencing token: unary and batch, every kind of report.
    forged = task_pb2.CompleteTaskRequest(**stolen)
    forged.result.update({"forged": True})
    await refused(tasks.CompleteTask(forged))
    await refused(tasks.AcknowledgeTask(task_pb2.AcknowledgeTaskRequest(**stolen)))
    await refused(tasks.ExtendTaskLease(task_pb2.ExtendTaskLeaseRequest(**stolen)))
    failed = task_pb2.FailTaskRequest(**stolen)
    failed.error.message = "forged"
    await refused(tasks.FailTask(failed))
    batch = await tasks.ReportTasks(
        task_pb2.ReportTasksRequest(reports=[task_pb2.TaskReport(complete=forged)])
    )
    assert batch.results[0].error.code == code_pb2.PERMISSION_DENIED
    stream = tasks.StreamReportTasks(
        iter([task_pb2.StreamReportTasksRequest(reports=[task_pb2.TaskReport(fail=failed)])])
    )
    streamed = [reply async for reply in stream]
    assert streamed[0].results[0].error.code == code_pb2.PERMISSION_DENIED
    # Re-registering over it, heartbeating, draining and deleting it.
    await refused(
        agents.RegisterAgent(
            agent_pb2.RegisterAgentRequest(
                agent_id=VICTIM, agent_type="worker", endpoints={"grpc": "evil.example:1"}
            )
        )
    )
    await refused(agents.Heartbeat(agent_pb2.HeartbeatRequest(agent_id=VICTIM)))
    await refused(
        agents.UpdateAgentStatus(
            agent_pb2.UpdateAgentStatusRequest(
                agent_id=VICTIM, status=agent_pb2.AGENT_STATUS_MAINTENANCE
            )
        )
    )
    await refused(agents.DeregisterAgent(agent_pb2.DeregisterAgentRequest(agent_id=VICTIM)))
    await refused(agents.GetAgent(agent_pb2.GetAgentRequest(agent_id=VICTIM)))
    # A client purging the queues or changing the cluster's strategy.
    await refused(
        client_tasks.PurgeQueue(task_pb2.PurgeQueueRequest(priority=task_pb2.TASK_PRIORITY_NORMAL))
    )
    await refused(
        client_tasks.SetBalancingStrategy(
            task_pb2.SetBalancingStrategyRequest(strategy=task_pb2.BALANCING_STRATEGY_ROUND_ROBIN)
        )
    )
    # A client listing every task (with their task_data) or discovering every agent.
    await refused(client_tasks.ListTasks(task_pb2.ListTasksRequest()))
    client_agents = agent_pb2_grpc.AgentServiceStub(scene["channels"]["client"])
    await refused(client_agents.DiscoverAgents(agent_pb2.DiscoverAgentsRequest()))

    assert await snapshot(redis_client) == before
    # The victim still owns its stream and its task.
    assert scene["victim"].stream_error is None
    done = await scene["victim"].complete(assignment, answer=1)
    assert done.state == task_pb2.TASK_STATE_COMPLETED
    assert dict(done.result) == {"answer": 1}


async def test_an_agent_may_act_as_its_own_ids_only(auth_node: Any, keys: Keys) -> None:
    channel = bearer_channel(auth_node.port, keys.mint("fleet", ["agent"], ["gpu-*", "cpu-7"]))
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    try:
        for agent_id in ("gpu-1", "gpu-b", "cpu-7"):
            reply = await agents.RegisterAgent(
                agent_pb2.RegisterAgentRequest(agent_id=agent_id, agent_type="worker")
            )
            assert reply.created
        for agent_id in ("cpu-8", "gpu", "xgpu-1"):
            await refused(
                agents.RegisterAgent(
                    agent_pb2.RegisterAgentRequest(agent_id=agent_id, agent_type="worker")
                )
            )
    finally:
        await channel.close()


async def test_an_operator_acts_on_any_agent(
    scene: dict[str, Any], auth_node: Any, keys: Keys
) -> None:
    channel = bearer_channel(auth_node.port, keys.mint("ops", ["operator"]))
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    try:
        reply = await agents.UpdateAgentStatus(
            agent_pb2.UpdateAgentStatusRequest(
                agent_id=VICTIM, status=agent_pb2.AGENT_STATUS_MAINTENANCE
            )
        )
        assert reply.agent.status == agent_pb2.AGENT_STATUS_MAINTENANCE
        assert (
            await agents.DeregisterAgent(agent_pb2.DeregisterAgentRequest(agent_id=VICTIM))
        ).existed
    finally:
        await channel.close()
