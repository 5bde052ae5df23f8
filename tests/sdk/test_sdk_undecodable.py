"""A task whose assignment the Python SDK cannot parse whole costs at most that task: the
agent runs it if its task_data can be decoded on its own (a message nested too deep for
python protobuf), or else reports it FAILED, not retryable, and keeps its stream and its
work; the client raises an error naming the task.

The bad data is written straight into the stored task: the node refuses such data at
submit, but tasks stored before that limit (or by another node) must not break agents."""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

from google.protobuf.internal.encoder import _VarintBytes
from google.protobuf.struct_pb2 import Struct

from agent_harness import eventually
from aitbc.coordinator.v1 import agent_pb2
from coordinator.sdk import TaskContext, UndecodableReply
from coordinator.sdk.assignments import UNDECODABLE_TYPE, stream_event
from coordinator.storage import finished_records, keys

# 47 levels of lists under {"a": {"s": ...}}: the node builds and sends the assignment, but
# python protobuf cannot parse it (the Struct sits three levels down in the stream message).
DEEP_LEVELS = 47


def deep_data(levels: int = DEEP_LEVELS) -> dict[str, Any]:
    return {"a": {"s": functools.reduce(lambda inner, _: [inner], range(levels), 1)}}


def addr(node: Any) -> str:
    return f"127.0.0.1:{node.port}"


async def stored_state(redis_client: Any, task_id: str, state: str) -> bool:
    """Whether the stored task is in ``state`` (read from Redis: the replies about these
    tasks are what a Python client cannot parse)."""
    return bool(await redis_client.hget(keys.task(task_id), "state") == state)


async def test_agent_runs_a_task_too_deep_for_a_full_parse(
    node, sdk_agents, make_client, redis_client
):
    seen: list[dict[str, Any]] = []

    async def handler(task: TaskContext) -> dict[str, Any]:
        seen.append(task.data)
        return {"ok": True}

    client = make_client(addr(node))
    # Queued while no agent is connected, then made deep where the node reads it from.
    task = await client.submit("echo", {"x": 1})
    await redis_client.hset(keys.task(task.task_id), "task_data", json.dumps(deep_data()))
    agent = await sdk_agents.start(addr(node), handler)

    # The message is too deep to parse whole; its task_data alone is not.
    await eventually(
        lambda: stored_state(redis_client, task.task_id, "COMPLETED"), what="COMPLETED"
    )
    assert seen == [deep_data()]
    assert not sdk_agents.run_of(agent).done() and agent.connected.is_set()


async def test_agent_fails_an_undecodable_task_and_keeps_working(
    node, sdk_agents, make_client, redis_client, caplog
):
    caplog.set_level(logging.INFO, logger="coordinator.sdk")
    ran: list[str] = []

    async def handler(task: TaskContext) -> dict[str, Any]:
        ran.append(task.task_id)
        return {"ok": True}

    client = make_client(addr(node))
    # A NaN, which the node's Struct carries but no dict of JSON can: stored directly, as
    # a deep Struct would be that the agent's parser cannot read even on its own.
    bad = await client.submit("echo", {"x": 1})
    await redis_client.hset(keys.task(bad.task_id), "task_data", '{"x": NaN}')

    agent = await sdk_agents.start(addr(node), handler, max_concurrency=4)

    await eventually(
        lambda: stored_state(redis_client, bad.task_id, "FAILED"), what="the task FAILED"
    )
    stored = await redis_client.hgetall(keys.task(bad.task_id))  # finished: compact
    error = json.loads(finished_records.expand(stored, bad.task_id)["error"])
    assert error["type"] == UNDECODABLE_TYPE and error["retryable"] is False
    assert "could not decode" in error["message"]

    # The same stream, the same agent, still working.
    later = await client.submit("echo", {"x": 3})
    assert await client.wait(later.task_id, timeout_s=10) == {"ok": True}
    assert not sdk_agents.run_of(agent).done() and agent.connected.is_set()
    assert ran == [later.task_id]
    opened = [r for r in caplog.records if r.getMessage().startswith("stream open on node")]
    assert len(opened) == 1, "the stream was reopened"


async def test_client_names_the_task_whose_reply_it_cannot_decode(node, make_client, redis_client):
    client = make_client(addr(node))
    task = await client.submit("echo", {"x": 1})
    await redis_client.hset(keys.task(task.task_id), "task_data", json.dumps(deep_data()))

    for call in (client.get, client.cancel):
        try:
            await call(task.task_id)
        except UndecodableReply as exc:
            assert exc.task_id == task.task_id and task.task_id in str(exc)
        else:
            raise AssertionError(f"{call.__name__} decoded a reply it cannot parse")
    # The cancel itself happened.
    assert await redis_client.hget(keys.task(task.task_id), "state") == "CANCELLED"


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited field: python protobuf cannot serialize the deep message itself."""
    return _VarintBytes(number << 3 | 2) + _VarintBytes(len(payload)) + payload


def test_a_batch_keeps_its_decodable_assignments_and_the_ids_of_the_others():
    data = Struct()
    data.update(deep_data(60))
    deep = agent_pb2.Assignment(task_id="deep", attempt=2, fencing_token="f-deep")
    plain = agent_pb2.Assignment(task_id="plain", attempt=1, fencing_token="f-plain")
    plain.task_data.update({"x": 1})
    batch = _field(1, deep.SerializeToString() + _field(5, data.SerializeToString()))
    batch += _field(1, plain.SerializeToString())
    raw = _field(5, batch)  # StreamAssignmentsResponse.assignments

    event = stream_event(raw)

    assert event.kind == "assignments"
    assert [(a.task_id, a.data) for a in event.assignments] == [("plain", {"x": 1})]
    (undecodable,) = event.undecodable
    assert (undecodable.assignment.task_id, undecodable.assignment.attempt) == ("deep", 2)
    assert undecodable.assignment.fencing_token == "f-deep"
    assert undecodable.error().retryable is False


def test_a_message_of_which_nothing_can_be_read_is_an_error_not_an_exception():
    event = stream_event(b"\x12\xff\xff")  # a length beyond the message's end
    assert event.kind is None and event.error
