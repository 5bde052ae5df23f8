"""A task's life on one node, over real gRPC on a real Redis: every state transition and the
history it leaves, fenced reports, lease extension and idempotent submits."""

from __future__ import annotations

import grpc
import pytest

from agent_harness import (
    duration,
    get_task,
    rpc_error,
    submit_request,
    wait_for_state,
)
from aitbc.coordinator.v1 import agent_pb2, task_pb2
from coordinator.storage import keys

PENDING = task_pb2.TASK_STATE_PENDING
ASSIGNED = task_pb2.TASK_STATE_ASSIGNED
RUNNING = task_pb2.TASK_STATE_RUNNING
COMPLETED = task_pb2.TASK_STATE_COMPLETED
FAILED = task_pb2.TASK_STATE_FAILED
CANCELLED = task_pb2.TASK_STATE_CANCELLED
EXPIRED = task_pb2.TASK_STATE_EXPIRED


def ms(stamp) -> int:
    return stamp.ToMilliseconds()


async def submit(node, **fields) -> task_pb2.Task:
    return (await node.tasks.SubmitTask(submit_request(**fields))).task


async def test_success_walks_pending_assigned_running_completed_and_records_history(node, pool):
    submitted = await submit(node, data={"x": 1})
    assert (submitted.state, submitted.attempt, submitted.agent_id) == (PENDING, 0, "")
    assert [t.state for t in submitted.transitions] == [PENDING]

    agent = await pool.start(node.channel, "agent-1")
    assignment = await agent.next_assignment()
    assert (assignment.task_id, assignment.attempt) == (submitted.task_id, 1)
    assigned = await get_task(node.tasks, submitted.task_id)
    assert (assigned.state, assigned.attempt, assigned.agent_id) == (ASSIGNED, 1, "agent-1")
    assert ms(assigned.lease_expires_at) == ms(assignment.lease_expires_at) > 0

    ack = await agent.acknowledge(assignment)
    running = await get_task(node.tasks, submitted.task_id)
    assert running.state == RUNNING
    assert running.lease_expires_at == ack.lease_expires_at

    done = await agent.complete(assignment, answer=42)
    assert done.state == COMPLETED
    assert dict(done.result) == {"answer": 42}
    assert not done.HasField("lease_expires_at"), "a finished task holds no lease"

    steps = [(t.state, t.attempt, t.agent_id) for t in done.transitions]
    assert steps == [
        (PENDING, 0, ""),
        (ASSIGNED, 1, "agent-1"),
        (RUNNING, 1, "agent-1"),
        (COMPLETED, 1, "agent-1"),
    ]
    times = [ms(t.at) for t in done.transitions]
    assert times == sorted(times) and times[0] == ms(done.created_at)
    assert ms(done.updated_at) == times[-1]
    (attempt,) = done.attempts
    assert (attempt.attempt, attempt.agent_id, attempt.node_id) == (1, "agent-1", "test-node")
    assert ms(attempt.assigned_at) == times[1]
    assert ms(attempt.started_at) == times[2]
    assert ms(attempt.ended_at) == times[3]
    assert attempt.outcome == COMPLETED


async def test_non_retryable_failure_is_final_and_dead_lettered(node, pool):
    agent = await pool.start(node.channel, "agent-1")
    task_id = (await submit(node, max_attempts=5)).task_id
    assignment = await agent.next_assignment()
    await agent.acknowledge(assignment)

    failed = await agent.fail(assignment, "bad input", retryable=False)

    assert failed.state == FAILED, "a non-retryable failure ends the task despite attempts left"
    assert failed.dead_lettered
    assert (failed.error.message, failed.error.type, failed.error.retryable) == (
        "bad input",
        "TestError",
        False,
    )
    assert [t.state for t in failed.transitions] == [PENDING, ASSIGNED, RUNNING, FAILED]
    assert failed.attempts[0].outcome == FAILED
    assert failed.attempts[0].error.message == "bad input"
    dead = await node.tasks.ListTasks(task_pb2.ListTasksRequest(dead_letter=True))
    assert [t.task_id for t in dead.tasks] == [task_id]


async def test_retryable_failure_requeues_and_the_next_attempt_waits_for_the_backoff(node, pool):
    agent = await pool.start(node.channel, "agent-1")
    policy = task_pb2.RetryPolicy(initial_backoff=duration(0.3))
    task_id = (await submit(node, max_attempts=3, retry_policy=policy)).task_id
    first = await agent.next_assignment()
    await agent.acknowledge(first)

    after_failure = await agent.fail(first, "flaky", retryable=True)

    assert (after_failure.state, after_failure.attempt) == (PENDING, 1)
    assert after_failure.attempts[0].outcome == PENDING, "the attempt was given up and requeued"
    assert after_failure.transitions[-1].reason.endswith("retry in 300 ms")
    second = await agent.next_assignment()
    assert (second.task_id, second.attempt) == (task_id, 2)
    assert second.fencing_token != first.fencing_token
    task = await get_task(node.tasks, task_id)
    waited_ms = ms(task.attempts[1].assigned_at) - ms(task.attempts[0].ended_at)
    assert waited_ms >= 300, f"attempt 2 came {waited_ms} ms after attempt 1, before the backoff"

    await agent.acknowledge(second)
    done = await agent.complete(second)
    assert [(t.state, t.attempt) for t in done.transitions] == [
        (PENDING, 0),
        (ASSIGNED, 1),
        (RUNNING, 1),
        (PENDING, 1),
        (ASSIGNED, 2),
        (RUNNING, 2),
        (COMPLETED, 2),
    ]
    assert [a.outcome for a in done.attempts] == [PENDING, COMPLETED]


async def test_retries_exhausted_fail_the_task_into_the_dead_letter_list(node, pool):
    agent = await pool.start(node.channel, "agent-1")
    # Backoffs: 50 ms, then 50 x 10 = 500 ms capped at 150 ms.
    policy = task_pb2.RetryPolicy(
        initial_backoff=duration(0.05), max_backoff=duration(0.15), backoff_multiplier=10
    )
    task_id = (await submit(node, max_attempts=3, retry_policy=policy)).task_id

    for attempt in (1, 2):
        assignment = await agent.next_assignment()
        assert assignment.attempt == attempt
        assert (await agent.fail(assignment, f"flaky {attempt}")).state == PENDING
    third = await agent.next_assignment()
    assert third.attempt == 3
    final = await agent.fail(third, "flaky again")

    assert (final.state, final.dead_lettered, final.attempt) == (FAILED, True, 3)
    assert [a.outcome for a in final.attempts] == [PENDING, PENDING, FAILED]
    assert final.error.message == "flaky again"
    retries = [t.reason for t in final.transitions if t.state == PENDING][1:]
    assert [r.rsplit("; ", 1)[-1] for r in retries] == ["retry in 50 ms", "retry in 150 ms"]
    gaps_ms = [
        ms(later.assigned_at) - ms(earlier.ended_at)
        for earlier, later in zip(final.attempts, final.attempts[1:], strict=False)
    ]
    assert gaps_ms[0] >= 50 and gaps_ms[1] >= 150, gaps_ms
    dead = await node.tasks.ListTasks(task_pb2.ListTasksRequest(dead_letter=True))
    assert [(t.task_id, t.dead_lettered) for t in dead.tasks] == [(task_id, True)]


async def test_cancelling_a_pending_task_takes_it_out_of_line(node, pool):
    task_id = (await submit(node)).task_id

    reply = await node.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task_id, reason="dup"))

    assert reply.task.state == CANCELLED
    assert [(t.state, t.reason) for t in reply.task.transitions][-1] == (CANCELLED, "dup")
    agent = await pool.start(node.channel, "agent-1")
    assert await node.coordinator.dispatcher.dispatch_pass() == 0
    assert agent.received() == []
    assert (await get_task(node.tasks, task_id)).attempts == []


@pytest.mark.parametrize("acknowledged", [False, True], ids=["assigned", "running"])
async def test_cancelling_a_held_task_notifies_its_agent_and_refuses_its_report(
    node, pool, acknowledged
):
    agent = await pool.start(node.channel, "agent-1")
    task_id = (await submit(node)).task_id
    assignment = await agent.next_assignment()
    if acknowledged:
        await agent.acknowledge(assignment)
    held_state = RUNNING if acknowledged else ASSIGNED
    assert (await get_task(node.tasks, task_id)).state == held_state

    reply = await node.tasks.CancelTask(
        task_pb2.CancelTaskRequest(task_id=task_id, reason="user gave up")
    )

    assert reply.task.state == CANCELLED
    assert reply.task.attempts[0].outcome == CANCELLED
    notice = await agent.next_cancel()
    assert (notice.task_id, notice.attempt, notice.reason) == (task_id, 1, "user gave up")
    refused = await rpc_error(agent.complete(assignment))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    after = await get_task(node.tasks, task_id)
    assert after == reply.task, "a refused report changes nothing"
    got = await node.agents.GetAgent(agent_pb2.GetAgentRequest(agent_id="agent-1"))
    assert got.agent.active_tasks == 0, "the cancelled attempt gave its slot back"
    next_id = (await submit(node)).task_id
    assert (await agent.next_assignment()).task_id == next_id


async def test_a_task_no_agent_can_take_expires_after_its_schedule_to_start_timeout(node, pool):
    agent = await pool.start(node.channel, "agent-1")
    task_id = (
        await submit(
            node,
            schedule_to_start_timeout=duration(1.0),
            requirements=task_pb2.TaskRequirements(capabilities=["quantum"]),
        )
    ).task_id

    expired = await wait_for_state(node.tasks, task_id, EXPIRED, timeout_s=5)

    assert [t.state for t in expired.transitions] == [PENDING, EXPIRED]
    assert "schedule-to-start" in expired.transitions[-1].reason
    waited_ms = ms(expired.transitions[-1].at) - ms(expired.created_at)
    assert waited_ms >= 1000, f"expired after {waited_ms} ms, before its timeout"
    assert (expired.attempt, expired.dead_lettered) == (0, False)
    assert agent.received() == []


async def test_a_lease_that_runs_out_gives_the_attempt_up_and_tells_the_agent(node, pool):
    agent = await pool.start(node.channel, "agent-1")
    policy = task_pb2.RetryPolicy(initial_backoff=duration(0))
    task_id = (
        await submit(node, start_to_close_timeout=duration(1.0), retry_policy=policy)
    ).task_id
    first = await agent.next_assignment()
    await agent.acknowledge(first)

    notice = await agent.next_cancel(timeout_s=5)
    assert (notice.task_id, notice.attempt) == (task_id, 1)
    second = await agent.next_assignment()
    assert second.attempt == 2
    task = await get_task(node.tasks, task_id)
    assert task.attempts[0].outcome == PENDING
    assert task.attempts[0].error.type == "lease_expired"


async def test_a_report_with_another_attempts_token_is_refused_and_changes_nothing(node, pool):
    agent = await pool.start(node.channel, "agent-1")
    policy = task_pb2.RetryPolicy(initial_backoff=duration(0))
    task_id = (await submit(node, retry_policy=policy)).task_id
    first = await agent.next_assignment()
    await agent.fail(first, "flaky")
    second = await agent.next_assignment()
    await agent.acknowledge(second)
    before = await get_task(node.tasks, task_id)

    stale = await rpc_error(agent.complete(first, late=True))
    assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "fencing_token" in stale.details()
    forged = agent_pb2.Assignment(task_id=task_id, fencing_token="2:0000000000000000")
    assert (await rpc_error(agent.complete(forged))).code() == grpc.StatusCode.FAILED_PRECONDITION
    intruder = await pool.start(node.channel, "agent-2")
    stolen = await rpc_error(intruder.complete(second))
    assert stolen.code() == grpc.StatusCode.FAILED_PRECONDITION, "the token is the agent's own"

    assert await get_task(node.tasks, task_id) == before
    assert (await agent.complete(second)).state == COMPLETED


async def test_repeating_a_successful_report_is_ok_and_changes_nothing(node, pool):
    agent = await pool.start(node.channel, "agent-1")
    task_id = (await submit(node)).task_id
    assignment = await agent.next_assignment()
    first_ack = await agent.acknowledge(assignment)
    second_ack = await agent.acknowledge(assignment)
    assert second_ack.lease_expires_at == first_ack.lease_expires_at
    running = await get_task(node.tasks, task_id)
    assert [t.state for t in running.transitions].count(RUNNING) == 1

    done = await agent.complete(assignment, answer=1)
    again = await agent.complete(assignment, answer=1)

    assert again == done
    stored = await get_task(node.tasks, task_id)
    assert stored.updated_at == done.updated_at
    assert list(stored.transitions) == list(done.transitions)
    stats = await node.tasks.GetStats(task_pb2.GetStatsRequest())
    assert stats.tasks_completed == 1, "the repeat was not counted again"


async def test_extending_a_lease_moves_lease_expires_at(node, pool, redis_client):
    agent = await pool.start(node.channel, "agent-1")
    task_id = (await submit(node, start_to_close_timeout=duration(30))).task_id
    assignment = await agent.next_assignment()
    acked_ms = ms((await agent.acknowledge(assignment)).lease_expires_at)

    extended_ms = ms(await agent.extend_lease(assignment, lease_s=120))

    assert extended_ms - acked_ms >= 89_000
    assert ms((await get_task(node.tasks, task_id)).lease_expires_at) == extended_ms
    assert await redis_client.zscore(keys.TASK_LEASES, task_id) == extended_ms, (
        "the reaper's lease index must move too, or the old lease would still expire the task"
    )
    default_ms = ms(await agent.extend_lease(assignment))
    assert acked_ms <= default_ms < extended_ms, "no duration means start_to_close from now"


async def test_submitting_twice_with_one_request_id_creates_one_task(node):
    first = await node.tasks.SubmitTask(submit_request(request_id="order-42"))
    again = await node.tasks.SubmitTask(submit_request(request_id="order-42"))
    other = await node.tasks.SubmitTask(submit_request(request_id="order-43"))

    assert (first.created, again.created, other.created) == (True, False, True)
    assert again.task.task_id == first.task.task_id
    assert other.task.task_id != first.task.task_id
    stats = await node.tasks.GetStats(task_pb2.GetStatsRequest())
    assert stats.tasks_submitted == 2
    listed = await node.tasks.ListTasks(task_pb2.ListTasksRequest())
    assert len(listed.tasks) == 2


async def test_submit_answers_the_task_exactly_as_stored(node):
    # SubmitTask builds its answer without reading the task back: it must equal GetTask's.
    request = submit_request(
        task_type="render",
        data={"frames": [1, 2.5, "x"], "nested": {"ok": True}},
        priority=task_pb2.TASK_PRIORITY_HIGH,
        requirements=task_pb2.TaskRequirements(
            capabilities=["zeta", "alpha"],
            services=["s2", "s1"],
            labels={"zone": "eu-1", "chain": "main"},
            min_health_score=0.25,
            preferred_capabilities=["p2", "p1"],
        ),
        max_attempts=7,
        schedule_to_start_timeout=duration(12.3456),
        start_to_close_timeout=duration(2.0004),
        retry_policy=task_pb2.RetryPolicy(
            initial_backoff=duration(0.0004), max_backoff=duration(9.9999), backoff_multiplier=1.5
        ),
        request_id="exact-1",
        balancing_strategy=task_pb2.BALANCING_STRATEGY_CONSISTENT_HASH,
        routing_key="key-1",
    )
    answered = (await node.tasks.SubmitTask(request)).task
    stored = await get_task(node.tasks, answered.task_id)
    assert answered == stored
