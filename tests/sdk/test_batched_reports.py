"""The SDK's batched calls against a real node: ``Client.submit_many`` (SubmitTasks), and an
agent's reports sent as StreamReportTasks messages, several per message when several are made
together, each caller still getting its own outcome. Calls are counted by the node's own
metrics, the batches of reports it applies at its task store."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from agent_harness import eventually, get_task, submit_request
from aitbc.coordinator.v1 import task_pb2
from coordinator.sdk import NewTask, TaskContext, TaskError, TaskState
from coordinator.sdk.assignments import assignment_from_proto
from coordinator.sdk.endpoints import Endpoints
from coordinator.sdk.reports import Reporter
from support import free_port

TASKS = "aitbc.coordinator.v1.TaskService"


def addr(node: Any) -> str:
    return f"127.0.0.1:{node.port}"


def calls(node: Any, method: str, code: str = "OK", rpc_type: str = "unary") -> float:
    """How many calls of a TaskService method the node answered with ``code`` (a stream
    counts once, when it ends)."""
    value = node.coordinator.metrics.registry.get_sample_value(
        "aitbc_coordinator_rpc_handled_total",
        {"service": TASKS, "method": method, "type": rpc_type, "code": code},
    )
    return value or 0.0


def report_batches(node: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each batch of reports the node applies from now on (one per ReportTasks
    call or StreamReportTasks message), recorded on the way to its real task store."""
    store = node.coordinator.tasks
    apply = store.report_many
    sizes: list[int] = []

    async def report_many(reports: Any) -> Any:
        sizes.append(len(reports))
        return await apply(reports)

    monkeypatch.setattr(store, "report_many", report_many)
    return sizes


async def test_an_agent_whose_tasks_finish_together_reports_them_in_shared_messages(
    node, sdk_agents, make_client, monkeypatch
):
    count = 20
    release = asyncio.Event()
    started: set[str] = set()

    async def handler(task: TaskContext) -> dict[str, Any]:
        started.add(task.task_id)
        await release.wait()
        return {"n": task.data["n"]}

    agent = await sdk_agents.start(addr(node), handler, max_concurrency=count)
    client = make_client(addr(node))
    submitted = await client.submit_many([NewTask("work", {"n": i}) for i in range(count)])

    async def all_started() -> bool:
        return len(started) == count

    await eventually(all_started, what=f"{count} handlers running")
    batches = report_batches(node, monkeypatch)
    release.set()  # every handler returns at once: 20 completions made together

    async def all_reported() -> bool:
        return agent.running_tasks == 0

    await eventually(all_reported, what="every completion reported")
    for i, result in enumerate(submitted):
        task = await client.get(result.task_id)
        assert task.state == TaskState.COMPLETED, task
        assert task.result == {"n": i}
    assert sum(batches) == count
    assert 1 <= len(batches) < count, f"{count} completions took {len(batches)} messages"
    # Acknowledgements and completions all went as messages of one StreamReportTasks stream.
    await agent.stop()
    assert calls(node, "StreamReportTasks", rpc_type="bidi_stream") == 1
    for method in ("ReportTasks", "AcknowledgeTask", "CompleteTask"):
        assert calls(node, method) == 0, method


async def test_each_report_of_a_shared_message_gets_its_own_outcome(node, pool, monkeypatch):
    agent = await pool.start(node.channel, "agent-1", max_concurrency=3)
    for _ in range(3):
        await node.tasks.SubmitTask(submit_request())
    first, second, third = [assignment_from_proto(await agent.next_assignment()) for _ in range(3)]
    stale = dataclasses.replace(second, fencing_token="1:0123456789abcdef")
    endpoints = Endpoints(addr(node))
    reporter = Reporter(endpoints, "agent-1")
    batches = report_batches(node, monkeypatch)
    try:
        outcomes = await asyncio.gather(
            reporter.complete(first, Struct()),
            reporter.complete(stale, Struct()),
            reporter.fail(third, TaskError("boom", "TestError", retryable=False)),
        )
    finally:
        await reporter.close()
        await endpoints.close()

    assert outcomes == [None, grpc.StatusCode.FAILED_PRECONDITION, None]
    assert batches == [3]  # made together: one message
    assert calls(node, "ReportTasks") == 0
    states = [(await get_task(node.tasks, a.task_id)).state for a in (first, second, third)]
    assert states == [
        task_pb2.TASK_STATE_COMPLETED,
        task_pb2.TASK_STATE_ASSIGNED,  # the stale report changed nothing
        task_pb2.TASK_STATE_FAILED,
    ]


async def test_submit_many_keeps_order_refuses_only_bad_tasks_and_splits_big_batches(
    node, make_client
):
    client = make_client(addr(node))
    tasks = [NewTask("ok", {"i": i}) for i in range(1002)]
    tasks.insert(500, NewTask("not a type"))
    before = calls(node, "SubmitTasks")

    results = await client.submit_many(tasks)

    assert calls(node, "SubmitTasks") - before == 2  # 1003 tasks: 1000 + 3
    assert len(results) == len(tasks)
    refused = results.pop(500)
    assert refused.error is not None and refused.error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "task_type" in refused.error.message
    assert not refused.task_id and not refused.created
    assert all(r.created and r.error is None and r.created_at_ms for r in results)
    assert len({r.task_id for r in results}) == 1002
    assert (await client.get(results[700].task_id)).task_data == {"i": 700}
    assert (await client.stats()).tasks_submitted == 1002


async def test_submit_many_is_idempotent_by_request_id_and_fails_over(node, make_client):
    dead = f"127.0.0.1:{free_port()}"
    client = make_client([dead, addr(node)])
    tasks = [NewTask("once", request_id=f"order-{i}") for i in range(3)]

    first = await client.submit_many(tasks)
    again = await client.submit_many([*tasks, NewTask("new")])

    assert [r.created for r in first] == [True, True, True]
    assert [r.task_id for r in again[:3]] == [r.task_id for r in first]
    assert [r.created for r in again] == [False, False, False, True]
    assert len(again[3].request_id) == 32  # generated
    assert (await client.stats()).tasks_submitted == 4
