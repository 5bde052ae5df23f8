"""The dispatcher's scripts on their own, against a real Redis: the snapshot a pass starts
from, the heads of the class queues, an assignment handed back to the assigning node, and
``run_batch`` (many script calls in one round trip, surviving a SCRIPT FLUSH)."""

from __future__ import annotations

import json

import pytest
from redis.exceptions import ResponseError

from coordinator.agents.record_codec import RECORD_FIELDS
from coordinator.dispatch.script_calls import DispatchSnapshotCall
from coordinator.storage import keys
from coordinator.storage.scripts import run_batch
from script_support import (
    LIVENESS_MS,
    NODE,
    assign,
    make_agent,
    new_task,
    submit_reply,
    task_record,
)


async def snapshot(scripts):
    now_ms, strategy, state, classes, rows, *_ = await scripts.dispatch_snapshot(
        args=DispatchSnapshotCall().args()
    )
    agents = sorted(dict(zip(RECORD_FIELDS, row, strict=True))["agent_id"] for row in rows)
    return int(now_ms), strategy, state, [sorted(c) for c in classes], agents


async def test_snapshot_reads_no_agent_while_nothing_waits(scripts, registry, redis_client):
    await make_agent(registry, redis_client, "a")

    _, strategy, state, classes, agents = await snapshot(scripts)

    assert (strategy, state, classes, agents) == ("", "", [[]] * 5, [])


async def test_snapshot_for_a_view_reads_the_agents_and_takes_no_turn(
    scripts, registry, redis_client
):
    await make_agent(registry, redis_client, "a")
    await new_task(scripts)

    for_view = DispatchSnapshotCall("view", "this-node", heads_per_class=0).args()
    _, _, _, classes, rows, heads, limit, _ = await scripts.dispatch_snapshot(args=for_view)
    assert len(rows) == 1 and classes[3] == ["c0"] and heads == [[]] * 5 and limit == 0
    await redis_client.delete(keys.task_queue("NORMAL"), keys.task_classes("NORMAL"))
    _, _, _, classes, rows, *_ = await scripts.dispatch_snapshot(args=for_view)
    assert len(rows) == 1 and classes == [[]] * 5  # nothing waits: the agents all the same

    assert not await redis_client.exists(keys.DISPATCH_LOCK, keys.DISPATCH_WANTED)


async def test_snapshot_has_waiting_classes_and_streaming_active_agents(
    scripts, registry, redis_client
):
    await new_task(scripts, priority="HIGH", requirements_class="gpu")
    await new_task(scripts, priority="LOW", requirements_class="c0")
    await new_task(scripts, priority="LOW", requirements_class="c1")
    await make_agent(registry, redis_client, "streaming")
    await make_agent(registry, redis_client, "no-stream", streaming=False)
    await make_agent(registry, redis_client, "dead-node", node="node-gone")
    await redis_client.delete(keys.node_presence("node-gone"))
    await make_agent(registry, redis_client, "inactive")
    await redis_client.zadd(keys.AGENTS_HEARTBEATS, {"inactive": 0})  # stale: swept out
    assert await registry.sweep_stale() == ["inactive"]
    await redis_client.set(keys.BALANCING_STRATEGY, "least_connections")
    await redis_client.set(keys.BALANCER_STATE, '{"round_robin_last": "x"}')

    now_ms, strategy, state, classes, agents = await snapshot(scripts)

    # URGENT, CRITICAL, HIGH, NORMAL, LOW
    assert classes == [[], [], ["gpu"], [], ["c0", "c1"]]
    assert agents == ["streaming"]
    assert strategy == "least_connections"
    assert json.loads(state) == {"round_robin_last": "x"}
    seconds, micros = await redis_client.time()
    assert abs(seconds * 1000 + micros // 1000 - now_ms) < 5_000


async def test_snapshot_rows_decode_into_agents(scripts, registry, redis_client):
    await new_task(scripts)
    await make_agent(registry, redis_client, "a", max_concurrency=3)
    now_ms, *_ = await snapshot(scripts)
    rows = (await scripts.dispatch_snapshot(args=DispatchSnapshotCall().args()))[4]

    (agent,) = registry.decode_records(rows, now_ms)

    assert (agent.agent_id, agent.max_concurrency, agent.active_tasks) == ("a", 3, 0)


async def test_snapshot_has_the_first_tasks_of_each_waiting_class(scripts, registry, redis_client):
    c0 = [await new_task(scripts, requirements_class="c0") for _ in range(3)]
    c1 = await new_task(scripts, requirements_class="c1")
    urgent = await new_task(scripts, priority="URGENT", requirements_class="c0")
    await make_agent(registry, redis_client, "a", max_concurrency=10)
    *_, classes, _, heads, limit, _ = await scripts.dispatch_snapshot(
        args=DispatchSnapshotCall(heads_per_class=2).args()
    )

    assert limit == 2
    by_class = [dict(zip(c, h, strict=True)) for c, h in zip(classes, heads, strict=True)]
    assert [h[0] for h in by_class[0]["c0"]] == [urgent]
    assert [h[0] for h in by_class[3]["c0"]] == c0[:2]
    assert [h[0] for h in by_class[3]["c1"]] == [c1]
    assert by_class[1] == by_class[2] == by_class[4] == {}


async def test_snapshot_reads_no_task_while_no_agent_has_a_free_slot(
    scripts, registry, redis_client
):
    await new_task(scripts)
    await make_agent(registry, redis_client, "busy", max_concurrency=1)
    await redis_client.hset(keys.agent("busy"), "active_tasks", 1)

    *_, classes, agents, heads, limit, _ = await scripts.dispatch_snapshot(
        args=DispatchSnapshotCall().args()
    )

    assert classes[3] == ["c0"] and len(agents) == 1
    assert heads == [[]] * 5 and limit == 0


async def test_snapshot_reads_no_more_tasks_per_class_than_there_are_free_slots(
    scripts, registry, redis_client
):
    tasks = [await new_task(scripts) for _ in range(5)]
    await make_agent(registry, redis_client, "a", max_concurrency=4)
    await make_agent(registry, redis_client, "b", max_concurrency=2)
    await redis_client.hset(keys.agent("a"), "active_tasks", 1)
    await redis_client.hset(keys.agent("b"), "status", "MAINTENANCE")  # its slots do not count

    *_, heads, limit, _ = await scripts.dispatch_snapshot(args=DispatchSnapshotCall().args())

    assert limit == 3
    assert [h[0] for h in heads[3][0]] == tasks[:3]


async def test_queue_heads_returns_each_class_in_line_after_its_bound(scripts, redis_client):
    first = await new_task(scripts, requirements_class="c0")
    second = await new_task(scripts, requirements_class="c0")
    third = await new_task(scripts, requirements_class="c0")
    other = await new_task(scripts, requirements_class="c1")
    seq = {t: int(await redis_client.hget(keys.task(t), "seq")) for t in (first, second)}

    c0, c1, empty = await scripts.queue_heads(
        args=["NORMAL", 2, "c0", f"({seq[first]}", "c1", "-inf", "c9", "-inf"]
    )

    assert [h[0] for h in c0] == [second, third]  # after the bound, at most 2
    assert [h[0] for h in c1] == [other]
    assert empty == []
    task_id, score, requirements, strategy, routing_key, avoid_agent_id = c0[0]
    assert (task_id, int(float(score))) == (second, seq[second])
    assert (requirements, strategy, routing_key, avoid_agent_id) == ("{}", "", "", "")


@pytest.mark.parametrize("ending", ["fail", "release"])
async def test_a_task_back_in_line_names_the_agent_whose_attempt_ended(
    scripts, registry, redis_client, ending
):
    """A retry prefers another agent (issue 14, defect 12): the script that ends an attempt
    records its agent, and the heads carry it to the dispatcher."""
    task_id = await new_task(scripts)
    await make_agent(registry, redis_client, "a")
    assert (await assign(scripts, task_id, "a"))[:2] == ["ok", 1]
    token = await redis_client.hget(keys.task(task_id), "fencing_token")
    if ending == "fail":
        error = json.dumps({"message": "oops", "type": "E", "retryable": True})
        assert (await scripts.report_task(args=[task_id, "a", token, "fail", error]))[
            1
        ] == "PENDING"
    else:
        reason = "lease expired without a report"
        assert await scripts.release_task(args=[task_id, "a", "", "lease_expired", reason]) == (
            "PENDING"
        )
    await redis_client.zadd(keys.TASK_SCHEDULED, {task_id: 0})  # its backoff is over
    assert await scripts.promote_due_tasks(args=[10]) == 1

    ((head,),) = await scripts.queue_heads(args=["NORMAL", 10, "c0", "-inf"])
    *_, heads, _, _ = await scripts.dispatch_snapshot(args=DispatchSnapshotCall().args())

    assert head[0] == task_id and head[5] == "a"
    assert heads[3][0][0][5] == "a"


async def test_queue_heads_marks_a_task_deleted_meanwhile(scripts, redis_client):
    task_id = await new_task(scripts)
    await redis_client.delete(keys.task(task_id))

    ((head,),) = await scripts.queue_heads(args=["NORMAL", 10, "c0", "-inf"])

    assert head[0] == task_id and head[2] == ""


async def test_assignment_for_the_assigning_nodes_own_stream_comes_back(
    scripts, registry, redis_client
):
    task_id = await new_task(scripts)
    await make_agent(registry, redis_client, "a")
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(keys.node_channel(NODE))
    await pubsub.get_message(timeout=1)  # the subscription confirmation

    reply = await scripts.assign_task(args=[task_id, "a", "n1", LIVENESS_MS, NODE, "1"])

    assert reply[:2] == ["ok", 1] and int(reply[2]) >= 0
    message = json.loads(reply[3])
    assert message["kind"] == "assign" and message["agent_id"] == "a"
    assert message["task_id"] == task_id and message["fencing_token"] == "1:n1"
    assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3) is None
    await pubsub.aclose()


async def test_assignment_for_another_nodes_stream_is_published(scripts, registry, redis_client):
    task_id = await new_task(scripts)
    await make_agent(registry, redis_client, "a", node="node-2")
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(keys.node_channel("node-2"))
    await pubsub.get_message(timeout=1)

    reply = await scripts.assign_task(args=[task_id, "a", "n1", LIVENESS_MS, NODE, "1"])

    assert len(reply) == 3  # nothing for the assigning node itself
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    assert message is not None and json.loads(message["data"])["task_id"] == task_id
    await pubsub.aclose()


async def submit_assigning(scripts, agent_id="a", **options):
    """A submit that assigns its task to ``agent_id`` at once if it can, as a node's
    dispatcher asks (Dispatcher.plan_submit): the task_id and the assignment's reply."""
    reply = await submit_reply(
        scripts, assignment=[agent_id, "n1", LIVENESS_MS, NODE, "1"], **options
    )
    assert reply[0] == 1 and len(reply) == 5
    return reply[1], reply[4]


async def test_a_submit_assigns_its_task_at_once_when_first_in_line(
    scripts, registry, redis_client
):
    await new_task(scripts, priority="LOW")  # behind the new task, whatever its class
    await make_agent(registry, redis_client, "a")

    task_id, reply = await submit_assigning(scripts, priority="HIGH", requirements_class="c1")

    assert reply[:3] == ["ok", 1, 0]  # no time in line
    message = json.loads(reply[3])  # for the submitting node, which holds the stream
    assert message["task_id"] == task_id and message["fencing_token"] == "1:n1"
    record = await task_record(redis_client, task_id)
    assert (record["state"], record["agent_id"], record["attempt"]) == ("ASSIGNED", "a", "1")
    transitions = [(t["state"], t["reason"]) for t in json.loads(record["transitions"])]
    assert transitions == [("PENDING", "submitted"), ("ASSIGNED", f"assigned by node {NODE}")]
    assert await redis_client.hget(keys.agent("a"), "active_tasks") == "1"
    # It never queued: no queue, class or schedule-to-start deadline holds it.
    assert not await redis_client.exists(keys.task_queue("HIGH"), keys.task_classes("HIGH"))
    assert await redis_client.zscore(keys.TASK_START_DEADLINES, task_id) is None
    assert await redis_client.zscore(keys.tasks_in_state("PENDING"), task_id) is None


@pytest.mark.parametrize(
    "ahead",
    [
        {"priority": "NORMAL", "requirements_class": "c0"},  # earlier, the same class
        {"priority": "NORMAL", "requirements_class": "c1"},  # earlier, another class
        {"priority": "URGENT", "requirements_class": "c1"},  # more urgent
    ],
)
async def test_a_submit_never_assigns_its_task_over_a_waiting_one(
    scripts, registry, redis_client, ahead
):
    waiting = await new_task(scripts, **ahead)
    await make_agent(registry, redis_client, "a")

    task_id, reply = await submit_assigning(scripts, priority="NORMAL", requirements_class="c0")

    assert reply[0] == "not_first"
    for t in (waiting, task_id):  # both wait in line: a pass will assign them in order
        assert (await task_record(redis_client, t))["state"] == "PENDING"
    assert await redis_client.zscore(keys.task_queue("NORMAL"), task_id) is not None
    assert await redis_client.hget(keys.agent("a"), "active_tasks") == "0"


@pytest.mark.parametrize(("agent_id", "refusal"), [("a", "agent_full"), ("b", "agent_gone")])
async def test_a_submit_queues_its_task_when_the_agent_cannot_take_it(
    scripts, registry, redis_client, agent_id, refusal
):
    await make_agent(registry, redis_client, "a", max_concurrency=1)
    await redis_client.hset(keys.agent("a"), "active_tasks", 1)

    task_id, reply = await submit_assigning(scripts, agent_id=agent_id)

    assert reply[0] == refusal
    assert (await task_record(redis_client, task_id))["state"] == "PENDING"
    assert await redis_client.zscore(keys.task_queue("NORMAL"), task_id) is not None
    assert await redis_client.zscore(keys.TASK_START_DEADLINES, task_id) is not None


async def test_a_repeated_submit_assigns_nothing(scripts, registry, redis_client):
    await make_agent(registry, redis_client, "a", max_concurrency=2)
    first, _ = await submit_assigning(scripts, request_id="req-1")

    reply = await submit_reply(
        scripts, request_id="req-1", assignment=["a", "n2", LIVENESS_MS, NODE, "1"]
    )

    assert reply[:2] == [0, first] and len(reply) == 3
    assert await redis_client.hget(keys.agent("a"), "active_tasks") == "1"


async def test_run_batch_runs_every_call_in_order_and_reloads_flushed_scripts(
    scripts, registry, redis_client, multiplexed
):
    tasks = [await new_task(scripts) for _ in range(3)]
    await make_agent(registry, redis_client, "a", max_concurrency=2)
    await redis_client.script_flush()

    replies = await run_batch(
        multiplexed,
        [
            (scripts.assign_task, [], [t, "a", f"n{i}", LIVENESS_MS, NODE])
            for i, t in enumerate(tasks)
        ],
    )

    assert [r[0] for r in replies] == ["ok", "ok", "agent_full"]
    assert [(await task_record(redis_client, t))["state"] for t in tasks] == [
        "ASSIGNED",
        "ASSIGNED",
        "PENDING",
    ]


async def test_run_batch_raises_a_script_error(scripts, multiplexed):
    with pytest.raises(ResponseError, match="script"):
        await run_batch(multiplexed, [(scripts.queue_heads, [], ["NORMAL", "not-a-number", "c0"])])


async def test_old_style_assign_still_publishes(scripts, registry, redis_client):
    """Without the flag (other callers, older nodes), the assigning node is told over
    pub/sub like any other."""
    task_id = await new_task(scripts)
    await make_agent(registry, redis_client, "a")

    assert (await assign(scripts, task_id, "a"))[:2] == ["ok", 1]


async def test_snapshot_with_a_turn_reads_only_for_the_turn_holder(scripts, registry, redis_client):
    await new_task(scripts)
    await make_agent(registry, redis_client, "a")
    await redis_client.set(keys.DISPATCH_LOCK, "other-node")

    assert (
        await scripts.dispatch_snapshot(args=DispatchSnapshotCall("again", "this-node").args())
        is None
    )

    await redis_client.set(keys.DISPATCH_LOCK, "this-node")
    *_, classes, rows, _, _, _ = await scripts.dispatch_snapshot(
        args=DispatchSnapshotCall("again", "this-node").args()
    )
    assert classes[3] and len(rows) == 1
