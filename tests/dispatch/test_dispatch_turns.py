"""How a pass starts: a submit to a node that is not passing takes the dispatch turn and
reads the pass's snapshot in the round trip that queues its task; a submit that Redis ran
after that snapshot (its script loaded again) is passed again; a turn taken that way but
never passed is handed back."""

from __future__ import annotations

from agent_harness import eventually, submit_request
from aitbc.coordinator.v1 import task_pb2
from coordinator.storage import keys, scripts
from coordinator.storage.scripts import run_batch
from coordinator.tasks.calls import TaskToQueue
from coordinator.tasks.models import TaskSubmission

ROUND_ROBIN = task_pb2.BalancingStrategy.Value("BALANCING_STRATEGY_ROUND_ROBIN")

LONG_TIMER = {"task_timer_interval_s": 30.0}
"""No timer pass within a test: only a wake-up or a submit's own round trip starts a pass."""


async def no_dispatch_turn_held(redis_client) -> bool:
    """No node holds the dispatch turn of any partition."""
    return not await redis_client.keys(f"{keys.DISPATCH_LOCK}*")


async def test_a_submit_to_an_idle_node_starts_the_pass_in_its_own_round_trip(
    start_node, pool, redis_client, monkeypatch
):
    node = await start_node(**LONG_TIMER)
    agent = await pool.start(node.channel, "agent-1", max_concurrency=2)
    await node.tasks.SubmitTask(submit_request())  # Redis has every script loaded after it
    await agent.next_assignment(timeout_s=5)
    await eventually(lambda: no_dispatch_turn_held(redis_client), what="that pass ended")
    asked: list[int] = []
    monkeypatch.setattr(node.coordinator.dispatcher, "request", lambda: asked.append(1))

    # Round robin: never assigned at submit (tests/dispatch/test_assign_at_submit.py), so a pass.
    submitted = (await node.tasks.SubmitTask(submit_request(balancing_strategy=ROUND_ROBIN))).task
    assignment = await agent.next_assignment(timeout_s=5)

    assert assignment.task_id == submitted.task_id
    assert asked == []  # nobody woke the dispatcher: the submit's round trip started it


async def test_a_submit_to_a_node_that_is_passing_asks_for_a_pass_again(start_node, pool):
    node = await start_node(**LONG_TIMER)
    agent = await pool.start(node.channel, "agent-1", max_concurrency=50)
    submitted = [(await node.tasks.SubmitTask(submit_request())).task.task_id for _ in range(20)]

    received = [(await agent.next_assignment(timeout_s=5)).task_id for _ in range(20)]

    assert sorted(received) == sorted(submitted)


async def test_a_submit_whose_script_redis_had_to_load_again_is_still_dispatched(
    start_node, pool, redis_client
):
    node = await start_node(**LONG_TIMER)
    agent = await pool.start(node.channel, "agent-1")
    await eventually(lambda: no_dispatch_turn_held(redis_client), what="the opening pass ended")
    await redis_client.script_flush()
    await node.coordinator.dispatcher.dispatch()  # loads the turn's scripts, not the submit's

    submitted = (await node.tasks.SubmitTask(submit_request())).task

    assert (await agent.next_assignment(timeout_s=5)).task_id == submitted.task_id


async def load_only(redis_client, *names: str) -> None:
    """Redis forgets every script but ``names``: the others are sent again after a NOSCRIPT,
    after the calls that came later in their round trip."""
    await redis_client.script_flush()
    for name in names:
        await redis_client.script_load(scripts.source(name))


async def test_a_submit_after_redis_forgot_scripts_is_dispatched_at_once(
    start_node, pool, redis_client
):
    node = await start_node(**LONG_TIMER)
    agent = await pool.start(node.channel, "agent-1")
    await eventually(lambda: no_dispatch_turn_held(redis_client), what="the opening pass ended")
    await load_only(redis_client, "submit_task", "dispatch_snapshot")

    submitted = (await node.tasks.SubmitTask(submit_request())).task

    # Well before the turn's lock would expire (5 s) were it left held without a pass.
    assert (await agent.next_assignment(timeout_s=2)).task_id == submitted.task_id


async def test_a_slot_freed_after_redis_forgot_scripts_is_filled_at_once(
    start_node, pool, redis_client
):
    node = await start_node(**LONG_TIMER)
    agent = await pool.start(node.channel, "agent-1")  # one slot
    await node.tasks.SubmitTask(submit_request())
    first = await agent.next_assignment(timeout_s=5)
    second = (await node.tasks.SubmitTask(submit_request())).task  # waits for the slot
    await load_only(redis_client, "dispatch_snapshot")

    await agent.complete(first)  # frees the slot: the node's dispatcher passes

    assert (await agent.next_assignment(timeout_s=2)).task_id == second.task_id


async def test_a_turn_taken_by_a_submit_but_never_passed_is_handed_back(
    start_node, redis_client, monkeypatch
):
    node = await start_node(**LONG_TIMER)
    dispatcher = node.coordinator.dispatcher
    await eventually(lambda: no_dispatch_turn_held(redis_client), what="the first pass ended")
    await node.tasks.SubmitTask(submit_request())  # no agent to assign it to: it waits

    async def idle() -> bool:
        passing = dispatcher._passing or dispatcher._handed is not None
        return not passing and await no_dispatch_turn_held(redis_client)

    await eventually(idle, what="its pass ended")
    monkeypatch.setattr(dispatcher._wake, "set", lambda: None)  # the loop sleeps on
    to_queue = [TaskToQueue("t-1", TaskSubmission("test", {}))]
    plan = dispatcher.plan_submit(to_queue)  # so the turn rides
    assert plan is not None and not plan.assignments
    await run_batch(node.coordinator.multiplexed, [], piggyback=plan.piggyback)  # as a submit's
    assert not await no_dispatch_turn_held(redis_client)
    assert dispatcher.plan_submit(to_queue) is None  # one turn waits already

    await dispatcher.stop()  # before its loop passed from that turn

    assert await no_dispatch_turn_held(redis_client)
