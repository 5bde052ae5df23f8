"""Assignment streams without pub/sub: a node whose messages are lost still delivers."""

from __future__ import annotations

from agent_harness import submit_request


async def test_assignments_arrive_without_any_pubsub_message(node, pool):
    agent = await pool.start(node.channel, "agent-1")
    # No wake-ups and no announcements from now on: only the timers are left.
    await node.coordinator.events.stop()

    submitted = (await node.tasks.SubmitTask(submit_request())).task
    # The dispatcher's timer assigns it and the session's resync (every heartbeat interval)
    # sends it: later than a pushed announcement would, but it arrives.
    assignment = await agent.next_assignment(timeout_s=10)

    assert assignment.task_id == submitted.task_id
    assert assignment.fencing_token.startswith("1:")


async def submit_then_connect(node, pool, count: int, **agent_options):
    """``count`` tasks queued before their agent connects, so one pass assigns them all."""
    submitted = {(await node.tasks.SubmitTask(submit_request())).task.task_id for _ in range(count)}
    agent = await pool.start(node.channel, "agent-1", max_concurrency=count, **agent_options)
    received = {(await agent.next_assignment()).task_id for _ in range(count)}
    assert received == submitted
    kinds = [e.WhichOneof("event") for e in agent.events]
    sizes = [len(e.assignments.assignments) for e in agent.events if e.HasField("assignments")]
    return kinds, sizes


async def test_an_agent_that_accepts_batches_gets_assignments_made_together_in_one_message(
    node, pool
):
    kinds, sizes = await submit_then_connect(node, pool, 5, assignments_per_message=8)

    assert sizes == [5] and "assignment" not in kinds


async def test_batches_hold_at_most_what_the_agent_accepts(node, pool):
    kinds, sizes = await submit_then_connect(node, pool, 5, assignments_per_message=2)

    assert sizes == [2, 2] and kinds.count("assignment") == 1


async def test_an_agent_that_did_not_ask_gets_one_assignment_per_message(node, pool):
    kinds, sizes = await submit_then_connect(node, pool, 5)

    assert sizes == [] and kinds.count("assignment") == 5
