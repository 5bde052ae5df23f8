"""Dispatching while every slot is taken: tasks arrive faster than the agents finish them,
so submits read snapshots with no free slot while reports free slots all the time. No pass
may fail (issue 14, defect 9: a submit's snapshot with no free slot read no task, a report
then freed a slot in it before the loop passed from it, and the pass indexed an empty list),
and every task completes."""

from __future__ import annotations

import asyncio
import logging
import random

from test_dispatch_turns import LONG_TIMER, no_dispatch_turn_held

from agent_harness import ScriptedAgent, eventually, submit_request
from aitbc.coordinator.v1 import task_pb2
from coordinator.dispatch.script_calls import DispatchSnapshotCall
from coordinator.storage.scripts import TaskScripts, run_batch
from coordinator.tasks.calls import TaskToQueue
from coordinator.tasks.models import TaskSubmission

COMPLETED = task_pb2.TASK_STATE_COMPLETED


async def work(agent: ScriptedAgent, done: list[str], rng: random.Random) -> None:
    """Acknowledge each assignment, work 0 to 20 ms, complete it (one slot: one at a time
    is all the coordinator gives)."""
    handlers: set[asyncio.Task[None]] = set()

    async def handle(assignment) -> None:
        await agent.acknowledge(assignment)
        await asyncio.sleep(rng.uniform(0, 0.02))
        await agent.complete(assignment)
        done.append(assignment.task_id)

    try:
        while True:
            assignment = await agent.next_assignment(timeout_s=60)
            handler = asyncio.create_task(handle(assignment))
            handlers.add(handler)
            handler.add_done_callback(handlers.discard)
    finally:
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


def failed_passes(caplog) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "coordinator.dispatch.dispatcher" and r.levelno >= logging.ERROR
    ]


async def test_saturated_slots_never_fail_a_pass_and_every_task_completes(start_node, pool, caplog):
    caplog.set_level(logging.ERROR, logger="coordinator.dispatch.dispatcher")
    node = await start_node()
    agents = [await pool.start(node.channel, f"agent-{i}") for i in range(3)]  # 1 slot each
    done: list[str] = []
    rng = random.Random(14)
    workers = [asyncio.create_task(work(agent, done, rng)) for agent in agents]
    submitted: list[str] = []
    try:
        # 3 slots of about 10 ms each finish at most ~300/s with the node in this process (far
        # fewer on a busy machine); 400 submits as fast as they go keep every slot taken.
        async def submit(count: int) -> None:
            for _ in range(count):
                reply = await node.tasks.SubmitTask(submit_request())
                submitted.append(reply.task.task_id)

        await asyncio.gather(*(submit(100) for _ in range(4)))

        async def all_done() -> bool:
            return len(done) >= len(submitted)

        await eventually(all_done, timeout_s=60, what="every task completed")
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    assert failed_passes(caplog) == []
    assert sorted(done) == sorted(submitted)
    states = [
        (await node.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id))).task.state
        for task_id in submitted[:20]
    ]
    assert set(states) == {COMPLETED}


async def test_a_slot_freed_under_a_full_snapshot_handed_to_the_loop_does_not_fail_its_pass(
    start_node, pool, redis_client, caplog
):
    """The exact sequence of defect 9, step by step: a submit takes the turn and reads a
    snapshot while the only slot is taken (it reads no task), a report frees the slot, and
    the node counts that in its view before the loop passes from the snapshot."""
    caplog.set_level(logging.ERROR, logger="coordinator.dispatch.dispatcher")
    node = await start_node(**LONG_TIMER)
    agent = await pool.start(node.channel, "agent-1")  # one slot
    await node.tasks.SubmitTask(submit_request())
    held = await agent.next_assignment(timeout_s=5)
    waiting = (await node.tasks.SubmitTask(submit_request())).task  # waits for the slot
    await eventually(lambda: no_dispatch_turn_held(redis_client), what="that pass ended")
    dispatcher = node.coordinator.dispatcher

    # A submit with no free agent in the view: the turn and a snapshot ride in its round trip.
    plan = dispatcher.plan_submit([TaskToQueue("t-unqueued", TaskSubmission("test", {}))])
    assert plan is not None and not plan.assignments
    snapshot_replies = await run_batch(node.coordinator.multiplexed, plan.piggyback.calls)
    read = DispatchSnapshotCall.parse(snapshot_replies[0])
    assert read is not None and read.heads_limit == 0  # no free slot: no task read
    # The agent's completion runs in Redis after that snapshot ...
    reply = await TaskScripts(redis_client).report_task(
        args=[held.task_id, "agent-1", held.fencing_token, "complete", "{}"]
    )
    assert reply[0] == "ok"
    plan.piggyback.take_replies(
        [], snapshot_replies, True
    )  # ... the snapshot is handed to the loop (and viewed),
    dispatcher.slots_freed(["agent-1"])  # ... and the report's reply frees the slot here,
    dispatcher.request()  # ... and asks for a pass (tasks wait), before the loop runs.

    assert (await agent.next_assignment(timeout_s=5)).task_id == waiting.task_id
    assert failed_passes(caplog) == []
