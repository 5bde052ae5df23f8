"""Batches of assignments fit in a message: capped by bytes as well as by count, also when
unacknowledged assignments are sent again on a new stream."""

from __future__ import annotations

from agent_harness import ScriptedAgent, get_task, submit_request
from aitbc.coordinator.v1 import task_pb2


async def test_batches_of_big_assignments_fit_in_a_message_also_when_resent(node, pool):
    await _assert_all_delivered_and_completed(node, pool, count=64, size=100_000)


async def test_five_assignments_of_900_kb_each_reach_an_agent_that_batches(node, pool):
    await _assert_all_delivered_and_completed(node, pool, count=5, size=900_000)


async def _assert_all_delivered_and_completed(node, pool, count: int, size: int) -> None:
    task_ids = {
        (await node.tasks.SubmitTask(submit_request(data={"blob": "x" * size}))).task.task_id
        for _ in range(count)
    }
    first = await pool.start(
        node.channel, "agent-1", max_concurrency=count, assignments_per_message=64
    )
    received = {(await first.next_assignment(timeout_s=20)).task_id for _ in range(count)}
    assert received == task_ids
    assert first.stream_error is None
    # Unacknowledged, they come again on the next stream, batched the same way.
    await first.stop()
    again = await ScriptedAgent(node.channel, "agent-1", assignments_per_message=64).start(
        register=False
    )
    try:
        assignments = [await again.next_assignment(timeout_s=20) for _ in range(count)]
        assert {a.task_id for a in assignments} == task_ids
        for assignment in assignments:
            await again.complete(assignment)
        for task_id in task_ids:
            assert (await get_task(node.tasks, task_id)).state == task_pb2.TASK_STATE_COMPLETED
    finally:
        await again.stop()
