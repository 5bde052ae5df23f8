"""StreamSubmitTasks and StreamReportTasks over real gRPC: each request message handled as
its unary batch call (SubmitTasks, ReportTasks) and answered in order on the same stream; a
message the call would refuse as a whole, or a Redis outage, ends the stream with that
status, and what was answered before it stands."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import code_pb2
from test_task_batches import complete, violations

from agent_harness import field_violations, get_task, submit_request
from aitbc.coordinator.v1 import agent_pb2, task_pb2
from metrics_support import TASKS, handled, scrape

COMPLETED = task_pb2.TASK_STATE_COMPLETED


class Submits:
    """One open StreamSubmitTasks call: send a message, read its answer."""

    def __init__(self, node) -> None:
        self.call = node.tasks.StreamSubmitTasks()

    async def batch(self, *tasks: task_pb2.SubmitTaskRequest) -> list[task_pb2.SubmitTasksResult]:
        await self.call.write(task_pb2.StreamSubmitTasksRequest(tasks=tasks))
        response = await self.call.read()
        assert response is not grpc.aio.EOF
        assert len(response.results) == len(tasks)
        return list(response.results)


async def stream_error(call) -> grpc.aio.AioRpcError:
    """The status that ended a stream call (the test fails if it ends OK)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while await call.read() is not grpc.aio.EOF:
            pass
    return caught.value


async def test_each_message_is_queued_as_a_submit_tasks_call_and_answered_in_order(node):
    submits = Submits(node)

    first = await submits.batch(submit_request(task_type="a"), submit_request(priority=9))
    second = await submits.batch(*(submit_request(task_type=f"t{i}") for i in range(50)))
    third = await submits.batch(submit_request(task_type="last", request_id="stream-1"))
    await submits.call.done_writing()
    assert await submits.call.read() is grpc.aio.EOF
    assert await submits.call.code() == grpc.StatusCode.OK

    queued, refused = first
    assert queued.created and not queued.HasField("error")
    assert (await get_task(node.tasks, queued.task_id)).task_type == "a"
    assert refused.error.code == code_pb2.INVALID_ARGUMENT
    assert list(violations(refused.error)) == ["priority"]
    assert [(await get_task(node.tasks, r.task_id)).task_type for r in second] == [
        f"t{i}" for i in range(50)
    ]
    assert third[0].created
    listed = await node.tasks.ListTasks(task_pb2.ListTasksRequest(page_size=100))
    # Submitted in the order the messages and their entries came (newest first here).
    expected = [queued.task_id, *(r.task_id for r in second), third[0].task_id]
    assert [t.task_id for t in listed.tasks] == expected[::-1]


async def test_a_request_id_seen_on_the_stream_or_by_a_call_creates_nothing_more(node):
    submits = Submits(node)
    (by_stream,) = await submits.batch(submit_request(request_id="same"))
    (again,) = await submits.batch(submit_request(request_id="same"))
    by_call = await node.tasks.SubmitTask(submit_request(request_id="same"))
    await submits.call.done_writing()

    assert by_stream.created and not again.created
    assert again.task_id == by_stream.task_id == by_call.task.task_id
    assert (await node.tasks.GetStats(task_pb2.GetStatsRequest())).tasks_submitted == 1


@pytest.mark.parametrize("count", [0, 1001])
async def test_a_message_the_call_would_refuse_ends_the_stream_after_the_answered_ones(node, count):
    submits = Submits(node)
    (kept,) = await submits.batch(submit_request(task_type="kept"))

    await submits.call.write(
        task_pb2.StreamSubmitTasksRequest(tasks=[submit_request() for _ in range(count)])
    )
    error = await stream_error(submits.call)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(error)) == ["tasks"]
    assert (await get_task(node.tasks, kept.task_id)).state == task_pb2.TASK_STATE_PENDING
    assert (await node.tasks.GetStats(task_pb2.GetStatsRequest())).tasks_submitted == 1


async def test_reports_on_one_stream_settle_each_task_as_report_tasks_would(node, pool):
    agent = await pool.start(node.channel, "agent-1", max_concurrency=3)
    for _ in range(3):
        await node.tasks.SubmitTask(submit_request())
    first, second, third = [await agent.next_assignment() for _ in range(3)]
    reports = node.tasks.StreamReportTasks()

    await reports.write(
        task_pb2.StreamReportTasksRequest(
            reports=[complete(first, answer=1), complete(second, token="1:0123456789abcdef")]
        )
    )
    done, stale = (await reports.read()).results
    await reports.write(task_pb2.StreamReportTasksRequest(reports=[complete(third, answer=3)]))
    (later,) = (await reports.read()).results
    await reports.done_writing()
    assert await reports.read() is grpc.aio.EOF

    assert done.state == COMPLETED and not done.HasField("error")
    assert dict((await get_task(node.tasks, first.task_id)).result) == {"answer": 1}
    assert stale.error.code == code_pb2.FAILED_PRECONDITION
    assert "fencing_token" in stale.error.message
    assert (await get_task(node.tasks, second.task_id)).state == task_pb2.TASK_STATE_ASSIGNED
    assert later.state == COMPLETED


async def test_an_empty_report_message_ends_the_stream_naming_reports(node):
    reports = node.tasks.StreamReportTasks()
    await reports.write(task_pb2.StreamReportTasksRequest())

    error = await stream_error(reports)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(error)) == ["reports"]


async def test_redis_gone_ends_both_streams_unavailable(start_node, own_redis):
    node = await start_node(redis_url=own_redis.url(1))
    submits = Submits(node)
    await submits.batch(submit_request())
    reports = node.tasks.StreamReportTasks()

    own_redis.stop()
    await submits.call.write(task_pb2.StreamSubmitTasksRequest(tasks=[submit_request()]))
    await reports.write(
        task_pb2.StreamReportTasksRequest(
            reports=[complete(agent_pb2.Assignment(task_id="0" * 32, fencing_token="1:00"))]
        )
    )

    for call in (submits.call, reports):
        error = await stream_error(call)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "Redis" in error.details()


async def test_a_stream_that_ends_is_counted_once_as_a_bidi_stream(start_node):
    node = await start_node(metrics_enabled=True, metrics_port=0)
    submits = Submits(node)
    for _ in range(3):
        await submits.batch(submit_request())
    await submits.call.done_writing()
    assert await submits.call.read() is grpc.aio.EOF
    refused = node.tasks.StreamSubmitTasks()
    await refused.write(task_pb2.StreamSubmitTasksRequest())
    await stream_error(refused)

    samples = await scrape(node.coordinator.metrics_port)

    assert handled(samples, TASKS, "StreamSubmitTasks", "OK", "bidi_stream") == 1
    assert handled(samples, TASKS, "StreamSubmitTasks", "INVALID_ARGUMENT", "bidi_stream") == 1


async def _messages(*batches: list[task_pb2.SubmitTaskRequest]) -> AsyncIterator:
    for tasks in batches:
        yield task_pb2.StreamSubmitTasksRequest(tasks=tasks)


async def test_a_request_iterator_gets_every_answer_in_order(node):
    """The generated stub's other style: requests from an async iterator."""
    call = node.tasks.StreamSubmitTasks(
        _messages([submit_request(task_type="x")], [submit_request(), submit_request()])
    )

    answers = [response async for response in call]

    assert [len(a.results) for a in answers] == [1, 2]
    assert all(r.created for a in answers for r in a.results)
