"""The node-channel messages, as the Lua scripts really publish them, parse into the typed
messages of ``coordinator.delivery.messages``."""

from __future__ import annotations

import asyncio
import json

import pytest

from agent_harness import submit_request
from coordinator.agents.records import AgentRegistration
from coordinator.agents.registry import AgentRegistry
from coordinator.config import Settings
from coordinator.delivery.messages import (
    AgentDeregistered,
    AssignNotice,
    CancelNotice,
    StreamReplaced,
    node_message_from_fields,
    parse_node_message,
)
from coordinator.storage import keys
from coordinator.storage.scripts import TaskScripts
from coordinator.tasks.models import Priority


async def next_message(pubsub) -> str:
    """The next message published on the channels of ``pubsub`` (past its confirmations)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while (left_s := deadline - loop.time()) > 0:
        message = await pubsub.get_message(timeout=left_s)
        if message is not None and message["type"] == "message":
            return message["data"]
    raise AssertionError("nothing was published")


async def test_replaced_and_deregistered_parse_from_what_the_scripts_publish(redis_client):
    registry = AgentRegistry(redis_client, Settings())
    scripts = TaskScripts(redis_client)
    await registry.register(AgentRegistration(agent_id="a", agent_type="worker"))
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(keys.node_channel("n1"), keys.node_channel("n2"))
    try:
        assert await scripts.connect_stream(args=["a", "n1", "s1"]) == 1
        assert await scripts.connect_stream(args=["a", "n2", "s2"]) == 1
        assert parse_node_message(await next_message(pubsub)) == StreamReplaced("a", "s1")

        assert await registry.deregister("a")
        assert parse_node_message(await next_message(pubsub)) == AgentDeregistered("a")
    finally:
        await pubsub.aclose()


async def test_an_assignment_announced_by_another_node_is_the_one_the_agent_receives(
    start_node, pool
):
    holder = await start_node(node_id="holder")
    submitter = await start_node(node_id="submitter")
    pubsub = holder.coordinator.redis.pubsub()
    await pubsub.subscribe(keys.node_channel("holder"))
    try:
        agent = await pool.start(holder.channel, "agent-1")
        data = {"text": "é ü", "n": 2}
        submitted = (await submitter.tasks.SubmitTask(submit_request(data=data))).task
        received = await agent.next_assignment()
        raw = await next_message(pubsub)
    finally:
        await pubsub.aclose()

    notice = parse_node_message(raw)
    assert isinstance(notice, AssignNotice)
    assert notice.agent_id == "agent-1"
    assert notice.task_data_chars == len(json.loads(raw)["task_data"])
    assignment = notice.assignment
    assert (assignment.task_id, assignment.attempt) == (submitted.task_id, 1)
    assert assignment.fencing_token == received.fencing_token
    assert assignment.task_data == data
    assert assignment.priority is Priority.NORMAL
    assert assignment.lease_expires_at_ms is not None
    assert assignment.lease_expires_at_ms > assignment.assigned_at_ms


def test_a_cancel_notice_parses_with_its_attempt_as_a_number():
    fields = {"kind": "cancel", "agent_id": "a", "task_id": "t", "attempt": 3, "reason": "r"}

    assert node_message_from_fields(fields) == CancelNotice("a", "t", 3, "r")


def test_an_unknown_kind_is_ignored_and_a_malformed_assignment_raises():
    assert parse_node_message('{"kind": "from-a-newer-node", "agent_id": "a"}') is None
    with pytest.raises(KeyError):
        parse_node_message('{"kind": "assign", "agent_id": "a", "task_data": "{}"}')
