"""The SDK agent when things go wrong: its node dies or drains, another instance replaces it,
the coordinator forgets it, and when it is stopped with work in hand."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import grpc
import pytest

from agent_harness import eventually
from aitbc.coordinator.v1 import agent_pb2
from coordinator.sdk import TaskContext, TaskState

FAST_NODE_ENV = {
    "COORDINATOR_HEARTBEAT_INTERVAL_S": "0.5",
    "COORDINATOR_LIVENESS_TIMEOUT_S": "3",
    "COORDINATOR_STREAM_GRACE_S": "1",
    "COORDINATOR_HEALTH_CHECK_INTERVAL_S": "0.2",
    "COORDINATOR_REDIS_TIMEOUT_S": "0.5",
    "COORDINATOR_TASK_TIMER_INTERVAL_S": "0.1",
    "COORDINATOR_SWEEP_INTERVAL_S": "0.2",
}


def addr(node: Any) -> str:
    return f"127.0.0.1:{node.port}"


async def _true(value: bool) -> bool:
    return value


@pytest.mark.timeout(90)
async def test_the_agent_survives_its_node_being_killed(spawn_node, sdk_agents, make_client):
    node_a = spawn_node({**FAST_NODE_ENV, "NODE_ID": "node-a"})
    node_b = spawn_node({**FAST_NODE_ENV, "NODE_ID": "node-b"})
    await asyncio.to_thread(node_a.wait_serving)
    await asyncio.to_thread(node_b.wait_serving)
    started = asyncio.Event()
    finish = asyncio.Event()

    async def work(task: TaskContext) -> dict[str, Any]:
        if task.data.get("hold"):
            started.set()
            await finish.wait()
        return {"n": task.data["n"]}

    agent = await sdk_agents.start([node_a.address, node_b.address], work)
    assert agent.node_id == "node-a"
    client = make_client([node_a.address, node_b.address])
    held = await client.submit("work", {"n": 1, "hold": True})
    await asyncio.wait_for(started.wait(), 10)

    node_a.signal(signal.SIGKILL)
    await asyncio.to_thread(node_a.wait)
    await eventually(
        lambda: _true(agent.node_id == "node-b" and agent.connected.is_set()),
        15,
        what="the agent on node-b",
    )
    finish.set()

    # The task it was running when its node died is reported through node-b, and new work
    # reaches it there (the client fails over to node-b as well).
    assert await client.wait(held.task_id, timeout_s=20) == {"n": 1}
    after = await client.submit("work", {"n": 2})
    assert await client.wait(after.task_id, timeout_s=20) == {"n": 2}
    assert (await client.get(held.task_id)).agent_id == agent.agent_id


async def test_node_draining_moves_the_agent_to_another_node(start_node, sdk_agents, make_client):
    node_a = await start_node(node_id="node-a")
    node_b = await start_node(node_id="node-b")

    async def echo(task: TaskContext) -> dict[str, Any]:
        return task.data

    agent = await sdk_agents.start([addr(node_a), addr(node_b)], echo)
    assert agent.node_id == "node-a"

    await node_a.coordinator.stop(grace_s=1)

    await eventually(
        lambda: _true(agent.node_id == "node-b" and agent.connected.is_set()),
        what="the agent on node-b",
    )
    client = make_client(addr(node_b))
    task = await client.submit("echo", {"k": "v"})
    assert await client.wait(task.task_id, timeout_s=10) == {"k": "v"}


async def test_a_replaced_agent_stops_and_does_not_deregister(node, sdk_agents, make_client):
    async def first_handler(task: TaskContext) -> dict[str, Any]:
        return {"by": "first"}

    async def second_handler(task: TaskContext) -> dict[str, Any]:
        return {"by": "second"}

    first = await sdk_agents.start(addr(node), first_handler, "twin")
    second = await sdk_agents.start(addr(node), second_handler, "twin")

    await asyncio.wait_for(sdk_agents.run_of(first), 10)
    assert first.replaced and not second.replaced
    client = make_client(addr(node))
    task = await client.submit("who", {})
    assert await client.wait(task.task_id, timeout_s=10) == {"by": "second"}


async def test_a_forgotten_agent_registers_again(node, sdk_agents, make_client):
    async def echo(task: TaskContext) -> dict[str, Any]:
        return task.data

    agent = await sdk_agents.start(addr(node), echo, "forgetful")
    await node.agents.DeregisterAgent(agent_pb2.DeregisterAgentRequest(agent_id="forgetful"))

    async def registered_and_streaming() -> bool:
        try:
            reply = await node.agents.GetAgent(agent_pb2.GetAgentRequest(agent_id="forgetful"))
        except grpc.aio.AioRpcError:
            return False
        return reply.agent.node_id != "" and agent.connected.is_set()

    await eventually(registered_and_streaming, what="the agent registered and streaming again")
    client = make_client(addr(node))
    task = await client.submit("echo", {"back": True})
    assert await client.wait(task.task_id, timeout_s=10) == {"back": True}


async def test_stop_finishes_running_work_then_deregisters(node, sdk_agents, make_client):
    started = asyncio.Event()
    finish = asyncio.Event()

    async def work(task: TaskContext) -> dict[str, Any]:
        started.set()
        await finish.wait()
        return {"done": True}

    agent = await sdk_agents.start(addr(node), work, "leaving", shutdown_grace_s=10)
    client = make_client(addr(node))
    task = await client.submit("work", {})
    await asyncio.wait_for(started.wait(), 10)

    stopping = asyncio.create_task(agent.stop())
    # Stopping takes no new work: the agent reports BUSY while its task runs.
    await eventually(lambda: _status_is(node, "leaving", agent_pb2.AGENT_STATUS_BUSY), what="BUSY")
    assert not stopping.done()
    finish.set()
    await asyncio.wait_for(stopping, 10)

    assert (await client.get(task.task_id)).state == TaskState.COMPLETED
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await node.agents.GetAgent(agent_pb2.GetAgentRequest(agent_id="leaving"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_stop_hands_back_work_that_outlives_the_grace_period(node, sdk_agents, make_client):
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def endless(task: TaskContext) -> dict[str, Any]:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    agent = await sdk_agents.start(
        addr(node), endless, "impatient", shutdown_grace_s=0.3, deregister_on_stop=False
    )
    client = make_client(addr(node))
    task = await client.submit("endless", {})
    await asyncio.wait_for(started.wait(), 10)

    await asyncio.wait_for(agent.stop(), 10)

    assert cancelled.is_set()
    handed_back = await client.get(task.task_id)
    assert handed_back.state in (TaskState.PENDING, TaskState.FAILED)
    error = handed_back.attempts[0].error
    assert error is not None and (error.type, error.retryable) == ("AgentStopped", True)
    # Kept registered, as asked.
    reply = await node.agents.GetAgent(agent_pb2.GetAgentRequest(agent_id="impatient"))
    assert reply.agent.agent_id == "impatient"


async def _status_is(node: Any, agent_id: str, status: int) -> bool:
    reply = await node.agents.GetAgent(agent_pb2.GetAgentRequest(agent_id=agent_id))
    return reply.agent.status == status
