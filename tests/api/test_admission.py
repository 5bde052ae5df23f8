"""Admission of batch submits: beyond the node's bound of tasks being submitted in batches
(or one connection's) a SubmitTasks call or StreamSubmitTasks message is refused at once,
RESOURCE_EXHAUSTED with google.rpc.RetryInfo, while single calls and reports keep being
served."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from agent_harness import rpc_error, submit_request
from aitbc.coordinator.v1 import task_pb2
from coordinator.sdk.client import Client, NewTask

HELD_BY = "ipv4:192.0.2.1:1"
"""A peer that is not the test's: its batch submits hold the node's room."""
OTHER = "ipv4:192.0.2.2:1"


def retry_delay_s(error: grpc.aio.AioRpcError) -> float:
    details = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert details, "RESOURCE_EXHAUSTED must carry google.rpc.Status details"
    retry_info = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry_info) for d in status_pb2.Status.FromString(details).details)
    return retry_info.retry_delay.ToNanoseconds() / 1e9


def batch(count: int = 3) -> task_pb2.SubmitTasksRequest:
    return task_pb2.SubmitTasksRequest(tasks=[submit_request() for _ in range(count)])


async def test_a_batch_beyond_the_node_bound_is_refused_with_retry_info(start_node):
    node = await start_node(batch_tasks_per_node=2000, batch_retry_after_s=0.3)
    admission = node.coordinator.admission
    admission.enter(HELD_BY, 1500)  # batch submits of another client are running
    try:
        error = await rpc_error(node.tasks.SubmitTasks(batch(600)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "COORDINATOR_BATCH_TASKS_PER_NODE" in (error.details() or "")
        assert retry_delay_s(error) == pytest.approx(0.3)
        fits = await node.tasks.SubmitTasks(batch(400))
        assert all(r.task_id for r in fits.results), "400 more tasks fit in the bound"

        admission.enter(OTHER, 500)  # the node is at its bound: refused before decoding
        error = await rpc_error(node.tasks.SubmitTasks(batch()))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_delay_s(error) == pytest.approx(0.3)

        stream = node.tasks.StreamSubmitTasks()
        await stream.write(task_pb2.StreamSubmitTasksRequest(tasks=[submit_request()]))
        assert await stream.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_delay_s(await _as_error(stream)) == pytest.approx(0.3)

        # Single calls and reports are never counted against the bound.
        reply = await node.tasks.SubmitTask(submit_request())
        assert reply.created
        reports = await node.tasks.ReportTasks(
            task_pb2.ReportTasksRequest(
                reports=[
                    task_pb2.TaskReport(
                        acknowledge=task_pb2.AcknowledgeTaskRequest(
                            task_id=reply.task.task_id, agent_id="agent-1", fencing_token="1"
                        )
                    )
                ]
            )
        )
        assert reports.results[0].error.code != 0  # refused as an entry (no such attempt)
        assert admission.refused == 3
    finally:
        admission.leave(HELD_BY, 1500)
        admission.leave(OTHER, 500)
    accepted = await node.tasks.SubmitTasks(batch())
    assert all(r.task_id for r in accepted.results)


async def test_one_connection_gets_at_most_its_share(start_node):
    """Several large batches at once on one connection: beyond its bound they are refused,
    the others accepted whole."""
    node = await start_node(batch_tasks_per_node=10_000, batch_tasks_per_peer=1000)
    big = task_pb2.SubmitTasksRequest(
        tasks=[submit_request(data={"blob": "x" * 3000}) for _ in range(1000)]
    )
    calls = [node.tasks.SubmitTasks(big) for _ in range(4)]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    accepted = [o for o in outcomes if isinstance(o, task_pb2.SubmitTasksResponse)]
    assert refused, "4 batches of 1000 at once on one connection, which may submit 1000"
    assert accepted
    assert len(refused) + len(accepted) == 4
    for error in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        assert "COORDINATOR_BATCH_TASKS_PER_PEER" in (error.details() or "")
    for reply in accepted:
        assert all(r.task_id for r in reply.results)


async def test_the_sdk_waits_as_told_and_retries(start_node):
    node = await start_node(batch_tasks_per_node=1000, batch_retry_after_s=0.2)
    admission = node.coordinator.admission
    admission.enter(HELD_BY, 1000)
    loop = asyncio.get_running_loop()
    loop.call_later(1.0, admission.leave, HELD_BY, 1000)
    async with Client(f"127.0.0.1:{node.port}", retry_timeout_s=20) as client:
        results = await client.submit_many([NewTask("test", {"n": i}) for i in range(5)])
    assert all(r.task_id and r.error is None for r in results)
    assert admission.refused >= 2, "refused while held, then accepted once the place came free"


async def _as_error(call: grpc.aio.StreamStreamCall) -> grpc.aio.AioRpcError:  # type: ignore[type-arg]
    """The error a finished stream call ended with, as an AioRpcError."""
    return grpc.aio.AioRpcError(
        await call.code(),
        await call.initial_metadata(),
        await call.trailing_metadata(),
        await call.details(),
    )
