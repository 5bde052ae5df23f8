"""Bad input every RPC shares, over real gRPC: bytes that decode to no request, Structs
nested too deep or holding NaN, unknown enum numbers, and error messages that stay bounded
whatever the client sent."""

from __future__ import annotations

import logging
import math
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from google.rpc import code_pb2

from agent_harness import field_violations, rpc_error, submit_request
from aitbc.coordinator.v1 import agent_pb2, task_pb2
from coordinator import errors

GARBAGE = b"\xff" * 16
"""Not a protobuf message: an invalid tag and a varint that never ends."""


def _identity(data: bytes) -> bytes:
    return data


def _raw_unary(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        method, request_serializer=_identity, response_deserializer=_identity
    )


def _assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()
        assert "Traceback" not in record.getMessage()
        assert "DecodeError" not in record.getMessage()


@pytest.mark.parametrize(
    "method",
    [
        "/aitbc.coordinator.v1.TaskService/SubmitTask",
        "/aitbc.coordinator.v1.TaskService/GetTask",
        "/aitbc.coordinator.v1.AgentService/RegisterAgent",
    ],
)
async def test_an_undecodable_unary_request_is_invalid_argument(node, caplog, method):
    caplog.set_level(logging.DEBUG)
    for _ in range(5):
        error = await rpc_error(_raw_unary(node.channel, method)(GARBAGE))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "request could not be decoded"
    _assert_no_traceback(caplog)
    logged = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(logged) == 1, "logged once per interval, not once per call"


async def test_an_undecodable_server_stream_request_is_invalid_argument(node, caplog):
    caplog.set_level(logging.DEBUG)
    call = node.channel.unary_stream(
        "/aitbc.coordinator.v1.TaskService/WatchTask",
        request_serializer=_identity,
        response_deserializer=_identity,
    )(GARBAGE)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "request could not be decoded"
    _assert_no_traceback(caplog)


@pytest.mark.parametrize("method", ["StreamSubmitTasks", "StreamReportTasks"])
async def test_an_undecodable_message_of_a_bidi_stream_is_invalid_argument(node, caplog, method):
    caplog.set_level(logging.DEBUG)
    call = node.channel.stream_stream(
        f"/aitbc.coordinator.v1.TaskService/{method}",
        request_serializer=_identity,
        response_deserializer=_identity,
    )()
    await call.write(GARBAGE)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "request could not be decoded"
    assert "class" not in caught.value.details()
    _assert_no_traceback(caplog)


# --- Structs: nesting depth and numbers JSON does not have -------------------------------------

MAX_DEPTH = 32
"""COORDINATOR_MAX_STRUCT_DEPTH's default, and the most a Python client can read back."""


def nested(levels: int) -> dict[str, Any]:
    """A JSON object of ``levels`` levels of objects (the costliest kind for a parser: an
    object level is 3 protobuf messages, a list level 2)."""
    value: Any = 1
    for _ in range(levels - 1):
        value = {"v": value}
    return {"v": value}


def struct(data: dict[str, Any]) -> Struct:
    message = Struct()
    message.update(data)
    return message


def failure(assignment: agent_pb2.Assignment, agent_id: str, details: Struct) -> Any:
    return task_pb2.FailTaskRequest(
        task_id=assignment.task_id,
        agent_id=agent_id,
        fencing_token=assignment.fencing_token,
        error=task_pb2.TaskError(message="no", retryable=False, details=details),
    )


def completion(assignment: agent_pb2.Assignment, agent_id: str, result: Struct) -> Any:
    return task_pb2.CompleteTaskRequest(
        task_id=assignment.task_id,
        agent_id=agent_id,
        fencing_token=assignment.fencing_token,
        result=result,
    )


async def test_structs_at_the_depth_limit_are_accepted_and_every_reply_can_be_read(node, pool):
    """Every reply that carries the task is parsed by this (Python) client: a task at the
    limit in task_data, result and error.details must be readable everywhere."""
    deep_data = nested(MAX_DEPTH)
    deep = struct(deep_data)
    agent = await pool.start(node.channel, "agent-1")

    failed = (await node.tasks.SubmitTask(submit_request(data=deep_data))).task
    assignment = await agent.next_assignment()  # pushed, and parsed by the agent's stream
    assert assignment.task_data == deep
    await node.tasks.FailTask(failure(assignment, "agent-1", deep))

    done = (await node.tasks.SubmitTask(submit_request(data=deep_data))).task
    assignment = await agent.next_assignment()
    await node.tasks.CompleteTask(completion(assignment, "agent-1", deep))

    read = (await node.tasks.GetTask(task_pb2.GetTaskRequest(task_id=failed.task_id))).task
    assert read.attempts[0].error.details == deep  # the deepest place a Struct is sent
    assert read.error.details == deep and read.task_data == deep
    read = (await node.tasks.GetTask(task_pb2.GetTaskRequest(task_id=done.task_id))).task
    assert read.result == deep
    listed = await node.tasks.ListTasks(task_pb2.ListTasksRequest())
    assert {t.task_id for t in listed.tasks} == {failed.task_id, done.task_id}
    by_agent = await node.tasks.ListTasks(task_pb2.ListTasksRequest(agent_id="agent-1"))
    assert len(by_agent.tasks) == 2
    async for change in node.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=failed.task_id)):
        assert change.task.attempts[0].error.details == deep
        break

    waiting = await node.tasks.SubmitTask(
        submit_request(data=deep_data, requirements=task_pb2.TaskRequirements(agent_id="nobody"))
    )
    cancelled = await node.tasks.CancelTask(
        task_pb2.CancelTaskRequest(task_id=waiting.task.task_id)
    )
    assert cancelled.task.task_data == deep


async def test_a_struct_one_level_too_deep_is_invalid_argument_naming_the_field(
    node, pool, start_node
):
    too_deep_data = nested(MAX_DEPTH + 1)
    too_deep = struct(too_deep_data)
    as_list = {"v": [[[1]]]}  # 4 levels: the object, and three lists

    error = await rpc_error(node.tasks.SubmitTask(submit_request(data=too_deep_data)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(error)) == ["task_data"]
    assert "32 levels" in error.details()

    strict = await start_node(max_struct_depth=3)
    error = await rpc_error(strict.tasks.SubmitTask(submit_request(data=as_list)))
    assert list(field_violations(error)) == ["task_data"]
    assert "3 levels" in error.details()
    await strict.tasks.SubmitTask(submit_request(data={"v": [[1]]}))  # 3 levels

    agent = await pool.start(node.channel, "agent-2")
    await node.tasks.SubmitTask(submit_request())
    assignment = await agent.next_assignment()
    error = await rpc_error(node.tasks.CompleteTask(completion(assignment, "agent-2", too_deep)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(error)) == ["result"]
    error = await rpc_error(node.tasks.FailTask(failure(assignment, "agent-2", too_deep)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(error)) == ["error.details"]
    stats = await node.tasks.GetStats(task_pb2.GetStatsRequest())
    assert stats.tasks_submitted == 2 and stats.tasks_completed == stats.tasks_failed == 0


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
async def test_nan_and_infinity_are_invalid_argument_naming_the_field(node, pool, number):
    bad_data = {"ok": 1, "deep": {"x": [number]}}
    bad = struct(bad_data)

    error = await rpc_error(node.tasks.SubmitTask(submit_request(data=bad_data)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(error)) == ["task_data"]

    agent = await pool.start(node.channel, "agent-1")
    await node.tasks.SubmitTask(submit_request())
    assignment = await agent.next_assignment()
    error = await rpc_error(node.tasks.CompleteTask(completion(assignment, "agent-1", bad)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(error)) == ["result"]
    error = await rpc_error(node.tasks.FailTask(failure(assignment, "agent-1", bad)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(error)) == ["error.details"]


def _entry_codes(results: Any) -> list[int]:
    return [r.error.code for r in results]


async def test_a_nan_or_too_deep_entry_of_a_batch_is_that_entrys_error(node, pool):
    nan = struct({"x": math.nan})
    entries = [
        submit_request(),
        submit_request(data={"x": math.nan}),
        submit_request(data=nested(MAX_DEPTH + 1)),
    ]

    reply = await node.tasks.SubmitTasks(task_pb2.SubmitTasksRequest(tasks=entries))
    assert _entry_codes(reply.results) == [0, code_pb2.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT]
    assert [v.field for v in reply.results[1].error.field_violations] == ["task_data"]

    stream = node.tasks.StreamSubmitTasks()
    await stream.write(task_pb2.StreamSubmitTasksRequest(tasks=entries))
    reply = await stream.read()
    assert _entry_codes(reply.results) == [0, code_pb2.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT]
    await stream.done_writing()

    agent = await pool.start(node.channel, "agent-1", max_concurrency=4)
    first, second = await agent.next_assignment(), await agent.next_assignment()

    def reports(assignment: agent_pb2.Assignment, result: Struct) -> list[task_pb2.TaskReport]:
        return [
            task_pb2.TaskReport(complete=completion(assignment, "agent-1", result)),
            task_pb2.TaskReport(fail=failure(assignment, "agent-1", struct({"x": -math.inf}))),
        ]

    reply = await node.tasks.ReportTasks(task_pb2.ReportTasksRequest(reports=reports(first, nan)))
    assert _entry_codes(reply.results) == [code_pb2.INVALID_ARGUMENT] * 2
    assert [v.field for v in reply.results[0].error.field_violations] == ["result"]
    assert [v.field for v in reply.results[1].error.field_violations] == ["error.details"]

    # (A Struct too deep inside a batch of reports is past the node's own parser limit: the
    # whole request is undecodable, INVALID_ARGUMENT. NaN is not.)
    stream = node.tasks.StreamReportTasks()
    await stream.write(
        task_pb2.StreamReportTasksRequest(reports=reports(second, struct({"x": math.inf})))
    )
    reply = await stream.read()
    assert _entry_codes(reply.results) == [code_pb2.INVALID_ARGUMENT] * 2
    # the stream is still open: a good report on it is taken
    await stream.write(
        task_pb2.StreamReportTasksRequest(
            reports=[task_pb2.TaskReport(complete=completion(second, "agent-1", struct({})))]
        )
    )
    reply = await stream.read()
    assert _entry_codes(reply.results) == [0]
    await stream.done_writing()


# --- Enum numbers the proto does not define ---------------------------------------------------

UNKNOWN_ENUMS = {
    "Heartbeat.status=99": ("agents", "Heartbeat", agent_pb2.HeartbeatRequest, {"status": 99}),
    "Heartbeat.status=-1": ("agents", "Heartbeat", agent_pb2.HeartbeatRequest, {"status": -1}),
    "UpdateAgentStatus.status": (
        "agents",
        "UpdateAgentStatus",
        agent_pb2.UpdateAgentStatusRequest,
        {"status": 99},
    ),
    "DiscoverAgents.statuses[1]": (
        "agents",
        "DiscoverAgents",
        agent_pb2.DiscoverAgentsRequest,
        {"statuses": [agent_pb2.AGENT_STATUS_ACTIVE, 99]},
    ),
    "ListTasks.states[0]": ("tasks", "ListTasks", task_pb2.ListTasksRequest, {"states": [99]}),
    "ListTasks.priorities[0]": (
        "tasks",
        "ListTasks",
        task_pb2.ListTasksRequest,
        {"priorities": [-1]},
    ),
    "SubmitTask.priority": ("tasks", "SubmitTask", submit_request, {"priority": 99}),
    "SubmitTask.balancing_strategy": (
        "tasks",
        "SubmitTask",
        submit_request,
        {"balancing_strategy": 99},
    ),
    "PurgeQueue.priority": ("tasks", "PurgeQueue", task_pb2.PurgeQueueRequest, {"priority": 99}),
    "SetBalancingStrategy.strategy": (
        "tasks",
        "SetBalancingStrategy",
        task_pb2.SetBalancingStrategyRequest,
        {"strategy": 99},
    ),
}


@pytest.mark.parametrize("case", list(UNKNOWN_ENUMS))
async def test_an_unknown_enum_number_is_invalid_argument_naming_field_and_number(node, case):
    service, method, request_type, fields = UNKNOWN_ENUMS[case]
    await node.agents.RegisterAgent(
        agent_pb2.RegisterAgentRequest(agent_id="agent-1", agent_type="worker")
    )
    request = request_type(**fields)
    if hasattr(request, "agent_id") and not request.agent_id:
        request.agent_id = "agent-1"
    stub = getattr(node, service)

    error = await rpc_error(getattr(stub, method)(request))

    field = case.split(".", 1)[1].split("=")[0]
    number = next(str(n) for n in _numbers(fields) if n not in (0, 1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(error)) == [field]
    assert f"{number} is not a known value" in field_violations(error)[field]


def _numbers(fields: dict[str, Any]) -> list[int]:
    (value,) = fields.values()
    return list(value) if isinstance(value, list) else [value]


async def test_unspecified_still_means_what_each_call_says(node, hold_stream):
    """0 is not an unknown number: a heartbeat without status keeps the agent's status,
    a discovery without statuses finds ACTIVE agents."""
    await node.agents.RegisterAgent(
        agent_pb2.RegisterAgentRequest(agent_id="agent-1", agent_type="worker")
    )
    await hold_stream(node, "agent-1")
    reply = await node.agents.Heartbeat(agent_pb2.HeartbeatRequest(agent_id="agent-1"))
    assert reply.status == agent_pb2.AGENT_STATUS_ACTIVE
    found = await node.agents.DiscoverAgents(agent_pb2.DiscoverAgentsRequest())
    assert [a.agent_id for a in found.agents] == ["agent-1"]
    error = await rpc_error(
        node.agents.DiscoverAgents(agent_pb2.DiscoverAgentsRequest(statuses=[0]))
    )
    assert list(field_violations(error)) == ["statuses[0]"]


# --- Error messages stay bounded, whatever the client sent ---------------------------------

TRAILERS_LIMIT = 8 * 1024
"""The metadata size gRPC clients accept by default; an error's trailers must fit in it."""


def _trailer_bytes(error: grpc.aio.AioRpcError) -> int:
    metadata = list(error.trailing_metadata() or ())
    encoded = sum(len(key) + len(value) for key, value in metadata)
    return encoded + len(error.details().encode())  # grpc-message is not in the metadata


async def test_a_huge_task_id_is_invalid_argument_quoting_only_its_start(node):
    huge = "x" * 5000
    for call in (
        node.tasks.GetTask(task_pb2.GetTaskRequest(task_id=huge)),
        node.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=huge)),
        node.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=huge)).read(),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == f"task_id: '{'x' * 64}'... is not a task id (32 hex digits)"


async def test_ten_thousand_bad_labels_give_a_bounded_invalid_argument(node):
    labels = {f"bad key {i} " + "\u00fc" * 100: "v" for i in range(10_000)}
    request = agent_pb2.RegisterAgentRequest(agent_id="agent-1", agent_type="worker", labels=labels)

    error = await rpc_error(node.agents.RegisterAgent(request))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _trailer_bytes(error) < TRAILERS_LIMIT
    violations = field_violations(error)
    # "has 10000 entries" and 10,000 bad keys: as many as fit in the budget, then the count
    reported = len(violations) - 1
    assert 5 <= reported <= 20
    assert violations[""] == f"and {10_001 - reported} more violations"
    assert error.details().endswith(f"; and {10_001 - reported} more violations")
    first_key = next(field for field in violations if field.startswith("labels["))
    assert "\\xfc" in first_key and first_key.endswith("...]")  # ASCII, cut
    assert len(first_key) <= len("labels[]") + 64 + 2 + 3


async def test_every_bad_entry_of_a_batch_stays_bounded_too(node):
    tasks = [
        submit_request(
            task_type="t" * 5000,
            requirements=task_pb2.TaskRequirements(
                labels={f"{'k' * 500} {i}": "v" for i in range(100)}, agent_id="a" * 5000
            ),
        )
    ] * 3
    reply = await node.tasks.SubmitTasks(task_pb2.SubmitTasksRequest(tasks=tasks))
    for result in reply.results:
        assert result.error.code == code_pb2.INVALID_ARGUMENT
        reported = len(result.error.field_violations) - 1  # then "and N more"
        assert 5 <= reported <= 20
        assert result.error.field_violations[-1].description == (
            f"and {103 - reported} more violations"  # type, agent id, "100 entries", 100 keys
        )
        assert len(result.error.message) <= errors.MAX_MESSAGE_CHARS
