"""Each task script on its own, against a real Redis: what it changes, and that a refusal
changes nothing (a dump of every key before and after is compared).

The scripts take arguments only; their keys come from the table ``K`` that
``coordinator.storage.scripts`` prepends (``keys.TASK_SCRIPT_KEYS``). Agents are made through the
real registry; their stream and their node's presence are written with ``coordinator.storage.keys``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from importlib import resources

import pytest

from coordinator.agents.records import AgentStatus
from coordinator.auth.quotas import SubmitQuota
from coordinator.storage import keys
from coordinator.storage.scripts import TASK_SCRIPT_NAMES
from coordinator.tasks.models import Priority
from script_support import (
    LEASE_MS,
    LIVENESS_MS,
    NODE,
    START_MS,
    active_tasks,
    assign,
    assigned,
    dump,
    failure,
    make_agent,
    new_task,
    queued_keys,
    report,
    submit,
    submit_reply,
    subscribe,
    task_record,
)


def test_every_task_script_documents_its_args_and_reply():
    for name in TASK_SCRIPT_NAMES:
        text = resources.files("coordinator.storage").joinpath("lua", f"{name}.lua").read_text()
        assert "ARGV[1]" in text and "Returns" in text, name
        assert "KEYS[" not in text, f"{name}: task scripts take their keys from K"


# --- submit_task -----------------------------------------------------------------------------


async def test_submit_creates_the_task_and_puts_it_in_line(scripts, redis_client):
    created, task_id = await submit(
        scripts, priority="HIGH", requirements_class="gpu", request_id="req-1"
    )
    assert created == 1
    record = await task_record(redis_client, task_id)
    assert record["state"] == "PENDING"
    assert record["priority"] == "HIGH" and record["class"] == "gpu"
    assert record["request_id"] == "req-1"
    assert record["attempt"] == "0" and record["agent_id"] == "" and record["fencing_token"] == ""
    assert record["seq"] == "1"
    assert record["task_type"] == "test" and record["max_attempts"] == "3"  # caller's fields
    assert json.loads(record["attempts"]) == []
    (transition,) = json.loads(record["transitions"])
    assert transition["state"] == "PENDING" and transition["reason"] == "submitted"
    now_ms = int(record["created_at_ms"])
    assert int(record["queued_at_ms"]) == now_ms

    for queue in queued_keys("HIGH", "gpu"):
        assert await redis_client.zscore(queue, task_id) == 1  # place in line: seq
    assert await redis_client.smembers(keys.task_classes("HIGH")) == {"gpu"}
    assert await redis_client.zscore(keys.TASK_START_DEADLINES, task_id) == now_ms + START_MS
    assert await redis_client.zscore(keys.TASK_ALL, task_id) is not None
    assert await redis_client.zscore(keys.tasks_in_state("PENDING"), task_id) is not None
    assert await redis_client.hget(keys.TASK_STATS, "tasks_submitted") == "1"
    assert await redis_client.get(keys.task_request("req-1")) == task_id
    assert 0 < await redis_client.pttl(keys.task_request("req-1")) <= 60_000

    second = await new_task(scripts, priority="HIGH", requirements_class="gpu")
    assert await redis_client.hget(keys.task(second), "seq") == "2"
    # The reply carries what the caller needs to answer without reading the task back.
    third = uuid.uuid4().hex
    reply = await scripts.submit_task(args=[third, "", 1000, "LOW", "c", 1000])
    assert reply == [1, third, int((await task_record(redis_client, third))["created_at_ms"]), 3]


async def test_a_repeated_request_id_returns_the_first_task_and_changes_nothing(
    scripts, redis_client
):
    _, first = await submit(scripts, request_id="req-1")
    before = await dump(redis_client)
    assert await submit(scripts, request_id="req-1") == (0, first)
    assert await dump(redis_client) == before

    # Another request_id, or none, creates a new task.
    created, other = await submit(scripts, request_id="req-2")
    assert created == 1 and other != first
    assert (await submit(scripts))[0] == 1


async def test_a_request_id_whose_task_is_gone_creates_a_new_task(scripts, redis_client):
    _, first = await submit(scripts, request_id="req-1")
    await redis_client.delete(keys.task(first))  # as after the task's retention
    created, second = await submit(scripts, request_id="req-1")
    assert created == 1 and second != first
    assert await redis_client.get(keys.task_request("req-1")) == second


# --- assign_task -----------------------------------------------------------------------------


async def refused_unknown_task(scripts, registry, redis):
    await make_agent(registry, redis, "a")
    return "0" * 32, "a"


async def refused_task_taken(scripts, registry, redis):
    task_id = await new_task(scripts)
    await make_agent(registry, redis, "b")
    assert (await assign(scripts, task_id, "b"))[:2] == ["ok", 1]
    await make_agent(registry, redis, "a")
    return task_id, "a"


async def refused_task_waiting_for_retry(scripts, registry, redis):
    task_id = await new_task(scripts)
    await make_agent(registry, redis, "a")
    assert (await assign(scripts, task_id, "a"))[:2] == ["ok", 1]
    token = await redis.hget(keys.task(task_id), "fencing_token")
    assert (await report(scripts, task_id, "a", token, "fail", failure()))[1] == "PENDING"
    return task_id, "a"  # PENDING, but in tasks:scheduled rather than in its queue


async def refused_unregistered(scripts, registry, redis):
    return await new_task(scripts), "ghost"


async def refused_maintenance(scripts, registry, redis):
    await make_agent(registry, redis, "a")
    await registry.update_status("a", AgentStatus.MAINTENANCE, {}, "kernel upgrade")
    return await new_task(scripts), "a"


async def refused_busy(scripts, registry, redis):
    await make_agent(registry, redis, "a")
    await registry.heartbeat("a", {}, AgentStatus.BUSY)
    return await new_task(scripts), "a"


async def refused_stale_heartbeat(scripts, registry, redis):
    await make_agent(registry, redis, "a")
    seconds, micros = await redis.time()
    now_ms = seconds * 1000 + micros // 1000
    await redis.zadd(keys.AGENTS_HEARTBEATS, {"a": now_ms - LIVENESS_MS - 1000})
    return await new_task(scripts), "a"


async def refused_no_stream(scripts, registry, redis):
    await make_agent(registry, redis, "a", streaming=False)
    await redis.set(keys.node_presence(NODE), "1")
    return await new_task(scripts), "a"


async def refused_node_gone(scripts, registry, redis):
    await make_agent(registry, redis, "a")
    await redis.delete(keys.node_presence(NODE))
    return await new_task(scripts), "a"


async def refused_full(scripts, registry, redis):
    first = await new_task(scripts)
    await make_agent(registry, redis, "a", max_concurrency=1)
    assert (await assign(scripts, first, "a"))[:2] == ["ok", 1]
    return await new_task(scripts), "a"


@pytest.mark.parametrize(
    ("setup", "verdict", "detail"),
    [
        (refused_unknown_task, "task_gone", "missing"),
        (refused_task_taken, "task_gone", "ASSIGNED"),
        (refused_task_waiting_for_retry, "task_gone", "PENDING"),
        (refused_unregistered, "agent_gone", "not registered"),
        (refused_maintenance, "agent_unavailable", "MAINTENANCE"),
        (refused_busy, "agent_unavailable", "BUSY"),
        (refused_stale_heartbeat, "agent_unavailable", "heartbeat expired"),
        (refused_no_stream, "agent_unavailable", "no open stream"),
        (refused_node_gone, "agent_unavailable", f"its node {NODE} is gone"),
        (refused_full, "agent_full", "1"),
    ],
    ids=lambda v: v.__name__ if callable(v) else None,
)
async def test_assign_refusals_change_nothing(
    scripts, registry, redis_client, setup, verdict, detail
):
    task_id, agent_id = await setup(scripts, registry, redis_client)
    before = await dump(redis_client)
    assert await assign(scripts, task_id, agent_id) == [verdict, detail]
    assert await dump(redis_client) == before


async def test_assign_moves_everything_together(scripts, registry, redis_client):
    task_id = await new_task(scripts)
    other = await new_task(scripts)  # same queue and class: they stay
    await make_agent(registry, redis_client, "a", max_concurrency=2)
    pubsub = redis_client.pubsub()
    await subscribe(pubsub, keys.node_channel(NODE))
    await pubsub.get_message(timeout=1)  # the subscription confirmation

    reply = await assign(scripts, task_id, "a", nonce="n1")

    record = await task_record(redis_client, task_id)
    assert record["state"] == "ASSIGNED"
    assert record["attempt"] == "1" and record["agent_id"] == "a"
    assert record["fencing_token"] == "1:n1"
    assigned_at = int(record["assigned_at_ms"])
    # A first attempt's reply carries its submit-to-assignment latency (for the metrics).
    assert reply == ["ok", 1, assigned_at - int(record["created_at_ms"])]
    assert int(record["lease_expires_at_ms"]) == assigned_at + LEASE_MS
    (attempt,) = json.loads(record["attempts"])
    assert {
        k: attempt.get(k) for k in ("attempt", "agent_id", "node_id", "assigned_at_ms", "token")
    } == {
        "attempt": 1,
        "agent_id": "a",
        "node_id": NODE,
        "assigned_at_ms": assigned_at,
        "token": "1:n1",
    }
    assert [t["state"] for t in json.loads(record["transitions"])] == ["PENDING", "ASSIGNED"]

    for queue in queued_keys():
        assert await redis_client.zrange(queue, 0, -1) == [other]
    assert await redis_client.smembers(keys.task_classes("NORMAL")) == {"c0"}
    assert await redis_client.zscore(keys.TASK_START_DEADLINES, task_id) is None
    assert await redis_client.zscore(keys.TASK_LEASES, task_id) == assigned_at + LEASE_MS
    assert await redis_client.smembers(keys.agent_tasks("a")) == {task_id}
    assert await redis_client.smembers(keys.AGENTS_HOLDING) == {"a"}
    assert await active_tasks(redis_client, "a") == 1
    assert await redis_client.zscore(keys.tasks_by_agent("a"), task_id) is not None
    assert await redis_client.zscore(keys.tasks_in_state("PENDING"), task_id) is None
    assert await redis_client.zscore(keys.tasks_in_state("ASSIGNED"), task_id) is not None
    stats = await redis_client.hgetall(keys.TASK_STATS)
    assert stats["tasks_distributed"] == "1" and stats["submit_to_assignment_count"] == "1"
    latency_ms = assigned_at - int(record["created_at_ms"])
    assert stats["submit_to_assignment_ms_total"] == str(latency_ms)
    assert await redis_client.lrange(keys.TASK_ASSIGN_LATENCIES, 0, -1) == [str(latency_ms)]
    assert await redis_client.hgetall(keys.TASK_ASSIGNMENTS_PER_AGENT) == {"a": "1"}

    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    # The whole assignment rides on the message (task_data as its stored JSON text).
    assert json.loads(message["data"]) == {
        "kind": "assign",
        "agent_id": "a",
        "task_id": task_id,
        "attempt": 1,
        "fencing_token": "1:n1",
        "task_type": record["task_type"],
        "task_data": record["task_data"],
        "priority": "NORMAL",
        "assigned_at_ms": assigned_at,
        "lease_expires_at_ms": assigned_at + LEASE_MS,
        "start_to_close_ms": LEASE_MS,
    }
    await pubsub.aclose()

    # The last task of its class leaves: the class set empties too.
    assert (await assign(scripts, other, "a"))[:2] == ["ok", 1]
    for queue in queued_keys():
        assert not await redis_client.exists(queue)
    assert not await redis_client.exists(keys.task_classes("NORMAL"))
    assert await active_tasks(redis_client, "a") == 2


async def test_a_retry_on_another_agent_moves_the_task_between_agents(
    scripts, registry, redis_client
):
    task_id, token = await assigned(scripts, registry, redis_client, "a")
    await report(scripts, task_id, "a", token, "fail", failure())
    await redis_client.zadd(keys.TASK_SCHEDULED, {task_id: 0})  # the backoff has passed
    assert await scripts.promote_due_tasks(args=[10]) == 1
    await make_agent(registry, redis_client, "b")
    assert await assign(scripts, task_id, "b", nonce="n2") == ["ok", 2]
    assert await redis_client.hget(keys.task(task_id), "fencing_token") == "2:n2"
    assert await redis_client.zscore(keys.tasks_by_agent("a"), task_id) is None
    assert await redis_client.zscore(keys.tasks_by_agent("b"), task_id) is not None
    # Only the first attempt counts for submit-to-assignment latency.
    assert await redis_client.hget(keys.TASK_STATS, "submit_to_assignment_count") == "1"
    assert await redis_client.llen(keys.TASK_ASSIGN_LATENCIES) == 1
    assert await redis_client.hget(keys.TASK_STATS, "tasks_distributed") == "2"

    # The first attempt's agent repeats its failure report (its answer was lost): answered
    # as a repeat, though that attempt is no longer current; anything else from it is stale.
    before = await dump(redis_client)
    assert await report(scripts, task_id, "a", token, "fail", failure()) == [
        "repeat",
        "ASSIGNED",
        "",
    ]
    assert await report(scripts, task_id, "a", token, "complete", "{}") == [
        "stale",
        "ASSIGNED",
        "2",
    ]
    assert await dump(redis_client) == before


# --- report_task -----------------------------------------------------------------------------


async def test_reports_with_a_stale_token_or_another_agent_are_refused_and_change_nothing(
    scripts, registry, redis_client
):
    task_id, token = await assigned(scripts, registry, redis_client, "a")
    await make_agent(registry, redis_client, "b")
    before = await dump(redis_client)
    for agent_id, stale_token, action, payload in [
        ("a", "1:other", "ack", ""),
        ("a", "0:nonce", "complete", "{}"),
        ("b", token, "complete", "{}"),
        ("a", "", "fail", failure()),
        ("a", "1:other", "extend", "1000"),
    ]:
        reply = await report(scripts, task_id, agent_id, stale_token, action, payload)
        assert reply == ["stale", "ASSIGNED", "1"], (agent_id, stale_token, action)
    assert await dump(redis_client) == before
    assert await report(scripts, "0" * 32, "a", token, "ack") == ["not_found"]


async def test_acknowledge_and_extend_move_the_lease(scripts, registry, redis_client):
    task_id, token = await assigned(scripts, registry, redis_client, "a")
    verdict, state, lease_end = await report(scripts, task_id, "a", token, "ack")
    assert (verdict, state) == ("ok", "RUNNING")
    record = await task_record(redis_client, task_id)
    assert record["state"] == "RUNNING"
    assert int(record["lease_expires_at_ms"]) == lease_end
    assert await redis_client.zscore(keys.TASK_LEASES, task_id) == lease_end
    started = json.loads(record["attempts"])[-1]["started_at_ms"]
    assert lease_end == started + LEASE_MS

    before = await dump(redis_client)
    assert await report(scripts, task_id, "a", token, "ack") == [
        "repeat",
        "RUNNING",
        str(lease_end),
    ]
    assert await dump(redis_client) == before

    verdict, state, extended = await report(scripts, task_id, "a", token, "extend", "120000")
    assert (verdict, state) == ("ok", "RUNNING")
    assert extended >= lease_end + 90_000  # 120 s from now instead of 30 s from the ack
    assert await redis_client.zscore(keys.TASK_LEASES, task_id) == extended
    assert await redis_client.hget(keys.task(task_id), "lease_expires_at_ms") == str(extended)


async def test_a_repeated_complete_answers_repeat_and_changes_nothing(
    scripts, registry, redis_client
):
    task_id, token = await assigned(scripts, registry, redis_client, "a")
    await report(scripts, task_id, "a", token, "ack")
    assert await report(scripts, task_id, "a", token, "complete", '{"answer":42}') == [
        "ok",
        "COMPLETED",
        "",
    ]
    record = await task_record(redis_client, task_id)
    assert record["state"] == "COMPLETED" and record["result"] == '{"answer":42}'
    assert record["lease_expires_at_ms"] == ""
    attempt = json.loads(record["attempts"])[-1]
    assert attempt["outcome"] == "COMPLETED" and attempt["reported"] == "complete"
    assert await redis_client.zscore(keys.TASK_FINISHED, task_id) is not None
    assert await redis_client.zscore(keys.TASK_LEASES, task_id) is None
    assert await redis_client.hget(keys.TASK_STATS, "tasks_completed") == "1"
    assert not await redis_client.exists(keys.agent_tasks("a"), keys.AGENTS_HOLDING)

    before = await dump(redis_client)
    assert await report(scripts, task_id, "a", token, "complete", '{"answer":43}') == [
        "repeat",
        "COMPLETED",
        "",
    ]
    assert await dump(redis_client) == before
    # Another action on the finished attempt is not a repeat: it is refused.
    assert await report(scripts, task_id, "a", token, "fail", failure()) == [
        "not_held",
        "COMPLETED",
    ]
    assert await dump(redis_client) == before


async def test_active_tasks_go_back_down_exactly_once(scripts, registry, redis_client):
    await make_agent(registry, redis_client, "a", max_concurrency=2)
    kept, finished = await new_task(scripts), await new_task(scripts)
    assert (await assign(scripts, kept, "a"))[:2] == ["ok", 1]
    assert (await assign(scripts, finished, "a"))[:2] == ["ok", 1]
    assert await active_tasks(redis_client, "a") == 2
    token = await redis_client.hget(keys.task(finished), "fencing_token")

    await report(scripts, finished, "a", token, "complete", "{}")
    assert await active_tasks(redis_client, "a") == 1
    await report(scripts, finished, "a", token, "complete", "{}")
    assert await active_tasks(redis_client, "a") == 1
    assert await scripts.release_task(args=[finished, "", "", "agent_lost", "lost"]) == ""
    assert await scripts.cancel_task(args=[finished, "too late", ""]) == ["final", "COMPLETED"]
    assert await active_tasks(redis_client, "a") == 1
    assert await redis_client.smembers(keys.agent_tasks("a")) == {kept}
    assert await redis_client.smembers(keys.AGENTS_HOLDING) == {"a"}


async def test_a_retryable_failure_with_attempts_left_waits_for_its_backoff(
    scripts, registry, redis_client
):
    task_id, token = await assigned(scripts, registry, redis_client, "a", max_attempts=3)
    assert await report(scripts, task_id, "a", token, "fail", failure("oops")) == [
        "ok",
        "PENDING",
        "",
    ]
    record = await task_record(redis_client, task_id)
    assert record["state"] == "PENDING"
    assert json.loads(record["error"])["message"] == "oops"
    attempt = json.loads(record["attempts"])[-1]
    assert attempt["outcome"] == "PENDING" and attempt["reported"] == "fail"
    failed_at = json.loads(record["transitions"])[-1]["at_ms"]
    # First retry: the initial backoff (1 s).
    assert await redis_client.zscore(keys.TASK_SCHEDULED, task_id) == failed_at + 1000
    for queue in queued_keys():
        assert await redis_client.zscore(queue, task_id) is None  # not in line before it is due
    assert await active_tasks(redis_client, "a") == 0
    assert not await redis_client.exists(keys.agent_tasks("a"), keys.AGENTS_HOLDING)
    assert await redis_client.zscore(keys.TASK_LEASES, task_id) is None
    assert await redis_client.zscore(keys.TASK_DEAD_LETTER, task_id) is None
    assert await redis_client.hget(keys.agent("a"), "recent_success") == "0.800000"

    # Second attempt: 1 s x 3 = 3 s, capped at the maximum backoff (2.5 s).
    await redis_client.zadd(keys.TASK_SCHEDULED, {task_id: 0})
    await scripts.promote_due_tasks(args=[10])
    assert await assign(scripts, task_id, "a", nonce="n2") == ["ok", 2]
    await report(scripts, task_id, "a", "2:n2", "fail", failure())
    failed_at = json.loads(await redis_client.hget(keys.task(task_id), "transitions"))[-1]["at_ms"]
    assert await redis_client.zscore(keys.TASK_SCHEDULED, task_id) == failed_at + 2500


async def test_a_failure_on_the_last_attempt_is_dead_lettered(scripts, registry, redis_client):
    task_id, token = await assigned(scripts, registry, redis_client, "a", max_attempts=1)
    assert await report(scripts, task_id, "a", token, "fail", failure()) == ["ok", "FAILED", ""]
    record = await task_record(redis_client, task_id)
    assert record["state"] == "FAILED" and record["dead_lettered"] == "1"
    assert json.loads(record["attempts"])[-1]["outcome"] == "FAILED"
    assert await redis_client.zscore(keys.TASK_DEAD_LETTER, task_id) is not None
    assert await redis_client.zscore(keys.TASK_FINISHED, task_id) is not None
    assert await redis_client.zscore(keys.TASK_SCHEDULED, task_id) is None
    assert await redis_client.hget(keys.TASK_STATS, "tasks_failed") == "1"
    assert await active_tasks(redis_client, "a") == 0


async def test_a_failure_that_is_not_retryable_fails_at_once(scripts, registry, redis_client):
    task_id, token = await assigned(scripts, registry, redis_client, "a", max_attempts=3)
    reply = await report(scripts, task_id, "a", token, "fail", failure(retryable=False))
    assert reply == ["ok", "FAILED", ""]
    assert await redis_client.zscore(keys.TASK_DEAD_LETTER, task_id) is not None
    assert await redis_client.zscore(keys.TASK_SCHEDULED, task_id) is None


# --- release_task ----------------------------------------------------------------------------


async def test_release_on_lease_does_nothing_when_the_lease_was_extended(
    scripts, registry, redis_client
):
    task_id, token = await assigned(scripts, registry, redis_client, "a")
    await report(scripts, task_id, "a", token, "ack")
    # The reaper saw an ended lease (the index says so) but the agent extended it meanwhile.
    await redis_client.zadd(keys.TASK_LEASES, {task_id: 1})
    before = await dump(redis_client)
    assert await scripts.release_task(args=[task_id, "", "lease", "lease_expired", "late"]) == ""
    assert await dump(redis_client) == before

    # A release for another agent does nothing either.
    assert await scripts.release_task(args=[task_id, "b", "", "agent_lost", "lost"]) == ""
    assert await dump(redis_client) == before

    # The lease really ended: the attempt is given up and the task waits for a retry.
    await redis_client.hset(keys.task(task_id), "lease_expires_at_ms", 1)
    pubsub = redis_client.pubsub()
    await subscribe(pubsub, keys.node_channel(NODE))
    await pubsub.get_message(timeout=1)
    reply = await scripts.release_task(args=[task_id, "", "lease", "lease_expired", "late"])
    assert reply == "PENDING"
    record = await task_record(redis_client, task_id)
    assert json.loads(record["error"])["type"] == "lease_expired"
    assert json.loads(record["attempts"])[-1]["outcome"] == "PENDING"
    assert await redis_client.zscore(keys.TASK_SCHEDULED, task_id) is not None
    assert await redis_client.zscore(keys.TASK_LEASES, task_id) is None
    assert await active_tasks(redis_client, "a") == 0
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    assert json.loads(message["data"]) == {
        "kind": "cancel",
        "agent_id": "a",
        "task_id": task_id,
        "attempt": 1,
        "reason": "late",
    }
    await pubsub.aclose()

    # The old attempt's report is now stale... and a second release finds nothing to release.
    assert (await report(scripts, task_id, "a", token, "complete", "{}"))[0] == "not_held"
    assert await scripts.release_task(args=[task_id, "", "", "agent_lost", "lost"]) == ""


async def test_release_of_the_last_attempt_fails_the_task(scripts, registry, redis_client):
    task_id, _ = await assigned(scripts, registry, redis_client, "a", max_attempts=1)
    assert await scripts.release_task(args=[task_id, "a", "", "agent_lost", "gone"]) == "FAILED"
    assert await redis_client.zscore(keys.TASK_DEAD_LETTER, task_id) is not None
    assert await redis_client.hget(keys.task(task_id), "state") == "FAILED"


async def test_release_drops_a_stale_lease_entry(scripts, redis_client):
    task_id = await new_task(scripts)
    await redis_client.zadd(keys.TASK_LEASES, {task_id: 1})
    assert await scripts.release_task(args=[task_id, "", "lease", "lease_expired", "r"]) == ""
    assert await redis_client.zscore(keys.TASK_LEASES, task_id) is None
    assert await redis_client.hget(keys.task(task_id), "state") == "PENDING"


# --- cancel_task -----------------------------------------------------------------------------


async def test_cancel_a_pending_task_takes_it_out_of_line(scripts, redis_client):
    task_id = await new_task(scripts)
    assert await scripts.cancel_task(args=[task_id, "not needed", ""]) == ["ok"]
    record = await task_record(redis_client, task_id)
    assert record["state"] == "CANCELLED"
    assert json.loads(record["transitions"])[-1]["reason"] == "not needed"
    for key in [*queued_keys(), keys.task_classes("NORMAL")]:
        assert not await redis_client.exists(key), key
    assert await redis_client.zscore(keys.TASK_START_DEADLINES, task_id) is None
    assert await redis_client.zscore(keys.TASK_FINISHED, task_id) is not None
    assert await redis_client.zscore(keys.tasks_in_state("CANCELLED"), task_id) is not None
    assert await redis_client.zscore(keys.tasks_in_state("PENDING"), task_id) is None
    assert await redis_client.hget(keys.TASK_STATS, "tasks_cancelled") == "1"


async def test_cancel_a_task_waiting_for_its_retry(scripts, registry, redis_client):
    task_id, token = await assigned(scripts, registry, redis_client, "a")
    await report(scripts, task_id, "a", token, "fail", failure())
    assert await scripts.cancel_task(args=[task_id, "purged", "pending_only"]) == ["ok"]
    assert await redis_client.zscore(keys.TASK_SCHEDULED, task_id) is None
    assert await scripts.promote_due_tasks(args=[10]) == 0


async def test_cancel_an_assigned_task_frees_the_slot_and_tells_the_agent(
    scripts, registry, redis_client
):
    task_id, token = await assigned(scripts, registry, redis_client, "a")
    before = await dump(redis_client)
    assert await scripts.cancel_task(args=[task_id, "purge", "pending_only"]) == [
        "not_pending",
        "ASSIGNED",
    ]
    assert await dump(redis_client) == before

    pubsub = redis_client.pubsub()
    await subscribe(pubsub, keys.node_channel(NODE))
    await pubsub.get_message(timeout=1)
    assert await scripts.cancel_task(args=[task_id, "changed my mind", ""]) == ["ok"]
    record = await task_record(redis_client, task_id)
    assert record["state"] == "CANCELLED"
    assert json.loads(record["attempts"])[-1]["outcome"] == "CANCELLED"
    assert await active_tasks(redis_client, "a") == 0
    assert not await redis_client.exists(keys.agent_tasks("a"), keys.AGENTS_HOLDING)
    assert await redis_client.zscore(keys.TASK_LEASES, task_id) is None
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    assert json.loads(message["data"])["kind"] == "cancel"
    assert json.loads(message["data"])["task_id"] == task_id
    await pubsub.aclose()

    # The agent's late report is refused; cancelling again is 'final'; both change nothing.
    before = await dump(redis_client)
    assert await report(scripts, task_id, "a", token, "complete", "{}") == [
        "not_held",
        "CANCELLED",
    ]
    assert await scripts.cancel_task(args=[task_id, "again", ""]) == ["final", "CANCELLED"]
    assert await scripts.cancel_task(args=["0" * 32, "", ""]) == ["not_found"]
    assert await dump(redis_client) == before
    assert await redis_client.hget(keys.TASK_STATS, "tasks_cancelled") == "1"


# --- promote_due_tasks and expire_tasks ------------------------------------------------------


async def test_a_promoted_retry_keeps_its_place_in_line(scripts, registry, redis_client):
    first, token = await assigned(scripts, registry, redis_client, "a")
    second, third = await new_task(scripts), await new_task(scripts)
    await report(scripts, first, "a", token, "fail", failure())
    assert await scripts.promote_due_tasks(args=[10]) == 0  # its backoff has not passed
    assert await redis_client.zscore(keys.TASK_SCHEDULED, first) is not None

    await redis_client.zadd(keys.TASK_SCHEDULED, {first: 0})
    assert await scripts.promote_due_tasks(args=[10]) == 1
    for queue in queued_keys():
        assert await redis_client.zrange(queue, 0, -1) == [first, second, third]
    assert await redis_client.zscore(keys.task_queue("NORMAL"), first) == 1  # its seq
    assert not await redis_client.exists(keys.TASK_SCHEDULED)
    record = await task_record(redis_client, first)
    assert await redis_client.zscore(keys.TASK_START_DEADLINES, first) == (
        int(record["queued_at_ms"]) + START_MS
    )


async def test_promote_skips_a_scheduled_task_that_is_no_longer_pending(scripts, redis_client):
    task_id = await new_task(scripts)
    await scripts.cancel_task(args=[task_id, "", ""])
    await redis_client.zadd(keys.TASK_SCHEDULED, {task_id: 0})
    assert await scripts.promote_due_tasks(args=[10]) == 0
    assert not await redis_client.exists(keys.TASK_SCHEDULED, *queued_keys())


async def test_expire_takes_pending_tasks_past_their_start_deadline(
    scripts, registry, redis_client
):
    late = await new_task(scripts, schedule_to_start_ms=0)
    waiting = await new_task(scripts)
    running, _ = await assigned(scripts, registry, redis_client, "a", schedule_to_start_ms=0)
    await redis_client.zadd(keys.TASK_START_DEADLINES, {running: 0})  # a stale entry

    assert await scripts.expire_tasks(args=[10]) == [late]
    record = await task_record(redis_client, late)
    assert record["state"] == "EXPIRED"
    assert await redis_client.zscore(keys.TASK_FINISHED, late) is not None
    assert await redis_client.hget(keys.TASK_STATS, "tasks_expired") == "1"
    for queue in queued_keys():
        assert await redis_client.zrange(queue, 0, -1) == [waiting]
    assert await redis_client.zrange(keys.TASK_START_DEADLINES, 0, -1) == [waiting]
    assert await redis_client.hget(keys.task(running), "state") == "ASSIGNED"
    assert await scripts.expire_tasks(args=[10]) == []


# --- connect_stream and disconnect_stream ----------------------------------------------------


async def test_connect_and_disconnect_stream(scripts, registry, redis_client):
    before = await dump(redis_client)
    assert await scripts.connect_stream(args=["ghost", NODE, "s1"]) == 0
    assert await dump(redis_client) == before

    await make_agent(registry, redis_client, "a", streaming=False)
    pubsub = redis_client.pubsub()
    await subscribe(pubsub, keys.node_channel("node-1"))
    await pubsub.get_message(timeout=1)

    assert await scripts.connect_stream(args=["a", "node-1", "s1"]) == 1
    assert await redis_client.hget(keys.AGENTS_CONNECTED, "a") == "node-1 s1"
    assert await redis_client.hget(keys.agent("a"), "node_id") == "node-1"

    # A newer stream on another node replaces it; the older one's node is told.
    assert await scripts.connect_stream(args=["a", "node-2", "s2"]) == 1
    assert await redis_client.hget(keys.AGENTS_CONNECTED, "a") == "node-2 s2"
    assert await redis_client.hget(keys.agent("a"), "node_id") == "node-2"
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    assert json.loads(message["data"]) == {"kind": "replaced", "agent_id": "a", "session_id": "s1"}
    await pubsub.aclose()

    # The older stream closing afterwards does not remove the newer one.
    before = await dump(redis_client)
    assert await scripts.disconnect_stream(args=["a", "node-1", "s1"]) == 0
    assert await scripts.disconnect_stream(args=["a", "node-2", "s1"]) == 0
    assert await dump(redis_client) == before

    assert await scripts.disconnect_stream(args=["a", "node-2", "s2"]) == 1
    assert not await redis_client.hexists(keys.AGENTS_CONNECTED, "a")
    assert await redis_client.hget(keys.agent("a"), "node_id") == ""
    assert await redis_client.zscore(keys.AGENTS_DISCONNECTED, "a") is None  # holds nothing
    assert await scripts.disconnect_stream(args=["a", "node-2", "s2"]) == 0


async def test_an_agent_holding_tasks_that_disconnects_waits_in_the_grace_list(
    scripts, registry, redis_client
):
    await assigned(scripts, registry, redis_client, "a")
    assert await scripts.connect_stream(args=["a", NODE, "s1"]) == 1
    assert await scripts.disconnect_stream(args=["a", NODE, "s1"]) == 1
    assert await redis_client.zscore(keys.AGENTS_DISCONNECTED, "a") is not None
    # Coming back, on any node, takes it off the list.
    assert await scripts.connect_stream(args=["a", "node-2", "s2"]) == 1
    assert await redis_client.zscore(keys.AGENTS_DISCONNECTED, "a") is None


# --- forget_finished_tasks -------------------------------------------------------------------


async def test_forget_finished_tasks_removes_every_trace(scripts, registry, redis_client):
    done, token = await assigned(scripts, registry, redis_client, "a")
    await report(scripts, done, "a", token, "complete", "{}")
    dead, token = await assigned(scripts, registry, redis_client, "b", max_attempts=1)
    await report(scripts, dead, "b", token, "fail", failure())
    cancelled = await new_task(scripts, request_id="req-1")
    await scripts.cancel_task(args=[cancelled, "", ""])
    kept = await new_task(scripts)  # not finished: stays
    forgotten = {done, dead, cancelled}

    seconds, micros = await redis_client.time()
    now_ms = seconds * 1000 + micros // 1000
    assert await scripts.forget_finished_tasks(args=[now_ms - 60_000, 10, 0]) == 0  # too recent
    assert await scripts.forget_finished_tasks(args=[now_ms + 1000, 2, 0]) == 2  # at most 2
    assert await scripts.forget_finished_tasks(args=[now_ms + 1000, 10, 0]) == 1
    assert await scripts.forget_finished_tasks(args=[now_ms + 1000, 10, 0]) == 0

    for task_id in forgotten:
        assert not await redis_client.exists(keys.task(task_id))
    # No index or record still names a forgotten task: its request_id's record went with it.
    for key, (kind, value) in (await dump(redis_client)).items():
        if kind == "zset":
            members = {member for member, _ in value}
        elif kind in ("set", "hash"):
            members = set(value)
        elif kind == "string":
            members = {value}
        else:
            continue
        assert not members & forgotten, key
    assert await redis_client.get(keys.task_request("req-1")) is None
    assert await redis_client.hget(keys.task(kept), "state") == "PENDING"
    assert await redis_client.zrange(keys.TASK_ALL, 0, -1) == [kept]
    assert not await redis_client.exists(
        keys.TASK_FINISHED,
        keys.TASK_DEAD_LETTER,
        keys.tasks_in_state("COMPLETED"),
        keys.tasks_in_state("FAILED"),
        keys.tasks_in_state("CANCELLED"),
        keys.tasks_by_agent("a"),
        keys.tasks_by_agent("b"),
    )


@pytest.mark.parametrize("action,payload", [("complete", "{}"), ("fail", None)])
async def test_a_settling_report_says_whether_tasks_wait_for_the_slot(
    scripts, registry, redis_client, action, payload
):
    """The node asks for a dispatch pass after a report only when a task waits in line."""
    payload = payload or json.dumps({"message": "no", "type": "", "retryable": False})
    task_id, token = await assigned(scripts, registry, redis_client, "a")
    args = [task_id, "a", token, action, payload, "0"]
    assert (await scripts.report_task(args=args))[4] == 0  # nothing else queued

    for priority in Priority:  # every priority's queue counts (the Lua list matches)
        await redis_client.flushdb()
        task_id, token = await assigned(scripts, registry, redis_client, "a")
        await new_task(scripts, priority=priority.name)
        args = [task_id, "a", token, action, payload, "0"]
        assert (await scripts.report_task(args=args))[4] == 1, priority


# --- submitters and their quotas (issue 15) --------------------------------------------------


async def test_forget_keeps_at_most_the_newest_finished_tasks(scripts, redis_client):
    finished = []
    for _ in range(3):
        task_id = await new_task(scripts)
        await scripts.cancel_task(args=[task_id, "", ""])
        finished.append(task_id)
        await asyncio.sleep(0.005)  # distinct finish times: the order is theirs
    pending = await new_task(scripts)  # not finished: never counted, never forgotten

    assert await scripts.forget_finished_tasks(args=[0, 10, 3]) == 0  # no more than kept
    assert await scripts.forget_finished_tasks(args=[0, 1, 1]) == 1  # at most 1 a call
    assert await scripts.forget_finished_tasks(args=[0, 10, 1]) == 1
    assert await scripts.forget_finished_tasks(args=[0, 10, 1]) == 0
    assert [await redis_client.exists(keys.task(t)) for t in finished] == [0, 0, 1]
    assert await redis_client.exists(keys.task(pending))


async def unfinished(redis, principal) -> int:
    return int(await redis.hget(keys.QUOTA_UNFINISHED, principal) or 0)


async def test_submit_stores_its_submitter_whose_request_ids_are_its_own(scripts, redis_client):
    created, task_id = await submit(scripts, submitted_by="alice", request_id="req-1")
    assert created == 1
    assert (await task_record(redis_client, task_id))["submitted_by"] == "alice"
    assert await unfinished(redis_client, "alice") == 1
    assert await redis_client.get(keys.task_request("req-1", "alice")) == task_id
    assert not await redis_client.exists(keys.task_request("req-1"))
    # Again by alice: her task, nothing counted twice. By bob, or without auth: new tasks.
    assert await submit(scripts, submitted_by="alice", request_id="req-1") == (0, task_id)
    assert await unfinished(redis_client, "alice") == 1
    created, bobs = await submit(scripts, submitted_by="bob", request_id="req-1")
    assert created == 1 and bobs != task_id
    created, anonymous = await submit(scripts, request_id="req-1")
    assert created == 1 and anonymous not in (task_id, bobs)
    assert (await task_record(redis_client, anonymous))["submitted_by"] == ""
    assert await redis_client.hgetall(keys.QUOTA_UNFINISHED) == {"alice": "1", "bob": "1"}


async def test_a_submit_over_quota_is_refused_and_changes_nothing(scripts, redis_client):
    most_two = SubmitQuota(max_unfinished=2)
    for _ in range(2):
        assert (await submit(scripts, submitted_by="alice", quota=most_two))[0] == 1
    before = await dump(redis_client)
    reply = await submit_reply(scripts, submitted_by="alice", quota=most_two)
    assert reply == ["over_quota", "max_unfinished", 0, "2"]
    assert await dump(redis_client) == before

    bucket = SubmitQuota(rate_per_s=0.001, burst=2.0)  # one token in 1,000 s: none refills
    for _ in range(2):
        assert (await submit(scripts, submitted_by="bob", quota=bucket))[0] == 1
    tokens = await redis_client.hgetall(keys.quota_submit("bob"))
    assert float(tokens["tokens"]) == pytest.approx(0, abs=0.01)
    assert 0 < await redis_client.pttl(keys.quota_submit("bob")) <= 2_000_001
    before = await dump(redis_client)
    reply = await submit_reply(scripts, submitted_by="bob", quota=bucket)
    assert reply[:2] == ["over_quota", "submit_rate"]
    assert 990_000 <= reply[2] <= 1_000_000  # ms until the next token
    assert await dump(redis_client) == before
    # Without a submitter no quota applies, whatever the arguments say.
    assert (await submit(scripts, quota=SubmitQuota(max_unfinished=1)))[0] == 1
    assert (await submit(scripts, quota=SubmitQuota(max_unfinished=1)))[0] == 1


async def test_each_task_gives_back_its_place_once_when_it_ends(scripts, registry, redis_client):
    completed = await new_task(scripts, submitted_by="alice")
    failed = await new_task(scripts, submitted_by="alice", max_attempts=1)
    cancelled = await new_task(scripts, submitted_by="alice")
    expired = await new_task(scripts, submitted_by="alice", schedule_to_start_ms=0)
    assert await unfinished(redis_client, "alice") == 4
    assert await scripts.expire_tasks(args=[10]) == [expired]
    assert await unfinished(redis_client, "alice") == 3
    await make_agent(registry, redis_client, "a", max_concurrency=2)
    for task_id in (completed, failed):
        assert (await assign(scripts, task_id, "a"))[0] == "ok"
    token = await redis_client.hget(keys.task(completed), "fencing_token")
    assert (await report(scripts, completed, "a", token, "complete", "{}"))[0] == "ok"
    assert await unfinished(redis_client, "alice") == 2
    token = await redis_client.hget(keys.task(failed), "fencing_token")
    assert (await report(scripts, failed, "a", token, "fail", failure()))[:2] == ["ok", "FAILED"]
    assert await unfinished(redis_client, "alice") == 1
    assert await scripts.cancel_task(args=[cancelled, "", "", ""]) == ["ok"]
    assert not await redis_client.exists(keys.QUOTA_UNFINISHED)
    # Ended tasks end once: repeats, another cancel and forgetting them give nothing back.
    await new_task(scripts, submitted_by="alice")
    assert await scripts.cancel_task(args=[cancelled, "", "", ""]) == ["final", "CANCELLED"]
    assert (await report(scripts, completed, "a", token, "complete", "{}"))[0] != "ok"
    assert await scripts.forget_finished_tasks(args=[2**50, 100, 0]) == 4
    assert await unfinished(redis_client, "alice") == 1


async def test_cancel_for_another_submitter_is_refused_before_anything_else(scripts, redis_client):
    task_id = await new_task(scripts, submitted_by="alice")
    anonymous = await new_task(scripts)
    before = await dump(redis_client)
    assert await scripts.cancel_task(args=[task_id, "", "", "bob"]) == ["not_owner"]
    assert await scripts.cancel_task(args=[anonymous, "", "", "bob"]) == ["not_owner"]
    assert await scripts.cancel_task(args=["no-such-task", "", "", "bob"]) == ["not_found"]
    assert await dump(redis_client) == before
    assert await scripts.cancel_task(args=[task_id, "", "", "alice"]) == ["ok"]
    # A finished task of another says not_owner too, not what became of it.
    assert await scripts.cancel_task(args=[task_id, "", "", "bob"]) == ["not_owner"]
