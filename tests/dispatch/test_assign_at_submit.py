"""Assigning at submit: a node assigns a task in the round trip that queues it, choosing
the agent from its view (its latest snapshot with tasks waiting, and its assignments
since), without a pass. The script refuses such an assignment if a task waits ahead
(tests/dispatch/test_dispatch_scripts.py) or the agent is no longer free: the task then waits in
line for a pass, like any other."""

from __future__ import annotations

import asyncio

import pytest
from test_dispatch_turns import LONG_TIMER, ROUND_ROBIN, no_dispatch_turn_held

from agent_harness import eventually, submit_request
from aitbc.coordinator.v1 import task_pb2
from coordinator.dispatch import at_submit
from coordinator.storage import keys

RESOURCE_BASED = task_pb2.BalancingStrategy.Value("BALANCING_STRATEGY_RESOURCE_BASED")


@pytest.fixture(autouse=True)
def lasting_views(monkeypatch):
    """Views do not age within a test (however slow the machine), nor are they read again:
    see the tests that change this."""
    monkeypatch.setattr(at_submit, "VIEW_MAX_AGE_S", 60.0)
    monkeypatch.setattr(at_submit, "VIEW_REFRESH_S", 60.0)


def spy(monkeypatch, dispatcher, name: str) -> list[object]:
    """Record the calls of one of ``dispatcher``'s methods (still made)."""
    calls: list[object] = []
    method = getattr(dispatcher, name)

    def record(*args):
        calls.append(args)
        return method(*args)

    monkeypatch.setattr(dispatcher, name, record)
    return calls


async def one_task_through(node, agent) -> None:
    """Submit a task: the agent receives it, and completes it (freeing its slot)."""
    submitted = (await node.tasks.SubmitTask(submit_request())).task
    assignment = await agent.next_assignment(timeout_s=5)
    assert assignment.task_id == submitted.task_id
    await agent.complete(assignment)


async def with_a_view(node, agent, redis_client) -> None:
    """One task through a pass: its snapshot, read while the task waited, is the view."""
    await node.tasks.SubmitTask(submit_request())
    await agent.complete(await agent.next_assignment(timeout_s=5))
    await eventually(lambda: no_dispatch_turn_held(redis_client), what="that pass ended")


async def test_a_task_is_assigned_in_its_submits_round_trip_without_a_pass(
    start_node, pool, redis_client, monkeypatch
):
    node = await start_node(**LONG_TIMER)
    agent = await pool.start(node.channel, "agent-1")  # one slot
    await with_a_view(node, agent, redis_client)
    dispatcher = node.coordinator.dispatcher
    asked = spy(monkeypatch, dispatcher, "request")
    passed = spy(monkeypatch, dispatcher, "dispatch")

    for _ in range(3):  # each completion taken here frees the slot in the view too
        await one_task_through(node, agent)

    assert asked == [] and passed == []
    assert await no_dispatch_turn_held(redis_client)


@pytest.mark.parametrize(
    ("fields", "view_max_age_s"),
    [
        ({"balancing_strategy": ROUND_ROBIN}, 60.0),  # its turn is a state passes keep
        ({"balancing_strategy": RESOURCE_BASED}, 60.0),  # reads the load agents report
        ({"requirements": task_pb2.TaskRequirements(min_health_score=0.1)}, 60.0),
        ({}, 0.0),  # the view is too old
    ],
    ids=["round_robin", "resource_based", "min_health_score", "old_view"],
)
async def test_a_task_waits_for_a_pass_when_the_view_may_be_out_of_date_for_it(
    start_node, pool, redis_client, monkeypatch, fields, view_max_age_s
):
    node = await start_node(**LONG_TIMER)
    agent = await pool.start(node.channel, "agent-1", max_concurrency=2)
    await with_a_view(node, agent, redis_client)
    monkeypatch.setattr(at_submit, "VIEW_MAX_AGE_S", view_max_age_s)
    passed = spy(monkeypatch, node.coordinator.dispatcher, "dispatch")

    submitted = await node.tasks.SubmitTask(submit_request(**fields))

    assert (await agent.next_assignment(timeout_s=5)).task_id == submitted.task.task_id
    assert len(passed) == 1  # a pass read everything afresh


async def test_a_view_in_use_is_read_again_before_it_is_too_old(
    start_node, pool, redis_client, monkeypatch
):
    node = await start_node(**LONG_TIMER)
    agent = await pool.start(node.channel, "agent-1")  # one slot
    await with_a_view(node, agent, redis_client)
    dispatcher = node.coordinator.dispatcher
    monkeypatch.setattr(at_submit, "VIEW_MAX_AGE_S", 0.6)
    monkeypatch.setattr(at_submit, "VIEW_REFRESH_S", 0.2)
    first_view = dispatcher._view.current
    passed = spy(monkeypatch, dispatcher, "dispatch")

    for _ in range(6):  # 1.8 s: three times the view's most age
        await asyncio.sleep(0.3)  # each submit finds it older than VIEW_REFRESH_S
        await one_task_through(node, agent)

    assert passed == []  # each was assigned at its submit, from a view read meanwhile
    assert dispatcher._view.current is not first_view


async def test_an_agent_gone_since_the_view_was_read_is_refused_and_the_task_waits(
    start_node, pool, redis_client, monkeypatch
):
    node = await start_node(**LONG_TIMER)
    leaving = await pool.start(node.channel, "agent-a", max_concurrency=2)
    await with_a_view(node, leaving, redis_client)
    await leaving.stop()  # the view (no pass since) still has it free

    async def stream_closed() -> bool:
        return await redis_client.hget(keys.AGENTS_CONNECTED, "agent-a") is None

    await eventually(stream_closed, what="agent-a's stream closed")
    asked = spy(monkeypatch, node.coordinator.dispatcher, "request")

    submitted = (await node.tasks.SubmitTask(submit_request())).task

    assert len(asked) == 1  # the script refused agent-a: the task waits for a pass
    record = await redis_client.hgetall(keys.task(submitted.task_id))
    assert record["state"] == "PENDING" and record["agent_id"] == ""
    other = await pool.start(node.channel, "agent-b")
    assert (await other.next_assignment(timeout_s=5)).task_id == submitted.task_id


async def test_while_a_task_waits_ahead_one_probe_at_a_time_is_chosen(
    start_node, pool, redis_client, monkeypatch
):
    """Under a burst every submit's assignment would be refused for the task waiting ahead
    of it: once one was, of a batch only one task, the probe, is chosen, and the others
    reach the agent through a pass; the first probe assigned ends this."""
    node = await start_node(**LONG_TIMER)
    agent = await pool.start(node.channel, "agent-1", max_concurrency=16)
    await with_a_view(node, agent, redis_client)
    assigner = node.coordinator.dispatcher._at_submit
    chosen: list[int] = []
    refused: list[bool] = []
    choose, take_replies = assigner.choose, assigner.take_replies

    def counting_choose(tasks_to_queue):
        slots, picked = choose(tasks_to_queue)
        chosen.append(len(picked))
        return slots, picked

    def counting_replies(slots, picked, submits):
        was_refused = take_replies(slots, picked, submits)
        if picked:
            refused.append(was_refused)
        return was_refused

    async def batch(n: int) -> list[str]:
        entries = [submit_request() for _ in range(n)]
        reply = await node.tasks.SubmitTasks(task_pb2.SubmitTasksRequest(tasks=entries))
        return [result.task_id for result in reply.results]

    async def received(task_ids: list[str]) -> None:
        got = {(await agent.next_assignment(timeout_s=5)).task_id for _ in task_ids}
        assert got == set(task_ids)

    monkeypatch.setattr(assigner, "choose", counting_choose)
    monkeypatch.setattr(assigner, "take_replies", counting_replies)
    # No agent can take this one: it waits ahead of every NORMAL task.
    no_agent = task_pb2.TaskRequirements(capabilities=["none-has-it"])
    stuck = (await node.tasks.SubmitTask(submit_request(requirements=no_agent))).task
    await received([(await node.tasks.SubmitTask(submit_request())).task.task_id])

    await received(await batch(4))

    # The lone task was chosen and refused ('not_first'); of the batch only the probe.
    assert chosen == [0, 1, 1] and refused == [True, True]
    await node.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=stuck.task_id))
    await received(await batch(3))  # its probe is assigned at submit, the others by a pass
    assert chosen[-1] == 1 and refused[-1] is False

    await received(await batch(3))

    assert chosen[-1] == 3 and refused[-1] is False  # all three assigned at submit
