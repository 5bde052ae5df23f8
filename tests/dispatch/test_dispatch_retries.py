"""Where a retry goes (issue 14, defect 12): to another agent than the one whose attempt
just failed or expired, when another eligible agent can take it; to the same agent when it
is the only one. The agent of the ended attempt is recorded where the task goes back in line
(``retry_or_fail`` in lua/task_lib.lua) and reaches the dispatcher with the queue heads."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from agent_harness import AutoAgent, ScriptedAgent, duration, eventually, submit_request
from aitbc.coordinator.v1 import task_pb2

COMPLETED = task_pb2.TASK_STATE_COMPLETED
FAILED = task_pb2.TASK_STATE_FAILED
FAST_SETTINGS = {
    "heartbeat_interval_s": 0.5,
    "liveness_timeout_s": 2.0,
    "task_timer_interval_s": 0.1,
}
QUICK_RETRY = task_pb2.RetryPolicy(initial_backoff=duration(0.05), max_backoff=duration(0.1))
TASKS = 16


async def failing(agent: ScriptedAgent, how: str) -> None:
    """Every attempt the agent gets ends badly: failed at once (retryable), or acknowledged
    and left to expire."""
    while True:
        assignment = await agent.next_assignment(timeout_s=60)
        if how == "fail":
            await agent.fail(assignment, "flaky", retryable=True)
        else:
            await agent.acknowledge(assignment)


async def final(node, task_id: str) -> task_pb2.Task:
    async def probe() -> task_pb2.Task | None:
        task = (await node.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id))).task
        return task if task.state in (COMPLETED, FAILED) else None

    return await eventually(probe, timeout_s=30, what=f"task {task_id} to finish")


@pytest.mark.parametrize("how", ["fail", "expire"])
async def test_a_retry_goes_to_another_agent_than_the_one_whose_attempt_ended(start_node, how):
    node = await start_node(**FAST_SETTINGS)
    bad = await ScriptedAgent(node.channel, "agent-a", max_concurrency=TASKS).start()
    worker = asyncio.create_task(failing(bad, how))
    good = await AutoAgent("agent-b", max_concurrency=TASKS).attach(node.channel)
    try:
        lease = duration(1.0 if how == "expire" else 30.0)
        task_ids = [
            (
                await node.tasks.SubmitTask(
                    submit_request(
                        max_attempts=3, retry_policy=QUICK_RETRY, start_to_close_timeout=lease
                    )
                )
            ).task.task_id
            for _ in range(TASKS)
        ]
        tasks = [await final(node, task_id) for task_id in task_ids]
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        await bad.stop()
        await good.close()

    retried = [t for t in tasks if t.attempts[0].agent_id == "agent-a"]
    assert retried, "no first attempt went to agent-a: the test proves nothing"
    for task in retried:
        assert [a.agent_id for a in task.attempts] == ["agent-a", "agent-b"], task.task_id
        assert task.state == COMPLETED
    assert all(t.state == COMPLETED and t.attempt == 1 for t in tasks if t not in retried)


async def test_a_retry_goes_back_to_the_only_agent(start_node):
    node = await start_node(**FAST_SETTINGS)
    agent = await ScriptedAgent(node.channel, "alone", max_concurrency=2).start()
    try:
        task_id = (
            await node.tasks.SubmitTask(submit_request(max_attempts=3, retry_policy=QUICK_RETRY))
        ).task.task_id
        first = await agent.next_assignment()
        await agent.fail(first, "flaky", retryable=True)
        second = await agent.next_assignment()
        assert (second.task_id, second.attempt) == (task_id, 2)
        await agent.acknowledge(second)
        done = await agent.complete(second)
    finally:
        await agent.stop()
    assert done.state == COMPLETED
    assert [a.agent_id for a in done.attempts] == ["alone", "alone"]
