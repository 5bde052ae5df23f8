"""Quotas per principal (issue 15, item 5): a submit rate and a most of unfinished tasks,
counted in Redis so that every node enforces one budget.

The authentication interceptor is built in parallel; until it merges, these tests set the
principal the way it will, ``principal.calling_as`` around the store's and the handlers'
calls, on real in-process nodes sharing the session's real Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import grpc
import pytest
from auth_support import bearer
from google.rpc import code_pb2, error_details_pb2, status_pb2

from agent_harness import eventually
from aitbc.coordinator.v1 import task_pb2
from coordinator.api.error_mapping import to_status
from coordinator.api.task_service import TaskService
from coordinator.auth import quotas
from coordinator.auth.principal import Principal, Role, calling_as
from coordinator.auth.quotas import SubmitQuota
from coordinator.config import ConfigError, load_settings
from coordinator.errors import ResourceExhausted
from coordinator.storage import keys
from coordinator.tasks.calls import Submitted
from coordinator.tasks.models import Priority, TaskState, TaskSubmission
from coordinator.tasks.store import TaskStore


@contextmanager
def as_client(name: str) -> Iterator[None]:
    """The calls inside are made by the client ``name`` (what the interceptor will do)."""
    with calling_as(Principal(name, frozenset({Role.CLIENT}), source="token")):
        yield


def submission(n: int = 0, **options: object) -> TaskSubmission:
    return TaskSubmission(task_type="quota-test", task_data={"n": n}, **options)  # type: ignore[arg-type]


async def stores(start_node: Callable[..., Awaitable[object]], count: int, **settings: object):
    """The task stores of ``count`` nodes sharing one Redis, with the quota ``settings``."""
    nodes = [await start_node(**settings) for _ in range(count)]
    return nodes, [n.coordinator.tasks for n in nodes]  # type: ignore[attr-defined]


async def refused(call: Awaitable[object]) -> ResourceExhausted:
    with pytest.raises(ResourceExhausted) as caught:
        await call
    return caught.value


def retry_delay_s(exc: Exception) -> float:
    """The google.rpc.RetryInfo delay of the status ``exc`` is answered with."""
    status = to_status(exc)
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToNanoseconds() / 1e9
    raise AssertionError("no RetryInfo in the status")


# --- the submit rate -------------------------------------------------------------------------


async def test_the_submit_rate_is_one_budget_on_every_node_and_per_principal(start_node):
    _, (a, b) = await stores(start_node, 2, quota_submit_rate=1.0, quota_submit_burst=4.0)

    with as_client("alice"):
        for i in range(4):  # the burst, spread over both nodes
            _, created = await (a if i % 2 else b).submit(submission(i))
            assert created
        over_a = await refused(a.submit(submission(4)))
        over_b = await refused(b.submit(submission(5)))
    for over in (over_a, over_b):
        assert "COORDINATOR_QUOTA_SUBMIT_RATE" in str(over) and "'alice'" in str(over)
        # At 1 task/s with the bucket just emptied, the next token is about 1 s away.
        assert 0.5 < over.retry_after_s <= 1.0
        assert retry_delay_s(over) == pytest.approx(over.retry_after_s)

    with as_client("bob"):  # another principal has its own budget
        for i in range(4):
            assert (await a.submit(submission(i)))[1]

    await asyncio.sleep(over_b.retry_after_s + 0.05)
    with as_client("alice"):  # told when, and it is so
        assert (await b.submit(submission(6)))[1]
        await refused(a.submit(submission(7)))


async def test_a_batch_takes_what_the_budget_allows_and_refuses_each_other_entry(start_node):
    nodes, (store,) = await stores(start_node, 1, quota_submit_rate=0.5, quota_submit_burst=3.0)
    with as_client("alice"):
        outcomes = await store.submit_many([submission(i) for i in range(5)])
    assert [type(o) for o in outcomes] == [Submitted] * 3 + [ResourceExhausted] * 2
    assert all(1.0 < o.retry_after_s <= 2.0 for o in outcomes[3:])  # type: ignore[union-attr]

    # Through the handler, each refused entry is its own RESOURCE_EXHAUSTED.
    service = TaskService(store, nodes[0].coordinator.events, nodes[0].coordinator.settings)
    request = task_pb2.SubmitTasksRequest(
        tasks=[task_pb2.SubmitTaskRequest(task_type="quota-test") for _ in range(2)]
    )
    with as_client("bob"):
        response = await service.SubmitTasks(request, None)  # type: ignore[arg-type]
        assert [r.error.code for r in response.results] == [code_pb2.OK, code_pb2.OK]
        response = await service.SubmitTasks(request, None)  # type: ignore[arg-type]
    assert response.results[0].task_id and response.results[0].error.code == code_pb2.OK
    refusal = response.results[1].error
    assert refusal.code == code_pb2.RESOURCE_EXHAUSTED
    assert "COORDINATOR_QUOTA_SUBMIT_RATE" in refusal.message and "retry after" in refusal.message


async def test_without_a_principal_there_is_no_quota_and_no_submitter(start_node, redis_client):
    _, (store,) = await stores(
        start_node, 1, quota_submit_rate=0.1, quota_submit_burst=1.0, quota_max_unfinished=1
    )
    for i in range(5):
        task, created = await store.submit(submission(i))
        assert created and task.submitted_by == ""
    assert await redis_client.keys("quota:*") == []


# --- unfinished tasks ------------------------------------------------------------------------


async def test_two_nodes_at_once_admit_no_more_unfinished_tasks_than_the_most(start_node):
    _, (a, b) = await stores(start_node, 2, quota_max_unfinished=5)
    with as_client("alice"):
        outcomes = await asyncio.gather(
            *(s.submit(submission(i)) for i in range(12) for s in (a, b)), return_exceptions=True
        )
    admitted = [o for o in outcomes if isinstance(o, tuple)]
    over = [o for o in outcomes if isinstance(o, ResourceExhausted)]
    assert len(admitted) == 5 and len(over) == 19
    assert "COORDINATOR_QUOTA_MAX_UNFINISHED=5" in str(over[0])
    assert retry_delay_s(over[0]) == quotas.UNFINISHED_RETRY_AFTER_S
    assert await quotas.unfinished(a._redis, "alice") == 5


async def test_a_resubmission_takes_no_quota_and_keeps_its_submitter(start_node, redis_client):
    _, (store,) = await stores(start_node, 1, quota_max_unfinished=1)
    with as_client("alice"):
        first, created = await store.submit(submission(request_id="req-1"))
        assert created and first.submitted_by == "alice"
        again, created = await store.submit(submission(request_id="req-1"))
        assert not created and again.task_id == first.task_id
        assert again.submitted_by == "alice"
        await refused(store.submit(submission(request_id="req-2")))
    assert await quotas.unfinished(redis_client, "alice") == 1
    # Another principal's request_id is its own: it neither finds nor blocks alice's task.
    with as_client("bob"):
        bobs, created = await store.submit(submission(request_id="req-1"))
    assert created and bobs.task_id != first.task_id and bobs.submitted_by == "bob"
    assert await redis_client.get(keys.task_request("req-1", "alice")) == first.task_id
    assert await redis_client.get(keys.task_request("req-1", "bob")) == bobs.task_id


async def test_every_way_a_task_ends_gives_its_place_back_once(start_node, pool, redis_client):
    nodes, (store, other) = await stores(start_node, 2, quota_max_unfinished=6)
    agent = await pool.start(nodes[0].channel, "agent-q", max_concurrency=4)

    async def count() -> int:
        return await quotas.unfinished(redis_client, "alice")

    with as_client("alice"):
        completed = (await store.submit(submission(1)))[0]
        failed = (await other.submit(submission(2, max_attempts=1)))[0]
        retried = (await store.submit(submission(3, max_attempts=2)))[0]
    assert await count() == 3
    held = {a.task_id: a for a in [await agent.next_assignment() for _ in range(3)]}
    await agent.complete(held[completed.task_id], ok=True)
    assert await count() == 2
    await agent.fail(held[failed.task_id], "for good", retryable=True)  # no attempts left
    assert await count() == 1
    await agent.fail(held[retried.task_id], "again", retryable=True)  # back in line: unfinished
    assert await count() == 1
    retry = await agent.next_assignment()
    await agent.fail(retry, "for good", retryable=False)
    assert await count() == 0
    assert not await redis_client.hexists(keys.QUOTA_UNFINISHED, "alice")
    await agent.stop()  # the rest wait in line

    async def stream_closed() -> bool:
        return not await redis_client.hexists(keys.AGENTS_CONNECTED, "agent-q")

    await eventually(stream_closed, what="the agent's stream to close")

    with as_client("alice"):
        cancelled = (await store.submit(submission(4)))[0]
        purged = (await other.submit(submission(5, priority=Priority.LOW)))[0]
        expiring = (await store.submit(submission(6, schedule_to_start_s=1.0)))[0]
        staying = (await store.submit(submission(7)))[0]
    assert await count() == 4
    with as_client("alice"):
        await store.cancel(cancelled.task_id, "no longer needed")
    assert await count() == 3
    assert await other.purge(Priority.LOW, "") == 1
    assert await count() == 2
    await eventually(
        lambda: _in_state(store, expiring.task_id, TaskState.EXPIRED), what="its expiry"
    )
    assert await count() == 1
    # Nothing ends twice: a cancel of a finished task changes nothing, forgetting finished
    # tasks gives nothing back, and the task still unfinished is still counted.
    with as_client("alice"), pytest.raises(Exception, match="already CANCELLED"):
        await store.cancel(cancelled.task_id, "")
    await store._scripts.forget_finished_tasks(args=[int(time.time() * 1000) + 60_000, 100, 0])
    assert await count() == 1
    assert (await store.get(staying.task_id)).state is TaskState.PENDING
    for task in (completed, failed, retried, purged):
        with pytest.raises(Exception, match="no task"):
            await store.get(task.task_id)


async def _in_state(store: TaskStore, task_id: str, state: TaskState) -> bool:
    return (await store.get(task_id)).state is state


async def test_a_refused_submit_with_an_agent_ready_leaves_its_slot_free(start_node, pool):
    """The node's dispatcher chooses an agent for a task (assignment at submit) before the
    script that would create it refuses it over quota: the refusal is the quota's, and the
    agent's slot is free for the next task, which it gets at once."""
    nodes, (store,) = await stores(start_node, 1, quota_max_unfinished=1)
    agent = await pool.start(nodes[0].channel, "agent-r", max_concurrency=2)
    with as_client("alice"):
        first, _ = await store.submit(submission(1))
        assert (await agent.next_assignment()).task_id == first.task_id  # the view is fresh
        for i in range(3):
            await refused(store.submit(submission(2 + i)))
    with as_client("bob"):
        bobs, _ = await store.submit(submission(9))
    assert (await agent.next_assignment(timeout_s=5)).task_id == bobs.task_id


# --- settings --------------------------------------------------------------------------------


def test_quota_settings_default_to_none_and_bad_values_name_their_variable():
    settings = load_settings({})
    assert SubmitQuota.of(settings) == SubmitQuota(rate_per_s=0.0, burst=1.0, max_unfinished=0)
    rate_only = load_settings({"COORDINATOR_QUOTA_SUBMIT_RATE": "2.5"})
    assert rate_only.quota_submit_burst_effective == 5.0  # twice the rate by default
    assert load_settings({"COORDINATOR_QUOTA_SUBMIT_RATE": "0.1"}).quota_submit_burst_effective == 1
    both = load_settings(
        {"COORDINATOR_QUOTA_SUBMIT_RATE": "10", "COORDINATOR_QUOTA_SUBMIT_BURST": "3"}
    )
    assert SubmitQuota.of(both) == SubmitQuota(rate_per_s=10.0, burst=3.0)
    for name, value in (
        ("COORDINATOR_QUOTA_SUBMIT_RATE", "-1"),
        ("COORDINATOR_QUOTA_SUBMIT_RATE", "nan"),
        ("COORDINATOR_QUOTA_SUBMIT_RATE", "fast"),
        ("COORDINATOR_QUOTA_SUBMIT_BURST", "0.5"),
        ("COORDINATOR_QUOTA_MAX_UNFINISHED", "-3"),
        ("COORDINATOR_QUOTA_MAX_UNFINISHED", "1.5"),
    ):
        with pytest.raises(ConfigError, match=f"^{name}: "):
            load_settings({"COORDINATOR_QUOTA_SUBMIT_RATE": "1", name: value})
    with pytest.raises(ConfigError, match=r"^COORDINATOR_QUOTA_SUBMIT_BURST: needs"):
        load_settings({"COORDINATOR_QUOTA_SUBMIT_BURST": "5"})


# --- over gRPC, on two nodes -----------------------------------------------------------------


async def test_over_grpc_a_client_over_its_rate_gets_retry_info_on_every_node(
    start_auth_node, keys
):
    nodes = [
        await start_auth_node(
            node_id=f"quota-node-{i}", quota_submit_rate=1.0, quota_submit_burst=2.0
        )
        for i in range(2)
    ]
    alice = bearer(keys.mint("alice", ["client"]))
    bob = bearer(keys.mint("bob", ["client"]))
    request = task_pb2.SubmitTaskRequest(task_type="quota-test")
    for node in nodes:  # the burst of 2, one on each node
        reply = await node.tasks.SubmitTask(request, metadata=alice)
        assert reply.task.submitted_by == "alice"
    for node in nodes:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await node.tasks.SubmitTask(request, metadata=alice)
        error = caught.value
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "COORDINATOR_QUOTA_SUBMIT_RATE" in (error.details() or "")
        assert 0.5 < retry_delay_from_trailers(error) <= 1.0
    for node in nodes:  # another client is unaffected
        assert (await node.tasks.SubmitTask(request, metadata=bob)).created


def retry_delay_from_trailers(error: grpc.aio.AioRpcError) -> float:
    """The google.rpc.RetryInfo delay in a status's grpc-status-details-bin trailer."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw, "no rich status details"
    status = status_pb2.Status.FromString(raw)
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToNanoseconds() / 1e9
    raise AssertionError("no RetryInfo in the status")
