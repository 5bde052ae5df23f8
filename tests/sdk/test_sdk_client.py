"""The SDK client against real nodes: idempotent submits, failover, watch, stats, errors."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from agent_harness import AutoAgent
from coordinator.sdk import Priority, Requirements, RpcError, TaskExpired, TaskState
from support import free_port


def addr(node: Any) -> str:
    return f"127.0.0.1:{node.port}"


async def test_submit_converts_everything_to_domain_objects(node, make_client):
    client = make_client(addr(node))
    task = await client.submit(
        "summarize",
        {"text": "fox", "n": 3, "ratio": 0.5, "tags": ["a"]},
        priority="high",
        requirements=Requirements(capabilities=("text-generation",), labels={"zone": "eu-1"}),
        max_attempts=5,
        start_to_close_s=20,
    )

    assert task.state == TaskState.PENDING and task.priority == Priority.HIGH
    assert task.task_data == {"text": "fox", "n": 3, "ratio": 0.5, "tags": ["a"]}
    assert task.requirements.capabilities == ("text-generation",)
    assert task.requirements.labels == {"zone": "eu-1"}
    assert (task.max_attempts, task.start_to_close_s) == (5, 20.0)
    assert len(task.request_id) == 32  # generated: a retried call cannot duplicate the task
    assert (await client.get(task.task_id)).task_id == task.task_id


async def test_the_same_request_id_never_creates_a_second_task(node, make_client):
    client = make_client(addr(node))
    first = await client.submit("once", {}, request_id="order-42")
    again = await client.submit("once", {}, request_id="order-42")

    assert again.task_id == first.task_id
    assert (await client.stats()).tasks_submitted == 1


async def test_calls_fail_over_from_an_unreachable_address(node, make_client):
    dead = f"127.0.0.1:{free_port()}"
    client = make_client([dead, addr(node)])

    task = await client.submit("anywhere", {})

    assert (await client.get(task.task_id)).state == TaskState.PENDING


async def test_unreachable_everywhere_gives_up_with_unavailable(make_client):
    client = make_client(f"127.0.0.1:{free_port()}", retry_timeout_s=0.5)
    with pytest.raises(RpcError) as error:
        await client.submit("nowhere", {})
    assert error.value.code == grpc.StatusCode.UNAVAILABLE


async def test_client_mistakes_name_the_field(node, make_client):
    client = make_client(addr(node))
    with pytest.raises(RpcError, match="max_attempts") as error:
        await client.submit("bad", {}, max_attempts=1000)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(RpcError) as missing:
        await client.get("0123456789abcdef0123456789abcdef")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ValueError, match="priority"):
        await client.submit("bad", {}, priority="asap")


async def test_watch_yields_every_transition_until_final(node, make_client):
    client = make_client(addr(node))
    task = await client.submit("watched", {})
    states: list[TaskState] = []

    async def follow() -> None:
        async for seen in client.watch(task.task_id):
            states.append(seen.state)

    watching = asyncio.create_task(follow())
    agent = await AutoAgent("watched-agent").attach(node.channel)
    try:
        await asyncio.wait_for(watching, 10)
    finally:
        await agent.close()
    assert states[-3:] == [TaskState.ASSIGNED, TaskState.RUNNING, TaskState.COMPLETED]


async def test_wait_raises_when_the_task_expires(node, make_client):
    client = make_client(addr(node))
    task = await client.submit("nobody", {}, schedule_to_start_s=1)

    with pytest.raises(TaskExpired) as expired:
        await client.wait(task.task_id, timeout_s=10)
    assert expired.value.task.state == TaskState.EXPIRED


async def test_wait_times_out(node, make_client):
    client = make_client(addr(node))
    task = await client.submit("nobody", {})
    with pytest.raises(TimeoutError):
        await client.wait(task.task_id, timeout_s=0.3)
