"""What happens to tasks when things go wrong: an agent's stream drops (and it comes back in
time, or not), a lease expires, attempts run out, a node is killed, every node restarts.

Timers are short (heartbeat 0.5 s, liveness 2 s, stream grace 1 s, task timer 0.1 s) so
that every recovery is seen within seconds; tests wait for what they expect, never sleep.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal

import grpc
import pytest
import redis.asyncio as aioredis

from agent_harness import AutoAgent, ScriptedAgent, duration, eventually, submit_request
from aitbc.coordinator.v1 import agent_pb2, agent_pb2_grpc, task_pb2, task_pb2_grpc
from coordinator.delivery.streams import Session
from coordinator.storage import keys
from coordinator.tasks.store import TaskStore
from script_support import tasks_in_state
from support import CoordinatorProcess

PENDING = task_pb2.TASK_STATE_PENDING
ASSIGNED = task_pb2.TASK_STATE_ASSIGNED
RUNNING = task_pb2.TASK_STATE_RUNNING
COMPLETED = task_pb2.TASK_STATE_COMPLETED
FAILED = task_pb2.TASK_STATE_FAILED

GRACE_S = 1.0
FAST_SETTINGS = {
    "heartbeat_interval_s": 0.5,
    "liveness_timeout_s": 2.0,
    "stream_grace_s": GRACE_S,
    "task_timer_interval_s": 0.1,
}
"""Timers of the in-process nodes."""

FAST_ENV = {
    "COORDINATOR_HEARTBEAT_INTERVAL_S": "0.5",
    "COORDINATOR_LIVENESS_TIMEOUT_S": "2",
    "COORDINATOR_STREAM_GRACE_S": str(GRACE_S),
    "COORDINATOR_TASK_TIMER_INTERVAL_S": "0.1",
    "COORDINATOR_SWEEP_INTERVAL_S": "0.2",
    "COORDINATOR_HEALTH_CHECK_INTERVAL_S": "0.2",
    "COORDINATOR_REDIS_TIMEOUT_S": "1",
}
"""The same timers for subprocess nodes; a killed node's presence expires within 1.6 s."""

QUICK_RETRY = task_pb2.RetryPolicy(initial_backoff=duration(0.1), max_backoff=duration(0.2))


async def get_task(tasks: task_pb2_grpc.TaskServiceStub, task_id: str) -> task_pb2.Task:
    return (await tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id))).task


async def refused_code(call) -> grpc.StatusCode:
    """The status code of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    return failure.value.code()


def transition_at(task: task_pb2.Task, state: int, attempt: int) -> int:
    """When the task entered ``state`` during ``attempt``, in epoch milliseconds."""
    return next(
        t.at.ToMilliseconds() for t in task.transitions if (t.state, t.attempt) == (state, attempt)
    )


# --- an agent's stream drops ------------------------------------------------------------


async def test_stream_dropped_past_the_grace_period_redelivers_and_fences_the_old_agent(
    start_node,
):
    # Heartbeats outlast the grace period: the closed stream alone decides.
    node = await start_node(node_id="drop-a", **{**FAST_SETTINGS, "liveness_timeout_s": 5.0})
    old = await ScriptedAgent(node.channel, "old").start()
    task_id = (await node.tasks.SubmitTask(submit_request(retry_policy=QUICK_RETRY))).task.task_id
    first = await old.next_assignment()
    assert (first.task_id, first.attempt) == (task_id, 1)
    await old.acknowledge(first)

    # The old agent vanishes mid-task: no stream, no heartbeats. Another agent is ready.
    await old.stop()
    new = await ScriptedAgent(node.channel, "new").start()
    try:
        second = await new.next_assignment(timeout_s=10)
        assert (second.task_id, second.attempt) == (task_id, 2)
        assert second.fencing_token != first.fencing_token

        # The old agent's late report carries the old fencing token: refused, nothing changes.
        assert await refused_code(old.complete(first, late=True)) == (
            grpc.StatusCode.FAILED_PRECONDITION
        )
        assert (await get_task(node.tasks, task_id)).state == ASSIGNED

        await new.acknowledge(second)
        done = await new.complete(second, by="new")
    finally:
        await new.stop()
    assert (done.state, done.attempt, done.agent_id) == (COMPLETED, 2, "new")
    assert dict(done.result) == {"by": "new"}
    given_up = done.attempts[0]
    assert (given_up.agent_id, given_up.outcome, given_up.error.type) == (
        "old",
        PENDING,
        "agent_lost",
    )
    assert "stream closed" in given_up.error.message
    # Not before the grace period: the stream closed after the task was RUNNING.
    released_after_ms = transition_at(done, PENDING, 1) - transition_at(done, RUNNING, 1)
    assert released_after_ms >= GRACE_S * 1000


async def test_agent_back_within_the_grace_period_keeps_its_task_and_gets_it_again(
    start_node, redis_client
):
    # A grace period of 2 s, and heartbeats that outlast it, so that only the grace decides.
    timers = {**FAST_SETTINGS, "stream_grace_s": 2.0, "liveness_timeout_s": 5.0}
    node_a = await start_node(node_id="grace-a", **timers)
    node_b = await start_node(node_id="grace-b", **timers)
    stays = await ScriptedAgent(node_a.channel, "stays").start()
    leaves = await ScriptedAgent(node_a.channel, "leaves").start()
    kept_id = (
        await node_a.tasks.SubmitTask(
            submit_request(requirements=task_pb2.TaskRequirements(agent_id="stays"))
        )
    ).task.task_id
    lost_id = (
        await node_a.tasks.SubmitTask(
            submit_request(requirements=task_pb2.TaskRequirements(agent_id="leaves"))
        )
    ).task.task_id
    original = await stays.next_assignment()
    assert original.task_id == kept_id
    assert (await leaves.next_assignment()).task_id == lost_id

    # Both streams drop before either agent acknowledges. "stays" comes back, on B, after
    # 1 s: ten reaper rounds have seen it gone, but its grace period has not run out.
    await stays.stop()
    await leaves.stop()

    async def away_for_1_s() -> bool:
        closed_at_ms = await redis_client.zscore(keys.AGENTS_DISCONNECTED, "stays")
        return closed_at_ms is not None and await redis_now_ms(redis_client) - closed_at_ms >= 1000

    await eventually(away_for_1_s, what="'stays' disconnected for 1 s")
    back = await ScriptedAgent(node_b.channel, "stays").start(register=False)
    try:
        again = await back.next_assignment()
        assert (again.task_id, again.attempt, again.fencing_token) == (
            kept_id,
            1,
            original.fencing_token,
        )

        # "leaves" closed its stream after "stays" did: once its task is given up, the grace
        # period of "stays" has run out too, and it kept its task because it came back.
        async def lost_released() -> bool:
            return (await get_task(node_b.tasks, lost_id)).state == PENDING

        await eventually(lost_released, timeout_s=10, what="the task of 'leaves' given up")
        lost = await get_task(node_b.tasks, lost_id)
        assert "stream closed" in lost.attempts[0].error.message
        kept = await get_task(node_b.tasks, kept_id)
        assert (kept.state, kept.attempt, kept.agent_id) == (ASSIGNED, 1, "stays")

        await back.acknowledge(again)
        done = await back.complete(again)
    finally:
        await back.stop()
    assert (done.state, done.attempt) == (COMPLETED, 1)
    assert [a.agent_id for a in done.attempts] == ["stays"]


async def test_a_cancellation_lost_in_a_redis_call_still_ends_the_stream_session(
    redis_client, multiplexed, make_settings
):
    # On Python 3.11 redis-py sends each command through asyncio.wait_for, which drops a
    # cancellation that arrives just as the send completes: gRPC's only cancel of a stream
    # whose agent went away could vanish, and the session then kept the agent "connected"
    # until its node stopped. Here a Redis call drops the cancel the same way, every time.
    class DropsOneCancel:
        def __init__(self, redis: aioredis.Redis) -> None:
            self._redis = redis
            self.dropped = False

        def __getattr__(self, name: str):
            return getattr(self._redis, name)

        async def smembers(self, key: str):
            members = await self._redis.smembers(key)
            if not self.dropped:
                self.dropped = True
                asyncio.current_task().cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0)  # where wait_for would swallow it
            return members

    redis = DropsOneCancel(redis_client)
    session = Session(
        "agent-x", TaskStore(redis_client, multiplexed, make_settings()), redis, resync_s=0.05
    )
    running = asyncio.create_task(session.next_events())
    done, _ = await asyncio.wait({running}, timeout=2)
    assert redis.dropped
    assert done, "the session went on after its task was cancelled"
    assert running.cancelled()


# --- leases and attempts ----------------------------------------------------------------


async def test_expired_lease_cancels_the_attempt_and_assigns_attempt_two(start_node):
    node = await start_node(node_id="lease-a", **FAST_SETTINGS)
    agent = await ScriptedAgent(node.channel, "slow").start()
    try:
        task_id = (
            await node.tasks.SubmitTask(
                submit_request(
                    start_to_close_timeout=duration(1.0), retry_policy=QUICK_RETRY, max_attempts=3
                )
            )
        ).task.task_id
        first = await agent.next_assignment()
        await agent.acknowledge(first)  # ... and never reports

        notice = await agent.next_cancel(timeout_s=10)
        assert (notice.task_id, notice.attempt) == (task_id, 1)
        assert "lease expired" in notice.reason
        second = await agent.next_assignment(timeout_s=10)
        assert (second.task_id, second.attempt) == (task_id, 2)

        # The given-up attempt can no longer report.
        assert await refused_code(agent.complete(first)) == grpc.StatusCode.FAILED_PRECONDITION
        await agent.acknowledge(second)
        done = await agent.complete(second)
    finally:
        await agent.stop()
    assert (done.state, done.attempt) == (COMPLETED, 2)
    assert (done.attempts[0].outcome, done.attempts[0].error.type) == (PENDING, "lease_expired")
    assert transition_at(done, PENDING, 1) - transition_at(done, RUNNING, 1) >= 1000


async def test_attempts_run_out_the_task_fails_into_the_dead_letter_list(start_node):
    node = await start_node(node_id="dead-a", **FAST_SETTINGS)
    agent = await ScriptedAgent(node.channel, "unlucky").start()
    try:
        failing_id = (
            await node.tasks.SubmitTask(
                submit_request(max_attempts=2, retry_policy=QUICK_RETRY, task_type="fails")
            )
        ).task.task_id
        for attempt in (1, 2):
            assignment = await agent.next_assignment()
            assert (assignment.task_id, assignment.attempt) == (failing_id, attempt)
            await agent.acknowledge(assignment)
            after = await agent.fail(assignment, f"boom {attempt}", retryable=True)
        assert after.state == FAILED

        # One attempt only, and its lease runs out: FAILED as well.
        silent_id = (
            await node.tasks.SubmitTask(
                submit_request(max_attempts=1, start_to_close_timeout=duration(1.0))
            )
        ).task.task_id
        assignment = await agent.next_assignment()
        assert assignment.task_id == silent_id
        await agent.acknowledge(assignment)
        assert (await agent.next_cancel(timeout_s=10)).task_id == silent_id

        async def silent_failed() -> task_pb2.Task | None:
            task = await get_task(node.tasks, silent_id)
            return task if task.state == FAILED else None

        silent = await eventually(silent_failed, timeout_s=10, what="the silent task FAILED")

        # A task that succeeds stays out of the list.
        ok_id = (await node.tasks.SubmitTask(submit_request())).task.task_id
        fine = await agent.next_assignment()
        assert fine.task_id == ok_id
        await agent.acknowledge(fine)
        await agent.complete(fine)
    finally:
        await agent.stop()

    failing = await get_task(node.tasks, failing_id)
    assert (failing.attempt, failing.dead_lettered) == (2, True)
    assert (failing.error.message, failing.error.type) == ("boom 2", "TestError")
    assert failing.transitions[-1].reason == "failed by agent: boom 2"
    assert [a.outcome for a in failing.attempts] == [PENDING, FAILED]

    assert (silent.attempt, silent.dead_lettered) == (1, True)
    assert (silent.error.type, silent.error.message) == (
        "lease_expired",
        "lease expired without a report",
    )
    assert silent.transitions[-1].reason == "lease expired without a report"

    dead = (await node.tasks.ListTasks(task_pb2.ListTasksRequest(dead_letter=True))).tasks
    assert sorted(t.task_id for t in dead) == sorted([failing_id, silent_id])
    assert all(t.state == FAILED for t in dead)
    queues = await node.tasks.ListQueues(task_pb2.ListQueuesRequest())
    assert queues.dead_letter == 2
    stats = await node.tasks.GetStats(task_pb2.GetStatsRequest())
    assert (stats.tasks_failed, stats.tasks_completed) == (2, 1)


# --- nodes die or restart ---------------------------------------------------------------


async def start_nodes(
    spawn_node, node_ids: list[str], env: dict[str, str] | None = None
) -> list[CoordinatorProcess]:
    """Subprocess nodes, serving; waited for in a thread so running agents keep beating."""
    processes = [
        spawn_node(env={"NODE_ID": node_id, **FAST_ENV, **(env or {})}) for node_id in node_ids
    ]
    for process in processes:
        await asyncio.to_thread(process.wait_serving)
    return processes


async def all_slots_taken(workers: list[AutoAgent]) -> bool:
    return all(len(w.holding) == w.max_concurrency for w in workers)


async def redis_now_ms(redis_client: aioredis.Redis) -> int:
    seconds, microseconds = await redis_client.time()
    return seconds * 1000 + microseconds // 1000


async def wait_done(workers: list[AutoAgent], task_count: int, timeout_s: float) -> None:
    async def done() -> bool:
        completed = {task_id for w in workers for task_id, _ in w.completed}
        return len(completed) == task_count and all(w.idle for w in workers)

    await eventually(done, timeout_s=timeout_s, interval_s=0.05, what="every task completed")


async def assert_all_completed_once(
    redis_client: aioredis.Redis,
    tasks: task_pb2_grpc.TaskServiceStub,
    task_ids: list[str],
    workers: list[AutoAgent],
) -> dict[str, task_pb2.Task]:
    """Each task COMPLETED, and accepted from exactly one agent; returns the tasks by id."""
    completions = collections.Counter(task_id for w in workers for task_id, _ in w.completed)
    assert set(completions) == set(task_ids)
    assert [t for t, count in completions.items() if count > 1] == []
    found = {t: await get_task(tasks, t) for t in task_ids}
    assert {t.state for t in found.values()} == {COMPLETED}
    assert await tasks_in_state(redis_client, "COMPLETED") == len(task_ids)
    for worker in workers:
        for task_id, attempt in worker.completed:
            assert (found[task_id].agent_id, found[task_id].attempt) == (worker.agent_id, attempt)
    return found


async def test_agents_of_a_killed_node_reconnect_elsewhere_and_every_task_completes(
    spawn_node, channel_to, redis_client
):
    victim, survivor = await start_nodes(spawn_node, ["victim", "survivor"])
    hold = asyncio.Event()
    # On the victim: one agent keeps its tasks ASSIGNED, one RUNNING, and one will not come
    # back (it keeps heartbeating, but never reopens its stream). One agent elsewhere.
    unacked = AutoAgent("unacked", max_concurrency=2, hold=hold, hold_before="ack")
    running = AutoAgent("running", max_concurrency=2, hold=hold, hold_before="complete")
    abandoned = AutoAgent("abandoned", max_concurrency=1, hold=hold, hold_before="complete")
    bystander = AutoAgent("bystander", max_concurrency=2, hold=hold, hold_before="complete")
    workers = [unacked, running, abandoned, bystander]
    for worker in (unacked, running, abandoned):
        await worker.attach(channel_to(victim))
    await bystander.attach(channel_to(survivor))
    tasks = task_pb2_grpc.TaskServiceStub(channel_to(survivor))
    agents = agent_pb2_grpc.AgentServiceStub(channel_to(survivor))
    beating: asyncio.Task[None] | None = None

    async def heartbeat_without_stream() -> None:
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):  # FAILED_PRECONDITION: no stream
                await agents.Heartbeat(agent_pb2.HeartbeatRequest(agent_id="abandoned"))
            await asyncio.sleep(0.2)

    try:
        task_ids = [
            (
                await tasks.SubmitTask(submit_request(data={"n": n}, retry_policy=QUICK_RETRY))
            ).task.task_id
            for n in range(20)
        ]
        await eventually(lambda: all_slots_taken(workers), what="every slot taken")

        async def states_settled() -> bool:
            held = unacked.holding | running.holding | abandoned.holding
            found = [await get_task(tasks, t) for t, _ in held]
            return sorted(t.state for t in found) == [ASSIGNED, ASSIGNED, RUNNING, RUNNING, RUNNING]

        await eventually(states_settled, what="2 tasks ASSIGNED and 3 RUNNING on the victim")
        held_on_victim = {w.agent_id: set(w.holding) for w in (unacked, running)}
        [(lost_id, _)] = abandoned.holding

        victim.signal(signal.SIGKILL)
        await asyncio.to_thread(victim.wait)
        killed_at_ms = await redis_now_ms(redis_client)
        await abandoned.close()
        beating = asyncio.create_task(heartbeat_without_stream())
        for worker in (unacked, running):
            await asyncio.wait_for(worker.stream_closed.wait(), 10)
            await worker.detach()
            await worker.attach(channel_to(survivor), register=False)

        # The reaper finds the node gone (its presence key expired): the grace period of
        # its agents' streams starts then.
        async def found_dead() -> float | None:
            return await redis_client.zscore(keys.AGENTS_DISCONNECTED, "abandoned")

        found_dead_ms = await eventually(found_dead, what="the victim found dead")
        assert found_dead_ms >= killed_at_ms

        # The unacknowledged assignments come again on the new stream: same attempt.
        async def delivered_again() -> bool:
            return set(unacked.redelivered) == held_on_victim["unacked"]

        await eventually(delivered_again, what="the unacknowledged assignments delivered again")
        hold.set()
        await wait_done(workers, len(task_ids), timeout_s=30)
    finally:
        if beating is not None:
            beating.cancel()
        for worker in workers:
            await worker.close()

    found = await assert_all_completed_once(redis_client, tasks, task_ids, workers)
    assert [(w.agent_id, w.refused) for w in workers if w.refused] == []
    # Back in time: the tasks held on the killed node were finished by their agents, as
    # attempt 1, not given up.
    for agent_id, held in held_on_victim.items():
        for task_id, attempt in held:
            assert attempt == 1
            assert (found[task_id].agent_id, found[task_id].attempt) == (agent_id, 1)
    # The agent that never came back lost its task once the grace period ran out (counted
    # from when the node was found dead; it kept heartbeating), and the task ran again.
    lost = found[lost_id]
    assert lost.attempt == 2 and lost.agent_id != "abandoned"
    given_up = lost.attempts[0]
    assert (given_up.agent_id, given_up.outcome, given_up.error.type) == (
        "abandoned",
        PENDING,
        "agent_lost",
    )
    assert "stream closed" in given_up.error.message
    assert transition_at(lost, PENDING, 1) - found_dead_ms >= GRACE_S * 1000

    stats = await tasks.GetStats(task_pb2.GetStatsRequest())
    assert (stats.tasks_submitted, stats.tasks_distributed, stats.tasks_completed) == (20, 21, 20)
    for worker in workers:
        reply = await agents.GetAgent(agent_pb2.GetAgentRequest(agent_id=worker.agent_id))
        assert reply.agent.active_tasks == 0, worker.agent_id


@pytest.mark.parametrize("outage", ["within_grace", "past_grace"])
async def test_every_node_restarted_with_tasks_pending_and_held_and_all_complete(
    spawn_node, channel_to, redis_client, outage
):
    # within_grace: grace and liveness far longer than a restart, so held tasks are kept.
    # past_grace: the usual 1 s grace, and the agents come back only after the new nodes
    # gave their tasks up.
    env = (
        {"COORDINATOR_STREAM_GRACE_S": "20", "COORDINATOR_LIVENESS_TIMEOUT_S": "20"}
        if outage == "within_grace"
        else {}
    )
    old_nodes = await start_nodes(spawn_node, ["node-1", "node-2"], env)
    hold = asyncio.Event()
    workers = [
        AutoAgent(f"agent-{i}", max_concurrency=2, hold=hold, hold_before="complete")
        for i in range(2)
    ]
    for worker, process in zip(workers, old_nodes, strict=True):
        await worker.attach(channel_to(process))
    tasks = task_pb2_grpc.TaskServiceStub(channel_to(old_nodes[0]))
    task_ids = [
        (
            await tasks.SubmitTask(submit_request(data={"n": n}, retry_policy=QUICK_RETRY))
        ).task.task_id
        for n in range(10)
    ]
    try:
        await eventually(lambda: all_slots_taken(workers), what="every slot taken")
        held = {w.agent_id: set(w.holding) for w in workers}

        # SIGTERM every node: each drains (its streams end) and exits cleanly.
        for process in old_nodes:
            process.signal(signal.SIGTERM)
        for process in old_nodes:
            assert await asyncio.to_thread(process.wait) == 0
        for worker in workers:
            await asyncio.wait_for(worker.stream_closed.wait(), 10)
            assert worker.agent is not None
            assert worker.agent.events[-1].WhichOneof("event") == "draining"
            await worker.detach()
        assert await redis_client.zcard(keys.tasks_in_state("PENDING")) == 6
        assert await redis_client.zcard(keys.tasks_in_state("RUNNING")) == 4

        new_nodes = await start_nodes(spawn_node, ["node-1", "node-2"], env)
        tasks = task_pb2_grpc.TaskServiceStub(channel_to(new_nodes[1]))
        if outage == "past_grace":

            async def held_given_up() -> bool:
                return await redis_client.zcard(keys.tasks_in_state("RUNNING")) == 0

            await eventually(held_given_up, what="the held tasks given up by the new nodes")
        for worker, process in zip(workers, new_nodes, strict=True):
            await worker.attach(channel_to(process), register=False)
        hold.set()
        await wait_done(workers, len(task_ids), timeout_s=30)
    finally:
        for worker in workers:
            await worker.close()

    found = await assert_all_completed_once(redis_client, tasks, task_ids, workers)
    held_keys = {key for keys_ in held.values() for key in keys_}
    if outage == "within_grace":
        assert [(w.agent_id, w.refused) for w in workers if w.refused] == []
        assert {t.attempt for t in found.values()} == {1}
        for agent_id, keys_ in held.items():
            assert {found[t].agent_id for t, _ in keys_} == {agent_id}
    else:
        # The old attempts' reports are refused, and only those; the tasks ran again.
        refused = {(t, a, action, code) for w in workers for t, a, action, code in w.refused}
        assert refused == {
            (t, a, "complete", grpc.StatusCode.FAILED_PRECONDITION) for t, a in held_keys
        }
        for task_id, _ in held_keys:
            task = found[task_id]
            assert task.attempt == 2
            assert (task.attempts[0].outcome, task.attempts[0].error.type) == (
                PENDING,
                "agent_lost",
            )
    stats = await tasks.GetStats(task_pb2.GetStatsRequest())
    assert (stats.tasks_submitted, stats.tasks_completed, stats.tasks_failed) == (10, 10, 0)
    assert stats.tasks_distributed == 10 + (len(held_keys) if outage == "past_grace" else 0)
