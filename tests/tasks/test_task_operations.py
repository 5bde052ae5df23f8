"""Operating the task side of one node: GetStats, ListQueues, PurgeQueue, ListTasks with its
filters and pages, and WatchTask."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from agent_harness import (
    duration,
    eventually,
    get_task,
    submit_request,
    wait_for_state,
)
from aitbc.coordinator.v1 import task_pb2

PENDING = task_pb2.TASK_STATE_PENDING
ASSIGNED = task_pb2.TASK_STATE_ASSIGNED
RUNNING = task_pb2.TASK_STATE_RUNNING
COMPLETED = task_pb2.TASK_STATE_COMPLETED
FAILED = task_pb2.TASK_STATE_FAILED
CANCELLED = task_pb2.TASK_STATE_CANCELLED
EXPIRED = task_pb2.TASK_STATE_EXPIRED

LOW = task_pb2.TASK_PRIORITY_LOW
NORMAL = task_pb2.TASK_PRIORITY_NORMAL
HIGH = task_pb2.TASK_PRIORITY_HIGH
CRITICAL = task_pb2.TASK_PRIORITY_CRITICAL
URGENT = task_pb2.TASK_PRIORITY_URGENT
MOST_URGENT_FIRST = [URGENT, CRITICAL, HIGH, NORMAL, LOW]

UNMATCHED = task_pb2.TaskRequirements(capabilities=["quantum"])
"""Requirements no agent in these tests meets: the task stays PENDING."""


async def submit(node, **fields) -> task_pb2.Task:
    return (await node.tasks.SubmitTask(submit_request(**fields))).task


async def list_ids(node, **fields) -> list[str]:
    reply = await node.tasks.ListTasks(task_pb2.ListTasksRequest(**fields))
    return [t.task_id for t in reply.tasks]


async def queues(node) -> task_pb2.ListQueuesResponse:
    return await node.tasks.ListQueues(task_pb2.ListQueuesRequest())


async def test_stats_count_every_outcome_and_describe_the_balancer(node, pool):
    no_retry_wait = task_pb2.RetryPolicy(initial_backoff=duration(0))
    expiring = await submit(node, requirements=UNMATCHED, schedule_to_start_timeout=duration(1))
    cancelled = await submit(node)
    await node.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=cancelled.task_id))
    completed, failed, retried, held = [
        (await submit(node, retry_policy=no_retry_wait, data={"name": name})).task_id
        for name in ("completed", "failed", "retried", "held")
    ]
    # Started after the submits, so that every submit-to-assignment time is above 0 ms.
    agent = await pool.start(node.channel, "agent-1", max_concurrency=4)
    assignments = {a.task_id: a for a in [await agent.next_assignment() for _ in range(4)]}
    await agent.complete(assignments[completed])
    await agent.fail(assignments[failed], "broken", retryable=False)
    await agent.fail(assignments[retried], "flaky", retryable=True)
    second = await agent.next_assignment()
    assert (second.task_id, second.attempt) == (retried, 2)
    await agent.complete(second)
    await agent.acknowledge(assignments[held])
    await wait_for_state(node.tasks, expiring.task_id, EXPIRED, timeout_s=5)

    stats = await node.tasks.GetStats(task_pb2.GetStatsRequest())

    counters = (
        stats.tasks_submitted,
        stats.tasks_distributed,
        stats.tasks_completed,
        stats.tasks_failed,
        stats.tasks_cancelled,
        stats.tasks_expired,
    )
    assert counters == (6, 5, 2, 1, 1, 1)
    assert stats.avg_submit_to_assignment_ms > 0
    assert stats.p99_submit_to_assignment_ms >= stats.avg_submit_to_assignment_ms
    lb = stats.load_balancer_stats
    assert lb.strategy == task_pb2.BALANCING_STRATEGY_LEAST_CONNECTIONS
    assert (lb.active_agents, lb.total_assignments) == (1, 5)
    assert lb.avg_agent_load == pytest.approx(0.25), "agent-1 holds 1 task in 4 slots"
    assert dict(lb.assignments_per_agent) == {"agent-1": 5}
    assert [q.priority for q in stats.queues] == MOST_URGENT_FIRST
    assert all(q.pending == 0 for q in stats.queues)


async def test_list_queues_reports_pending_per_priority_retries_and_dead_letters(node, pool):
    agent = await pool.start(node.channel, "agent-1")
    long_wait = task_pb2.RetryPolicy(initial_backoff=duration(60))
    await submit(node, priority=HIGH, retry_policy=long_wait)
    await agent.fail(await agent.next_assignment(), "try later", retryable=True)
    await submit(node, priority=HIGH)
    await agent.fail(await agent.next_assignment(), "broken", retryable=False)
    oldest = await submit(node, priority=NORMAL, requirements=UNMATCHED)

    async def oldest_has_aged() -> bool:
        normal = (await queues(node)).queues[MOST_URGENT_FIRST.index(NORMAL)]
        return normal.oldest_task_age.ToMilliseconds() >= 200

    await eventually(oldest_has_aged, what="the oldest NORMAL task to be 200 ms old")
    for priority in (URGENT, URGENT, NORMAL, NORMAL, LOW):
        await submit(node, priority=priority, requirements=UNMATCHED)

    report = await queues(node)

    assert [(q.priority, q.pending) for q in report.queues] == [
        (URGENT, 2),
        (CRITICAL, 0),
        (HIGH, 0),
        (NORMAL, 3),
        (LOW, 1),
    ], "the task waiting for its retry is not in line yet"
    ages_ms = {q.priority: q.oldest_task_age.ToMilliseconds() for q in report.queues}
    assert ages_ms[NORMAL] >= 200, "the age is that of the oldest task, not the newest"
    assert ages_ms[CRITICAL] == ages_ms[HIGH] == 0
    assert ages_ms[URGENT] < ages_ms[NORMAL]
    assert (report.scheduled_retries, report.dead_letter) == (1, 1)
    assert (await get_task(node.tasks, oldest.task_id)).state == PENDING


async def test_purge_queue_cancels_every_pending_task_of_one_priority(node, pool):
    agent = await pool.start(node.channel, "agent-1", capabilities=("retry-me",))
    long_wait = task_pb2.RetryPolicy(initial_backoff=duration(60))
    waiting = await submit(
        node,
        priority=NORMAL,
        retry_policy=long_wait,
        requirements=task_pb2.TaskRequirements(capabilities=["retry-me"]),
    )
    await agent.fail(await agent.next_assignment(), "try later", retryable=True)
    queued = [(await submit(node, priority=NORMAL, requirements=UNMATCHED)).task_id for _ in "abc"]
    other = await submit(node, priority=HIGH, requirements=UNMATCHED)

    reply = await node.tasks.PurgeQueue(
        task_pb2.PurgeQueueRequest(priority=NORMAL, reason="maintenance")
    )

    purged = [waiting.task_id, *queued]
    assert reply.cancelled_count == len(purged)
    for task_id in purged:
        task = await get_task(node.tasks, task_id)
        assert (task.state, task.transitions[-1].reason) == (CANCELLED, "maintenance")
    assert sorted(await list_ids(node, states=[CANCELLED])) == sorted(purged)
    assert (await get_task(node.tasks, other.task_id)).state == PENDING
    report = await queues(node)
    pending = {q.priority: q.pending for q in report.queues}
    assert (pending[NORMAL], pending[HIGH], report.scheduled_retries) == (0, 1, 0)
    stats = await node.tasks.GetStats(task_pb2.GetStatsRequest())
    assert stats.tasks_cancelled == len(purged)
    again = await node.tasks.PurgeQueue(task_pb2.PurgeQueueRequest(priority=NORMAL))
    assert again.cancelled_count == 0


async def test_purge_queue_without_a_priority_is_invalid_argument(node):
    task_id = (await submit(node, priority=NORMAL)).task_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await node.tasks.PurgeQueue(task_pb2.PurgeQueueRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "priority" in caught.value.details()
    assert (await get_task(node.tasks, task_id)).state == PENDING


async def test_list_tasks_filters_by_state_agent_priority_and_dead_letter(node, pool):
    one = await pool.start(node.channel, "agent-1", max_concurrency=2)
    two = await pool.start(node.channel, "agent-2")

    async def run_on(agent, priority):
        pin = task_pb2.TaskRequirements(agent_id=agent.agent_id)
        task_id = (await submit(node, priority=priority, requirements=pin)).task_id
        assignment = await agent.next_assignment()
        await agent.acknowledge(assignment)
        return task_id, assignment

    completed, assignment = await run_on(one, HIGH)
    await one.complete(assignment)
    running, _ = await run_on(one, NORMAL)
    failed, assignment = await run_on(two, NORMAL)
    await two.fail(assignment, "broken", retryable=False)
    pending = (await submit(node, priority=LOW, requirements=UNMATCHED)).task_id
    cancelled = (await submit(node, priority=URGENT, requirements=UNMATCHED)).task_id
    await node.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=cancelled))

    assert await list_ids(node) == [cancelled, pending, failed, running, completed]
    assert await list_ids(node, states=[PENDING]) == [pending]
    assert await list_ids(node, states=[COMPLETED, FAILED]) == [failed, completed]
    assert await list_ids(node, agent_id="agent-1") == [running, completed]
    assert await list_ids(node, agent_id="agent-2") == [failed]
    assert await list_ids(node, priorities=[NORMAL]) == [failed, running]
    assert await list_ids(node, priorities=[NORMAL, URGENT]) == [cancelled, failed, running]
    assert await list_ids(node, dead_letter=True) == [failed]
    assert await list_ids(node, agent_id="agent-1", states=[RUNNING]) == [running]
    assert await list_ids(node, priorities=[NORMAL], states=[RUNNING, CANCELLED]) == [running]


async def test_list_tasks_pages_have_no_duplicates_and_no_gaps(node):
    priorities = [HIGH if i % 3 == 0 else LOW for i in range(23)]
    ids = [(await submit(node, priority=p)).task_id for p in priorities]
    newest_first = ids[::-1]

    async def all_pages(page_size: int, **filters) -> list[list[str]]:
        pages, token = [], ""
        while True:
            reply = await node.tasks.ListTasks(
                task_pb2.ListTasksRequest(page_size=page_size, page_token=token, **filters)
            )
            pages.append([t.task_id for t in reply.tasks])
            token = reply.next_page_token
            if not token:
                return pages

    pages = await all_pages(5)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [t for page in pages for t in page] == newest_first
    high = [t for t, p in zip(ids, priorities, strict=True) if p == HIGH][::-1]
    assert [t for page in await all_pages(3, priorities=[HIGH]) for t in page] == high
    exact = await all_pages(23)
    assert exact == [newest_first], "a full last page has no token to an empty one"


async def test_a_page_token_survives_new_submits_and_is_bound_to_its_filters(node):
    ids = [(await submit(node)).task_id for _ in range(6)]
    first = await node.tasks.ListTasks(task_pb2.ListTasksRequest(page_size=3))
    newer = (await submit(node)).task_id

    rest = await node.tasks.ListTasks(
        task_pb2.ListTasksRequest(page_size=3, page_token=first.next_page_token)
    )

    assert [t.task_id for t in [*first.tasks, *rest.tasks]] == ids[::-1]
    assert newer not in [t.task_id for t in rest.tasks]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await node.tasks.ListTasks(
            task_pb2.ListTasksRequest(
                page_size=3, page_token=first.next_page_token, priorities=[HIGH]
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in caught.value.details()


async def test_watch_task_streams_the_current_state_then_each_transition_until_final(node, pool):
    task_id = (await submit(node)).task_id
    call = node.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id))
    stream = call.__aiter__()

    async def next_state() -> int:
        return (await asyncio.wait_for(anext(stream), 5)).task.state

    assert await next_state() == PENDING
    agent = await pool.start(node.channel, "agent-1")
    assignment = await agent.next_assignment()
    assert await next_state() == ASSIGNED
    await agent.acknowledge(assignment)
    assert await next_state() == RUNNING
    await agent.complete(assignment)
    assert await next_state() == COMPLETED
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(stream), 5)

    finished = [
        r.task.state async for r in node.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id))
    ]
    assert finished == [COMPLETED], "a finished task is sent once, then the watch ends"
