"""When the SDK agent acknowledges (issue 17): a task that finishes within
``acknowledge_after_s`` is completed straight from ASSIGNED, one report and no
acknowledgement; a longer one is acknowledged (RUNNING) and its lease kept; 0 acknowledges
before the handler runs, as before. Real nodes and Redis; the reports the node applies are
recorded on the way to its real task store."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from agent_harness import eventually, submit_request
from coordinator.sdk import Agent, RetryPolicy, TaskContext, TaskState
from coordinator.sdk.assignments import assignment_from_proto
from coordinator.sdk.endpoints import Endpoints
from coordinator.sdk.reports import Reporter
from coordinator.sdk.runner import AttemptRunner, acknowledge_delay_s

TASKS = "aitbc.coordinator.v1.TaskService"
FAST_RETRY = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.1)


def addr(node: Any) -> str:
    return f"127.0.0.1:{node.port}"


def applied_reports(node: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(task_id, action) of every report the node applies from now on, batched (stream
    messages, ReportTasks) or alone (AcknowledgeTask, ExtendTaskLease...), in order."""
    store = node.coordinator.tasks
    seen: list[tuple[str, str]] = []
    report_many, report_one = store.report_many, store._report

    async def spy_many(reports: Any) -> Any:
        seen.extend((r.task_id, r.action) for r in reports)
        return await report_many(reports)

    async def spy_one(report: Any) -> Any:
        seen.append((report.task_id, report.action))
        return await report_one(report)

    monkeypatch.setattr(store, "report_many", spy_many)
    monkeypatch.setattr(store, "_report", spy_one)
    return seen


def unary_acknowledgements(node: Any) -> float:
    """AcknowledgeTask calls the node answered, whatever their code."""
    total = 0.0
    for metric in node.coordinator.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "aitbc_coordinator_rpc_handled_total" and (
                sample.labels["service"],
                sample.labels["method"],
            ) == (TASKS, "AcknowledgeTask"):
                total += sample.value
    return total


def test_the_delay_is_the_setting_but_at_most_a_quarter_of_the_lease():
    assert acknowledge_delay_s(1.0, 300.0) == 1.0
    assert acknowledge_delay_s(1.0, 2.0) == 0.5
    assert acknowledge_delay_s(0.0, 300.0) == 0.0


@pytest.mark.parametrize("acknowledge_after_s", [-1.0, float("nan")])
def test_a_negative_delay_is_refused(acknowledge_after_s):
    with pytest.raises(ValueError, match="acknowledge_after_s"):
        Agent("agent-1", lambda task: None, acknowledge_after_s=acknowledge_after_s)


async def test_a_quick_task_is_completed_without_an_acknowledgement(
    node, sdk_agents, make_client, monkeypatch
):
    async def quick(task: TaskContext) -> dict[str, Any]:
        return {"n": task.data["n"]}

    reports = applied_reports(node, monkeypatch)
    await sdk_agents.start(addr(node), quick)  # acknowledge_after_s: 1 s by default
    client = make_client(addr(node))
    tasks = [await client.submit("quick", {"n": n}) for n in range(5)]

    for n, task in enumerate(tasks):
        assert await client.wait(task.task_id, timeout_s=10) == {"n": n}
        done = await client.get(task.task_id)
        states = [t.state for t in done.transitions]
        assert states == [TaskState.PENDING, TaskState.ASSIGNED, TaskState.COMPLETED], states
    # One report per task reached the node: its completion.
    assert sorted(reports) == sorted((t.task_id, "complete") for t in tasks)
    assert unary_acknowledgements(node) == 0


async def test_a_task_still_running_after_the_delay_is_acknowledged_then_completed(
    node, sdk_agents, make_client, monkeypatch
):
    release = asyncio.Event()

    async def slow(task: TaskContext) -> dict[str, Any]:
        await release.wait()
        return {"slow": True}

    reports = applied_reports(node, monkeypatch)
    await sdk_agents.start(addr(node), slow, acknowledge_after_s=0.2)
    client = make_client(addr(node))
    task = await client.submit("slow", {})

    async def running() -> bool:
        return (await client.get(task.task_id)).state == TaskState.RUNNING

    await eventually(running, what="the task acknowledged while its handler runs")
    release.set()
    assert await client.wait(task.task_id, timeout_s=10) == {"slow": True}
    done = await client.get(task.task_id)
    assert [t.state for t in done.transitions][-3:] == [
        TaskState.ASSIGNED,
        TaskState.RUNNING,
        TaskState.COMPLETED,
    ]
    assert reports == [(task.task_id, "ack"), (task.task_id, "complete")]


async def test_acknowledge_after_zero_acknowledges_before_the_handler_runs(
    node, sdk_agents, make_client, monkeypatch
):
    states_seen: list[TaskState] = []
    client = make_client(addr(node))

    async def look(task: TaskContext) -> dict[str, Any]:
        states_seen.append((await client.get(task.task_id)).state)
        return {}

    reports = applied_reports(node, monkeypatch)
    await sdk_agents.start(addr(node), look, acknowledge_after_s=0)
    task = await client.submit("look", {})

    assert await client.wait(task.task_id, timeout_s=10) == {}
    assert states_seen == [TaskState.RUNNING]
    assert reports == [(task.task_id, "ack"), (task.task_id, "complete")]


async def test_a_short_lease_brings_the_acknowledgement_forward_and_is_kept(
    node, sdk_agents, make_client, monkeypatch
):
    async def slow(task: TaskContext) -> dict[str, Any]:
        await asyncio.sleep(3)  # three leases long
        return {"slow": True}

    reports = applied_reports(node, monkeypatch)
    # Waiting the 10 s asked for would lose the 1 s lease: a quarter of it is waited instead.
    await sdk_agents.start(addr(node), slow, acknowledge_after_s=10)
    client = make_client(addr(node))
    task = await client.submit("slow", {}, start_to_close_s=1, retry_policy=FAST_RETRY)

    assert await client.wait(task.task_id, timeout_s=15) == {"slow": True}
    done = await client.get(task.task_id)
    # Without the acknowledgement and extensions the reaper (every 0.1 s here) gives the
    # attempt up after 1 s.
    assert done.attempt == 1
    assert [t.reason for t in done.transitions if "lease" in t.reason] == []
    actions = [action for _, action in reports]
    assert actions[0] == "ack" and actions[-1] == "complete"
    assert actions.count("extend") >= 4, actions  # every half second for 3 s


@pytest.mark.parametrize("acknowledge_after_s", [0.0, 0.1])
async def test_a_refused_acknowledgement_drops_the_attempt_unreported(
    node, pool, monkeypatch, acknowledge_after_s
):
    holder = await pool.start(node.channel, "agent-1")
    await node.tasks.SubmitTask(submit_request())
    current = assignment_from_proto(await holder.next_assignment())
    # The same attempt as an agent whose token is no longer current sees it.
    stale = dataclasses.replace(current, fencing_token="1:0123456789abcdef")
    context = TaskContext(
        task_id=stale.task_id,
        attempt=stale.attempt,
        task_type=stale.task_type,
        data=stale.data,
        priority=stale.priority,
        agent_id="agent-1",
        start_to_close_s=stale.start_to_close_s,
    )
    started = asyncio.Event()

    async def forever(task: TaskContext) -> dict[str, Any]:
        started.set()
        await asyncio.Event().wait()  # until cancelled
        return {}

    reports = applied_reports(node, monkeypatch)
    endpoints = Endpoints(addr(node))
    reporter = Reporter(endpoints, "agent-1")
    runner = AttemptRunner(
        stale,
        context,
        forever,
        reporter,
        asyncio.Semaphore(1),
        acknowledge_after_s=acknowledge_after_s,
    )
    try:
        await asyncio.wait_for(runner.run(), 10)
    finally:
        await reporter.close()
        await endpoints.close()

    # At once: the handler never runs. Later: it ran and was stopped.
    assert started.is_set() == context.cancelled == (acknowledge_after_s > 0)
    assert reports == [(stale.task_id, "ack")]  # refused; nothing else was sent
    task = await node.coordinator.tasks.get(stale.task_id)
    assert task.state == TaskState.ASSIGNED and task.fencing_token == current.fencing_token
