"""Client mistakes on the TaskService, over real gRPC: INVALID_ARGUMENT naming the field,
NOT_FOUND, FAILED_PRECONDITION, and nothing stored by a refused request."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from agent_harness import duration, field_violations, rpc_error, submit_request
from aitbc.coordinator.v1 import task_pb2

MAX_TASK_DATA_BYTES = 64
UNKNOWN_TASK_ID = "0" * 32


@pytest.fixture
async def node(start_node):
    return await start_node(max_task_data_bytes=MAX_TASK_DATA_BYTES)


BAD_SUBMITS = {
    "task_data": {"data": {"blob": "x" * (2 * MAX_TASK_DATA_BYTES)}},
    "max_attempts": {"max_attempts": 101},
    "priority": {"priority": 9},
    "requirements.agent_id": {"requirements": task_pb2.TaskRequirements(agent_id="no spaces!")},
    "requirements.min_health_score": {
        "requirements": task_pb2.TaskRequirements(min_health_score=2)
    },
    "requirements.capabilities[0]": {
        "requirements": task_pb2.TaskRequirements(capabilities=["not a tag"])
    },
    "balancing_strategy": {"balancing_strategy": 42},
    "schedule_to_start_timeout": {"schedule_to_start_timeout": duration(0.5)},
    "retry_policy.backoff_multiplier": {
        "retry_policy": task_pb2.RetryPolicy(backoff_multiplier=0.5)
    },
    "task_type": {"task_type": "has spaces"},
    "request_id": {"request_id": "has spaces"},
}


@pytest.mark.parametrize("field", list(BAD_SUBMITS))
async def test_a_bad_submit_is_invalid_argument_naming_the_field(node, field):
    error = await rpc_error(node.tasks.SubmitTask(submit_request(**BAD_SUBMITS[field])))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in error.details()
    assert list(field_violations(error)) == [field]
    stats = await node.tasks.GetStats(task_pb2.GetStatsRequest())
    assert stats.tasks_submitted == 0
    assert not (await node.tasks.ListTasks(task_pb2.ListTasksRequest())).tasks


async def test_every_bad_field_of_one_submit_is_reported(node):
    request = submit_request(
        max_attempts=101, priority=9, requirements=task_pb2.TaskRequirements(min_health_score=2)
    )
    error = await rpc_error(node.tasks.SubmitTask(request))
    assert set(field_violations(error)) == {
        "max_attempts",
        "priority",
        "requirements.min_health_score",
    }


def blob_of(size_bytes: int) -> dict[str, str]:
    """Task data whose serialized Struct is exactly ``size_bytes``."""
    for length in range(size_bytes):
        data = {"blob": "x" * length}
        struct = Struct()
        struct.update(data)
        if struct.ByteSize() == size_bytes:
            return data
    raise AssertionError(f"no blob serializes to {size_bytes} bytes")


async def test_task_data_of_exactly_the_limit_is_accepted_and_one_byte_more_is_not(node):
    reply = await node.tasks.SubmitTask(submit_request(data=blob_of(MAX_TASK_DATA_BYTES)))
    assert reply.created
    error = await rpc_error(
        node.tasks.SubmitTask(submit_request(data=blob_of(MAX_TASK_DATA_BYTES + 1)))
    )
    assert "task_data" in field_violations(error)


async def test_get_task_unknown_is_not_found_and_malformed_is_invalid_argument(node):
    missing = await rpc_error(node.tasks.GetTask(task_pb2.GetTaskRequest(task_id=UNKNOWN_TASK_ID)))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert UNKNOWN_TASK_ID in missing.details()
    for malformed in ("not-a-task", "", "A" * 32):
        error = await rpc_error(node.tasks.GetTask(task_pb2.GetTaskRequest(task_id=malformed)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, malformed
        assert "task_id" in field_violations(error)


async def test_cancel_and_watch_name_their_task_id_errors(node):
    unknown = await rpc_error(
        node.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=UNKNOWN_TASK_ID))
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    malformed = await rpc_error(node.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id="x")))
    assert malformed.code() == grpc.StatusCode.INVALID_ARGUMENT
    watch = node.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=UNKNOWN_TASK_ID))
    assert (await rpc_error(watch.read())).code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("finish", ["complete", "cancel"])
async def test_cancelling_a_finished_task_is_failed_precondition(node, pool, finish):
    task_id = (await node.tasks.SubmitTask(submit_request())).task.task_id
    if finish == "complete":
        agent = await pool.start(node.channel, "agent-1")
        await agent.complete(await agent.next_assignment())
    else:
        await node.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task_id))
    before = (await node.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id))).task

    error = await rpc_error(node.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task_id)))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert task_id in error.details()
    after = (await node.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task_id))).task
    assert after == before


async def test_reports_name_their_missing_fields(node):
    error = await rpc_error(
        node.tasks.CompleteTask(task_pb2.CompleteTaskRequest(task_id=UNKNOWN_TASK_ID))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"agent_id", "fencing_token"}
    unknown = await rpc_error(
        node.tasks.AcknowledgeTask(
            task_pb2.AcknowledgeTaskRequest(
                task_id=UNKNOWN_TASK_ID, agent_id="agent-1", fencing_token="1:00"
            )
        )
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    empty_failure = await rpc_error(
        node.tasks.FailTask(
            task_pb2.FailTaskRequest(
                task_id=UNKNOWN_TASK_ID, agent_id="agent-1", fencing_token="1:00"
            )
        )
    )
    assert "error.message" in field_violations(empty_failure)


async def test_list_tasks_names_its_bad_filters(node):
    error = await rpc_error(
        node.tasks.ListTasks(task_pb2.ListTasksRequest(states=[99], priorities=[9], page_size=1001))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"states[0]", "priorities[0]", "page_size"}
