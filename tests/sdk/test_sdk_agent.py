"""The SDK agent against a real node: results, failures and retries, cancellation,
concurrency, lease extension."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from agent_harness import eventually
from coordinator.sdk import (
    Agent,
    PermanentError,
    RetryPolicy,
    TaskCancelled,
    TaskContext,
    TaskFailed,
    TaskState,
)

FAST_RETRY = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.1)


def addr(node: Any) -> str:
    return f"127.0.0.1:{node.port}"


async def test_async_handler_result_reaches_the_submitter(node, sdk_agents, make_client):
    seen: list[TaskContext] = []

    async def handler(task: TaskContext) -> dict[str, Any]:
        seen.append(task)
        return {"doubled": task.data["x"] * 2, "type": task.task_type}

    await sdk_agents.start(addr(node), handler)
    client = make_client(addr(node))
    task = await client.submit("double", {"x": 21})

    assert await client.wait(task.task_id, timeout_s=10) == {"doubled": 42, "type": "double"}
    assert [(t.task_id, t.attempt, t.data) for t in seen] == [(task.task_id, 1, {"x": 21})]
    done = await client.get(task.task_id)
    assert done.state == TaskState.COMPLETED and done.agent_id == "sdk-agent"


async def test_thread_handler_runs_off_the_event_loop(node, sdk_agents, make_client):
    threads: list[str] = []

    def handler(task: TaskContext) -> dict[str, Any]:
        threads.append(threading.current_thread().name)
        return {"echo": task.data}

    await sdk_agents.start(addr(node), handler)
    client = make_client(addr(node))
    task = await client.submit("echo", {"text": "hi", "n": [1, 2.5]})

    assert await client.wait(task.task_id, timeout_s=10) == {"echo": {"text": "hi", "n": [1, 2.5]}}
    assert threads and threads[0] != threading.main_thread().name


async def test_an_exception_fails_the_attempt_and_the_retry_succeeds(node, sdk_agents, make_client):
    async def flaky(task: TaskContext) -> dict[str, Any]:
        if task.attempt == 1:
            raise ConnectionError("upstream model timed out")
        return {"attempt": task.attempt}

    await sdk_agents.start(addr(node), flaky)
    client = make_client(addr(node))
    task = await client.submit("flaky", {}, retry_policy=FAST_RETRY)

    assert await client.wait(task.task_id, timeout_s=10) == {"attempt": 2}
    done = await client.get(task.task_id)
    first = done.attempts[0]
    # PENDING: the attempt was given up and the task queued again.
    assert (first.outcome, done.attempts[1].outcome) == (TaskState.PENDING, TaskState.COMPLETED)
    assert first.error is not None
    assert (first.error.type, first.error.message, first.error.retryable) == (
        "ConnectionError",
        "upstream model timed out",
        True,
    )


async def test_permanent_error_fails_the_task_without_retry(node, sdk_agents, make_client):
    attempts: list[int] = []

    async def refuse(task: TaskContext) -> dict[str, Any]:
        attempts.append(task.attempt)
        raise PermanentError("input is not a PDF", error_type="BadInput", details={"page": 0})

    await sdk_agents.start(addr(node), refuse)
    client = make_client(addr(node))
    task = await client.submit("parse", {}, max_attempts=3, retry_policy=FAST_RETRY)

    with pytest.raises(TaskFailed) as failed:
        await client.wait(task.task_id, timeout_s=10)
    assert failed.value.task.state == TaskState.FAILED
    assert failed.value.error is not None
    assert (failed.value.error.type, failed.value.error.retryable) == ("BadInput", False)
    assert failed.value.error.details == {"page": 0}
    assert attempts == [1] and failed.value.task.attempt == 1


async def test_cancel_cancels_an_async_handler(node, sdk_agents, make_client):
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def endless(task: TaskContext) -> dict[str, Any]:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    agent = await sdk_agents.start(addr(node), endless)
    client = make_client(addr(node))
    task = await client.submit("endless", {})
    await asyncio.wait_for(started.wait(), 10)

    await client.cancel(task.task_id, "user changed their mind")

    await asyncio.wait_for(cancelled.wait(), 10)
    with pytest.raises(TaskCancelled):
        await client.wait(task.task_id, timeout_s=5)
    await eventually(lambda: _true(agent.running_tasks == 0), what="the runner to end")


async def test_cancel_sets_the_flag_a_thread_handler_reads(node, sdk_agents, make_client):
    started = threading.Event()
    outcome: list[tuple[bool, str]] = []

    def careful(task: TaskContext) -> dict[str, Any]:
        started.set()
        saw_cancel = task.wait_cancelled(timeout_s=10)
        outcome.append((saw_cancel, task.cancel_reason))
        return {"finished": True}

    agent = await sdk_agents.start(addr(node), careful)
    client = make_client(addr(node))
    task = await client.submit("careful", {})
    await asyncio.to_thread(started.wait, 10)

    await client.cancel(task.task_id, "not needed any more")

    await eventually(lambda: _true(agent.running_tasks == 0), what="the thread to return")
    assert outcome == [(True, "not needed any more")]
    assert (await client.get(task.task_id)).state == TaskState.CANCELLED


async def test_max_concurrency_bounds_the_tasks_run_at_once(node, sdk_agents, make_client):
    running = 0
    peak = 0
    release = asyncio.Event()

    async def gated(task: TaskContext) -> dict[str, Any]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await release.wait()
        finally:
            running -= 1
        return {"n": task.data["n"]}

    await sdk_agents.start(addr(node), gated, max_concurrency=2)
    client = make_client(addr(node))
    tasks = [await client.submit("gated", {"n": n}) for n in range(5)]

    await eventually(lambda: _true(running == 2), what="two tasks running")
    states = [(await client.get(t.task_id)).state for t in tasks]
    held = states.count(TaskState.ASSIGNED) + states.count(TaskState.RUNNING)
    assert held == 2 and states.count(TaskState.PENDING) == 3
    release.set()

    results = await asyncio.gather(*(client.wait(t.task_id, timeout_s=10) for t in tasks))
    assert results == [{"n": n} for n in range(5)]
    assert peak == 2


async def test_the_lease_is_extended_past_start_to_close_timeout(node, sdk_agents, make_client):
    async def slow(task: TaskContext) -> dict[str, Any]:
        await asyncio.sleep(3)  # the work: three leases long
        return {"slow": True}

    await sdk_agents.start(addr(node), slow)
    client = make_client(addr(node))
    task = await client.submit("slow", {}, start_to_close_s=1, retry_policy=FAST_RETRY)

    assert await client.wait(task.task_id, timeout_s=15) == {"slow": True}
    done = await client.get(task.task_id)
    # Without extensions the reaper (every 0.1 s here) gives the attempt up after 1 s.
    assert done.attempt == 1
    assert [t.reason for t in done.transitions if "lease" in t.reason] == []


async def test_a_returned_non_dict_fails_the_task_for_good(node, sdk_agents, make_client):
    async def wrong(task: TaskContext) -> Any:
        return ["not", "a", "dict"]

    await sdk_agents.start(addr(node), wrong)
    client = make_client(addr(node))
    task = await client.submit("wrong", {})

    with pytest.raises(TaskFailed, match="returned list, not a dict"):
        await client.wait(task.task_id, timeout_s=10)


async def _true(value: bool) -> bool:
    return value


async def test_bad_registration_is_raised_by_run(node):
    agent = Agent("-bad id-", lambda task: {}, addresses=addr(node), handle_signals=False)
    with pytest.raises(Exception, match="INVALID_ARGUMENT: agent_id"):
        await asyncio.wait_for(agent.run(), 10)
