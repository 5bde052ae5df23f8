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
