"""SubmitTasks and ReportTasks over real gRPC: each entry handled as its unary call would
handle it alone (same checks, same status, same idempotency and fencing), a bad entry
refused on its own without affecting the others, results in request order, and a Redis
outage failing the whole call."""

from __future__ import annotations

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf.struct_pb2 import Struct
from google.rpc import code_pb2

from agent_harness import duration, field_violations, get_task, rpc_error, submit_request
from aitbc.coordinator.v1 import task_pb2

MAX_TASK_DATA_BYTES = 64
UNKNOWN_TASK_ID = "0" * 32
COMPLETED = task_pb2.TASK_STATE_COMPLETED


@pytest.fixture
async def node(start_node):
    return await start_node(max_task_data_bytes=MAX_TASK_DATA_BYTES)


async def submit_tasks(node, *entries: task_pb2.SubmitTaskRequest) -> list:
    reply = await node.tasks.SubmitTasks(task_pb2.SubmitTasksRequest(tasks=entries))
    assert len(reply.results) == len(entries)
    return list(reply.results)


async def report_tasks(node, *reports: task_pb2.TaskReport) -> list:
    reply = await node.tasks.ReportTasks(task_pb2.ReportTasksRequest(reports=reports))
    assert len(reply.results) == len(reports)
    return list(reply.results)


def violations(error: task_pb2.BatchEntryError) -> dict[str, str]:
    return {v.field: v.description for v in error.field_violations}


async def tasks_submitted(node) -> int:
    return (await node.tasks.GetStats(task_pb2.GetStatsRequest())).tasks_submitted


# --- SubmitTasks ---------------------------------------------------------------------------


async def test_valid_entries_are_queued_and_invalid_ones_refused_in_order(node):
    bad_attempts = submit_request(max_attempts=101)
    bad_twice = submit_request(priority=9, task_type="has spaces")
    results = await submit_tasks(
        node,
        submit_request(task_type="first"),
        bad_attempts,
        submit_request(task_type="third", request_id="order-3"),
        bad_twice,
    )

    first, second, third, fourth = results
    for queued, task_type in ((first, "first"), (third, "third")):
        assert not queued.HasField("error")
        assert queued.created and queued.task_id
        task = await get_task(node.tasks, queued.task_id)
        assert (task.task_type, task.state) == (task_type, task_pb2.TASK_STATE_PENDING)
        assert task.created_at == queued.created_at
    assert third.task_id != first.task_id
    for refused in (second, fourth):
        assert refused.error.code == code_pb2.INVALID_ARGUMENT
        assert not refused.task_id and not refused.created
        assert not refused.HasField("created_at")
    assert list(violations(second.error)) == ["max_attempts"]
    assert set(violations(fourth.error)) == {"priority", "task_type"}
    assert "max_attempts" in second.error.message
    assert await tasks_submitted(node) == 2
    listed = (await node.tasks.ListTasks(task_pb2.ListTasksRequest())).tasks
    assert {t.task_id for t in listed} == {first.task_id, third.task_id}


async def test_entries_sharing_requirements_each_get_their_own_verdict(node):
    """Valid requirements are checked once per distinct set (``tasks.validation``'s
    ``checked_requirements``); invalid ones are never kept, so each entry repeating them is
    refused again, and the valid ones still match their agents exactly."""
    bad = task_pb2.TaskRequirements(capabilities=["not a tag"], labels={"zone": "a"})
    good = task_pb2.TaskRequirements(capabilities=["gpu"], labels={"zone": "a"})
    results = await submit_tasks(
        node, *(submit_request(requirements=r) for r in (bad, good, bad, good))
    )

    for refused in (results[0], results[2]):
        assert list(violations(refused.error)) == ["requirements.capabilities[0]"]
    for queued in (results[1], results[3]):
        task = await get_task(node.tasks, queued.task_id)
        assert list(task.requirements.capabilities) == ["gpu"]
        assert dict(task.requirements.labels) == {"zone": "a"}


@pytest.mark.parametrize(
    "entry",
    [
        submit_request(max_attempts=101),
        submit_request(requirements=task_pb2.TaskRequirements(capabilities=["not a tag"])),
        submit_request(schedule_to_start_timeout=duration(0.5), request_id="has spaces"),
        submit_request(data={"blob": "x" * (2 * MAX_TASK_DATA_BYTES)}),
    ],
    ids=["max_attempts", "capability", "two-fields", "task_data"],
)
async def test_a_refused_entry_gets_exactly_the_unary_status(node, entry):
    unary = await rpc_error(node.tasks.SubmitTask(entry))
    (result,) = await submit_tasks(node, entry)

    assert result.error.code == unary.code().value[0]
    assert result.error.message == unary.details()
    assert violations(result.error) == field_violations(unary)


@pytest.mark.parametrize("count", [0, 1001])
async def test_no_entries_or_more_than_1000_is_invalid_argument_naming_tasks(node, count):
    request = task_pb2.SubmitTasksRequest(tasks=[submit_request() for _ in range(count)])
    error = await rpc_error(node.tasks.SubmitTasks(request))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(error)) == ["tasks"]
    assert f"got {count}" in error.details()
    assert await tasks_submitted(node) == 0


async def test_1000_entries_are_queued_in_one_call(node):
    results = await submit_tasks(node, *(submit_request(data={"n": i}) for i in range(1000)))

    assert all(r.created and not r.HasField("error") for r in results)
    assert len({r.task_id for r in results}) == 1000
    assert await tasks_submitted(node) == 1000


async def test_request_id_is_idempotent_within_a_call_and_across_calls(node):
    first, repeat, other = await submit_tasks(
        node,
        submit_request(request_id="order-1"),
        submit_request(request_id="order-1", task_type="ignored"),
        submit_request(request_id="order-2"),
    )
    assert first.created and other.created
    assert not repeat.created and not repeat.HasField("error")
    assert repeat.task_id == first.task_id
    assert repeat.created_at == first.created_at

    again, new = await submit_tasks(
        node, submit_request(request_id="order-2"), submit_request(request_id="order-3")
    )
    assert (again.task_id, again.created, again.created_at) == (
        other.task_id,
        False,
        other.created_at,
    )
    assert new.created and new.task_id not in {first.task_id, other.task_id}

    unary = await node.tasks.SubmitTask(submit_request(request_id="order-1"))
    assert (unary.task.task_id, unary.created) == (first.task_id, False)
    assert (await get_task(node.tasks, first.task_id)).task_type == "test"
    assert await tasks_submitted(node) == 3


async def test_task_data_over_the_limit_refuses_only_its_own_entry(node):
    small, big, also_small = await submit_tasks(
        node,
        submit_request(data={"n": 1}),
        submit_request(data={"blob": "x" * MAX_TASK_DATA_BYTES}),
        submit_request(data={"n": 3}),
    )

    assert small.created and also_small.created
    assert big.error.code == code_pb2.INVALID_ARGUMENT
    assert list(violations(big.error)) == ["task_data"]
    assert "COORDINATOR_MAX_TASK_DATA_BYTES" in big.error.message
    assert await tasks_submitted(node) == 2


async def test_submits_survive_redis_forgetting_its_scripts(node, redis_client):
    await redis_client.script_flush()  # as after a Redis restart

    results = await submit_tasks(node, submit_request(), submit_request())

    assert all(r.created for r in results)
    assert await tasks_submitted(node) == 2


# --- ReportTasks ---------------------------------------------------------------------------


def ack(assignment, agent_id: str = "agent-1", token: str | None = None) -> task_pb2.TaskReport:
    return task_pb2.TaskReport(
        acknowledge=task_pb2.AcknowledgeTaskRequest(
            task_id=assignment.task_id,
            agent_id=agent_id,
            fencing_token=assignment.fencing_token if token is None else token,
        )
    )


def complete(
    assignment, agent_id: str = "agent-1", token: str | None = None, **result
) -> task_pb2.TaskReport:
    data = Struct()
    data.update(result)
    return task_pb2.TaskReport(
        complete=task_pb2.CompleteTaskRequest(
            task_id=assignment.task_id,
            agent_id=agent_id,
            fencing_token=assignment.fencing_token if token is None else token,
            result=data,
        )
    )


async def assigned(node, pool, count: int) -> list:
    """``count`` assignments held by one agent, agent-1."""
    agent = await pool.start(node.channel, "agent-1", max_concurrency=count)
    for _ in range(count):
        await node.tasks.SubmitTask(submit_request())
    return [await agent.next_assignment() for _ in range(count)]


async def test_a_good_completion_completes_the_task(node, pool):
    (assignment,) = await assigned(node, pool, 1)

    (result,) = await report_tasks(node, complete(assignment, answer=42))

    assert not result.HasField("error")
    assert result.state == COMPLETED
    assert not result.HasField("lease_expires_at")
    task = await get_task(node.tasks, assignment.task_id)
    assert task.state == COMPLETED
    assert dict(task.result) == {"answer": 42}


async def test_ack_and_complete_of_different_tasks_in_one_call(node, pool):
    first, second = await assigned(node, pool, 2)

    acked, completed = await report_tasks(node, ack(first), complete(second))

    assert acked.state == task_pb2.TASK_STATE_RUNNING
    running = await get_task(node.tasks, first.task_id)
    assert running.state == task_pb2.TASK_STATE_RUNNING
    assert acked.lease_expires_at == running.lease_expires_at
    assert completed.state == COMPLETED
    assert (await get_task(node.tasks, second.task_id)).state == COMPLETED


async def test_a_stale_fencing_token_is_failed_precondition_as_in_the_unary_call(node, pool):
    (assignment,) = await assigned(node, pool, 1)
    stale = complete(assignment, token="1:0123456789abcdef")
    unary = await rpc_error(node.tasks.CompleteTask(stale.complete))

    stale_result, good = await report_tasks(node, stale, complete(assignment))

    assert stale_result.error.code == code_pb2.FAILED_PRECONDITION
    assert stale_result.error.message == unary.details()
    assert "fencing_token" in stale_result.error.message
    assert stale_result.state == task_pb2.TASK_STATE_UNSPECIFIED
    assert good.state == COMPLETED and not good.HasField("error")


async def test_an_unknown_task_is_not_found_and_the_others_are_taken(node, pool):
    (assignment,) = await assigned(node, pool, 1)
    unknown = task_pb2.AcknowledgeTaskRequest(
        task_id=UNKNOWN_TASK_ID, agent_id="agent-1", fencing_token="1:00"
    )

    missing, good = await report_tasks(
        node, task_pb2.TaskReport(acknowledge=unknown), complete(assignment)
    )

    assert missing.error.code == code_pb2.NOT_FOUND
    assert UNKNOWN_TASK_ID in missing.error.message
    assert good.state == COMPLETED


async def test_repeating_a_successful_report_is_ok_and_changes_nothing(node, pool):
    (assignment,) = await assigned(node, pool, 1)
    (done,) = await report_tasks(node, complete(assignment, answer=1))
    assert done.state == COMPLETED
    before = await get_task(node.tasks, assignment.task_id)

    again, within = await report_tasks(
        node, complete(assignment, answer=2), complete(assignment, answer=3)
    )

    for repeat in (again, within):
        assert not repeat.HasField("error")
        assert repeat.state == COMPLETED
    assert await get_task(node.tasks, assignment.task_id) == before
    assert dict(before.result) == {"answer": 1}
    stats = await node.tasks.GetStats(task_pb2.GetStatsRequest())
    assert stats.tasks_completed == 1


async def test_fail_and_extend_lease_entries_work_as_their_unary_calls(node, pool):
    retried, extended = await assigned(node, pool, 2)
    fail = task_pb2.FailTaskRequest(
        task_id=retried.task_id,
        agent_id="agent-1",
        fencing_token=retried.fencing_token,
        error=task_pb2.TaskError(message="boom", type="TestError", retryable=True),
    )
    extend = task_pb2.ExtendTaskLeaseRequest(
        task_id=extended.task_id,
        agent_id="agent-1",
        fencing_token=extended.fencing_token,
        lease_duration=duration(120),
    )

    failed, lease = await report_tasks(
        node, task_pb2.TaskReport(fail=fail), task_pb2.TaskReport(extend_lease=extend)
    )

    assert failed.state == task_pb2.TASK_STATE_PENDING  # attempts remain: retried later
    task = await get_task(node.tasks, retried.task_id)
    assert task.attempts[0].error.message == "boom"
    assert lease.HasField("lease_expires_at")
    assert lease.lease_expires_at == (await get_task(node.tasks, extended.task_id)).lease_expires_at
    # 120 s from now, no longer the 300 s start_to_close_timeout from the assignment.
    lease_s = lease.lease_expires_at.seconds - extended.assigned_at.seconds
    assert 120 <= lease_s < 180


async def test_bad_reports_are_refused_each_naming_its_field(node, pool):
    (assignment,) = await assigned(node, pool, 1)
    no_token = task_pb2.CompleteTaskRequest(task_id=assignment.task_id, agent_id="agent-1")
    too_big = complete(assignment, blob="x" * (2 * MAX_TASK_DATA_BYTES))
    no_message = task_pb2.FailTaskRequest(
        task_id=assignment.task_id, agent_id="agent-1", fencing_token=assignment.fencing_token
    )

    empty, missing_token, oversize, unexplained, good = await report_tasks(
        node,
        task_pb2.TaskReport(),
        task_pb2.TaskReport(complete=no_token),
        too_big,
        task_pb2.TaskReport(fail=no_message),
        complete(assignment),
    )

    assert list(violations(empty.error)) == ["report"]
    assert list(violations(missing_token.error)) == ["fencing_token"]
    assert list(violations(oversize.error)) == ["result"]
    assert list(violations(unexplained.error)) == ["error.message"]
    for refused in (empty, missing_token, oversize, unexplained):
        assert refused.error.code == code_pb2.INVALID_ARGUMENT
    unary = await rpc_error(node.tasks.CompleteTask(too_big.complete))
    assert oversize.error.message == unary.details()
    assert good.state == COMPLETED


@pytest.mark.parametrize("count", [0, 1001])
async def test_no_reports_or_more_than_1000_is_invalid_argument_naming_reports(node, count):
    request = task_pb2.ReportTasksRequest(reports=[task_pb2.TaskReport() for _ in range(count)])
    error = await rpc_error(node.tasks.ReportTasks(request))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(error)) == ["reports"]


# --- Redis outages -------------------------------------------------------------------------


async def test_redis_refusing_writes_or_gone_fails_the_whole_call_unavailable(
    start_node, own_redis
):
    node = await start_node(redis_url=own_redis.url(1))
    admin = aioredis.Redis(port=own_redis.port)
    try:
        await admin.replicaof("127.0.0.1", "1")  # no primary there: a read-only replica
        refused = await rpc_error(
            node.tasks.SubmitTasks(
                task_pb2.SubmitTasksRequest(tasks=[submit_request(), submit_request()])
            )
        )
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        assert "refuses writes" in refused.details()
        await admin.replicaof("NO", "ONE")
    finally:
        await admin.aclose()

    own_redis.stop()
    gone = await rpc_error(
        node.tasks.SubmitTasks(task_pb2.SubmitTasksRequest(tasks=[submit_request()]))
    )
    assert gone.code() == grpc.StatusCode.UNAVAILABLE
    report = task_pb2.TaskReport(
        acknowledge=task_pb2.AcknowledgeTaskRequest(
            task_id=UNKNOWN_TASK_ID, agent_id="agent-1", fencing_token="1:00"
        )
    )
    gone = await rpc_error(node.tasks.ReportTasks(task_pb2.ReportTasksRequest(reports=[report])))
    assert gone.code() == grpc.StatusCode.UNAVAILABLE


# --- grpcurl -------------------------------------------------------------------------------


def test_submit_tasks_with_grpcurl(spawn_node):
    from coordinator.server import TASK_SERVICE
    from test_grpcurl import GRPCURL, grpcurl, method, ok_json

    assert GRPCURL, "grpcurl is not installed next to the venv's python"
    node = spawn_node()
    node.wait_serving()
    request = {"tasks": [{"task_type": "echo", "request_id": "r-1"}, {"task_type": "has spaces"}]}

    reply = ok_json(grpcurl(node.address, method(TASK_SERVICE, "SubmitTasks"), data=request))

    queued, refused = reply["results"]
    assert queued["created"] is True and len(queued["taskId"]) == 32
    assert "error" not in queued
    assert refused["error"]["code"] == code_pb2.INVALID_ARGUMENT
    assert refused["error"]["message"].startswith("task_type: ")
    assert [v["field"] for v in refused["error"]["fieldViolations"]] == ["task_type"]
    again = ok_json(grpcurl(node.address, method(TASK_SERVICE, "SubmitTasks"), data=request))
    assert again["results"][0]["taskId"] == queued["taskId"]
    assert again["results"][0].get("created", False) is False
