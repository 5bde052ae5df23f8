"""The typed script calls (``coordinator.tasks.script_calls``,
``coordinator.dispatch.script_calls``) against the real scripts in a real Redis: the ARGV
each builds is the one its script documents, and each reply is read by name as the script
answers it."""

from __future__ import annotations

from coordinator.dispatch.script_calls import (
    AssignTaskCall,
    DispatchSnapshotCall,
    DispatchTurnCall,
    QueueHeadsCall,
)
from coordinator.storage import keys
from coordinator.tasks.calls import Report, TaskToQueue
from coordinator.tasks.models import (
    PRIORITIES_MOST_URGENT_FIRST,
    Priority,
    Requirements,
    TaskSubmission,
)
from coordinator.tasks.script_calls import (
    AgentAssignment,
    AssignReply,
    CancelTaskCall,
    ExpireTasksCall,
    ForgetFinishedTasksCall,
    PromoteDueTasksCall,
    ReleaseTaskCall,
    ReportReply,
    SubmitReply,
    SubmitTaskCall,
)
from script_support import LIVENESS_MS, NO_QUOTA, NODE, make_agent

CLASS = Requirements().eligibility_class()


def to_queue(task_id: str, request_id: str = "") -> TaskToQueue:
    return TaskToQueue(task_id, TaskSubmission("test", {"n": 1}, request_id=request_id))


def assignment_to(agent_id: str, delivers_locally: bool = False) -> AgentAssignment:
    return AgentAssignment(agent_id, "nonce", LIVENESS_MS, NODE, delivers_locally)


async def run_submit(scripts, call: SubmitTaskCall):
    return await scripts.submit_task(args=call.args())


def submit_call(task_id: str, assignment=None, request_id: str = "") -> SubmitTaskCall:
    return SubmitTaskCall(
        to_queue(task_id, request_id), 60_000, assignment, NO_QUOTA.script_args("")
    )


async def test_a_submit_reads_as_created_then_as_the_same_task(scripts, redis_client):
    first = SubmitReply.parse(await run_submit(scripts, submit_call("t-1", request_id="r")))
    again = SubmitReply.parse(await run_submit(scripts, submit_call("t-2", request_id="r")))

    assert first.created and first.task_id == "t-1" and first.seq > 0
    assert await redis_client.hget(keys.task("t-1"), "task_type") == "test"
    assert (again.created, again.task_id, again.created_at_ms) == (
        False,
        "t-1",
        first.created_at_ms,
    )
    assert (
        again.seq == 0
        and SubmitReply.assignment(await run_submit(scripts, submit_call("t-3"))) is None
    )


async def test_a_submit_with_an_agent_assigns_and_its_reply_says_so(
    scripts, registry, redis_client
):
    await make_agent(registry, redis_client, "a")

    raw = await run_submit(scripts, submit_call("t-1", assignment_to("a", delivers_locally=True)))

    assigned = SubmitReply.assignment(raw)
    assert assigned is not None and assigned.ok and assigned.detail == 1
    assert assigned.latency_ms >= 0 and assigned.message is not None  # a first attempt, here
    assert await redis_client.hget(keys.task("t-1"), "agent_id") == "a"


async def test_an_assignment_refused_for_a_full_agent_reads_as_that_refusal(
    scripts, registry, redis_client
):
    await make_agent(registry, redis_client, "a")  # one slot
    await run_submit(scripts, submit_call("t-1", assignment_to("a")))
    await run_submit(scripts, submit_call("t-2"))

    call = AssignTaskCall("t-2", assignment_to("a"))
    reply = AssignReply.parse(await scripts.assign_task(args=call.args()))

    assert (reply.ok, reply.verdict) == (False, "agent_full")


async def test_reports_read_by_name(scripts, registry, redis_client):
    await make_agent(registry, redis_client, "a")
    await run_submit(scripts, submit_call("t-1", assignment_to("a")))
    token = await redis_client.hget(keys.task("t-1"), "fencing_token")

    stale = Report.acknowledge("t-1", "a", "not-the-token")
    ack = Report.acknowledge("t-1", "a", token)
    done = Report.complete("t-1", "a", token, {"ok": True})
    refused = ReportReply.parse(await scripts.report_task(args=stale.args(with_record=True)))
    acked = ReportReply.parse(await scripts.report_task(args=ack.args(with_record=True)))
    completed = ReportReply.parse(await scripts.report_task(args=done.args(with_record=True)))

    assert (refused.verdict, refused.state, refused.attempt) == ("stale", "ASSIGNED", "1")
    assert acked.taken and acked.state == "RUNNING" and acked.lease_expires_at_ms
    assert completed.verdict == "ok" and completed.state == "COMPLETED"
    assert completed.tasks_waiting is False and completed.lease_expires_at_ms is None
    assert completed.record is not None and "result" in completed.record


async def test_cancel_and_release_read_by_name(scripts, registry, redis_client):
    await make_agent(registry, redis_client, "a")
    await run_submit(scripts, submit_call("t-1", assignment_to("a")))
    await run_submit(scripts, submit_call("t-2"))

    released = ReleaseTaskCall("t-1", "a", False, "agent_lost", "gone")
    state = released.parse(await scripts.release_task(args=released.args()))
    cancel = CancelTaskCall("t-2", "no longer needed", pending_only=True)
    first = cancel.parse(await scripts.cancel_task(args=cancel.args()))
    second = cancel.parse(await scripts.cancel_task(args=cancel.args()))
    not_owner = CancelTaskCall("t-1", "mine", submitted_by="someone-else")

    assert state == "PENDING"  # back in line after a backoff
    assert first == ("ok", "") and second == ("final", "CANCELLED")
    assert not_owner.parse(await scripts.cancel_task(args=not_owner.args()))[0] == "not_owner"


async def test_the_reaper_calls_and_an_empty_store(scripts):
    assert (
        PromoteDueTasksCall.parse(
            await scripts.promote_due_tasks(args=PromoteDueTasksCall(10).args())
        )
        == 0
    )
    assert ExpireTasksCall.parse(await scripts.expire_tasks(args=ExpireTasksCall(10).args())) == []
    forget = ForgetFinishedTasksCall(2**62, 10)
    assert forget.parse(await scripts.forget_finished_tasks(args=forget.args())) == 0


async def test_the_snapshot_the_turn_and_the_heads_read_by_name(scripts, registry, redis_client):
    await make_agent(registry, redis_client, "a")
    for i in range(3):
        await run_submit(scripts, submit_call(f"t-{i}"))

    snapshot = DispatchSnapshotCall.parse(
        await scripts.dispatch_snapshot(args=DispatchSnapshotCall("begin", "me").args())
    )
    other = DispatchSnapshotCall.parse(
        await scripts.dispatch_snapshot(args=DispatchSnapshotCall("begin", "other").args())
    )
    heads = QueueHeadsCall(Priority.NORMAL.name, 2, {CLASS: "-inf"})
    heads_read = heads.parse(await scripts.queue_heads(args=heads.args()))
    end = DispatchTurnCall("end", "me", ("",))  # tasks queued with no partition

    assert snapshot is not None and other is None  # the turn is this node's
    normal = PRIORITIES_MOST_URGENT_FIRST.index(Priority.NORMAL)
    assert snapshot.class_sets[normal] == [CLASS] and len(snapshot.agent_rows) == 1
    assert snapshot.heads_limit > 0 and snapshot.now_ms > 0
    assert [task_id for task_id, *_ in heads_read[0]] == ["t-0", "t-1"]
    assert snapshot.partitions == ("",)
    assert end.parse(await scripts.dispatch_turn(args=end.args())).again == ("",)  # 'other' asked
    assert end.parse(await scripts.dispatch_turn(args=end.args())).again == ()
