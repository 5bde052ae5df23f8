"""The dispatcher's scripts on their own, against a real Redis: the snapshot a pass starts
from, the heads of the class queues, an assignment handed back to the assigning node, and
``run_batch`` (many script calls in one round trip, surviving a SCRIPT FLUSH)."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError, ResponseError

from coordinator.agents.record_codec import RECORD_FIELDS
from coordinator.dispatch.script_calls import (
    DispatchSnapshotCall,
    DispatchTurnCall,
    SnapshotReply,
    TurnsEnded,
)
from coordinator.storage import keys
from coordinator.storage.multiplex import MultiplexedConnection
from coordinator.storage.scripts import TaskScripts, run_batch
from coordinator.tasks.calls import TaskToQueue
from coordinator.tasks.models import TaskSubmission
from coordinator.tasks.script_calls import SubmitTaskCall
from script_support import (
    LIVENESS_MS,
    NODE,
    assign,
    make_agent,
    new_task,
    submit_reply,
    subscribe,
    task_record,
)


async def read(scripts, call: DispatchSnapshotCall | None = None) -> SnapshotReply | None:
    """The snapshot ``call`` reads (by default: every partition, taking no turn)."""
    call = call or DispatchSnapshotCall()
    return DispatchSnapshotCall.parse(await scripts.dispatch_snapshot(args=call.args()))


async def snapshot(scripts):
    reply = await read(scripts)
    rows = reply.agent_rows
    agents = sorted(dict(zip(RECORD_FIELDS, row, strict=True))["agent_id"] for row in rows)
    classes = [sorted(c) for c in reply.class_sets]
    return reply.now_ms, reply.stored_strategy, reply.balancer_state, classes, agents


async def test_snapshot_reads_no_agent_while_nothing_waits(scripts, registry, redis_client):
    await make_agent(registry, redis_client, "a")

    _, strategy, state, classes, agents = await snapshot(scripts)

    assert (strategy, state, classes, agents) == ("", "", [[]] * 5, [])


async def test_snapshot_for_a_view_reads_the_agents_and_takes_no_turn(
    scripts, registry, redis_client
):
    await make_agent(registry, redis_client, "a")
    await new_task(scripts)

    for_view = DispatchSnapshotCall("view", "this-node", heads_per_class=0)
    reply = await read(scripts, for_view)
    assert len(reply.agent_rows) == 1 and reply.class_sets[3] == ["c0"]
    assert reply.heads == [[]] * 5 and reply.heads_limit == 0 and reply.partitions == ()
    await redis_client.delete(keys.task_queue("NORMAL"), keys.task_classes("NORMAL"))
    reply = await read(scripts, for_view)
    assert len(reply.agent_rows) == 1  # nothing waits: the agents all the same
    assert reply.class_sets == [[]] * 5

    assert not await redis_client.keys("coordinator:*dispatch*")


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
    rows = (await read(scripts)).agent_rows

    (agent,) = registry.decode_records(rows, now_ms)

    assert (agent.agent_id, agent.max_concurrency, agent.active_tasks) == ("a", 3, 0)


async def test_snapshot_has_the_first_tasks_of_each_waiting_class(scripts, registry, redis_client):
    c0 = [await new_task(scripts, requirements_class="c0") for _ in range(3)]
    c1 = await new_task(scripts, requirements_class="c1")
    urgent = await new_task(scripts, priority="URGENT", requirements_class="c0")
    await make_agent(registry, redis_client, "a", max_concurrency=10)
    reply = await read(scripts, DispatchSnapshotCall(heads_per_class=2))

    assert reply.heads_limit == 2
    by_class = [
        dict(zip(c, h, strict=True)) for c, h in zip(reply.class_sets, reply.heads, strict=True)
    ]
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

    reply = await read(scripts)

    assert reply.class_sets[3] == ["c0"] and len(reply.agent_rows) == 1
    assert reply.heads == [[]] * 5 and reply.heads_limit == 0


async def test_snapshot_reads_no_more_tasks_per_class_than_there_are_free_slots(
    scripts, registry, redis_client
):
    tasks = [await new_task(scripts) for _ in range(5)]
    await make_agent(registry, redis_client, "a", max_concurrency=4)
    await make_agent(registry, redis_client, "b", max_concurrency=2)
    await redis_client.hset(keys.agent("a"), "active_tasks", 1)
    await redis_client.hset(keys.agent("b"), "status", "MAINTENANCE")  # its slots do not count

    reply = await read(scripts)
    heads, limit = reply.heads, reply.heads_limit

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
    heads = (await read(scripts)).heads

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
    await subscribe(pubsub, keys.node_channel(NODE))
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
    await subscribe(pubsub, keys.node_channel("node-2"))
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
    await redis_client.config_resetstat()

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
    stats = await redis_client.info("commandstats")
    # The three calls went as the entries of one call (refused, loaded once, sent again).
    assert stats["cmdstat_script|load"]["calls"] == 1
    assert stats["cmdstat_evalsha"]["calls"] == 2 and "cmdstat_eval" not in stats


async def test_run_batch_raises_a_script_error(scripts, multiplexed):
    with pytest.raises(ResponseError, match="script"):
        await run_batch(multiplexed, [(scripts.queue_heads, [], ["NORMAL", "not-a-number", "c0"])])


async def test_run_batch_gives_each_call_of_one_script_its_own_reply(scripts, multiplexed):
    """Calls of one script in a row go as the entries of one call: an error stays its own."""
    good, bad = ["NORMAL", "5", "c0", "-inf"], ["NORMAL", "5", "c0", "not-a-bound"]
    calls = [(scripts.queue_heads, [], args) for args in (good, bad, good)]

    replies = await run_batch(multiplexed, calls, raise_on_error=False)

    assert replies[0] == replies[2] and not isinstance(replies[0], Exception)
    assert isinstance(replies[1], ResponseError)
    with pytest.raises(ResponseError):
        await run_batch(multiplexed, calls)


async def test_old_style_assign_still_publishes(scripts, registry, redis_client):
    """Without the flag (other callers, older nodes), the assigning node is told over
    pub/sub like any other."""
    task_id = await new_task(scripts)
    await make_agent(registry, redis_client, "a")

    assert (await assign(scripts, task_id, "a"))[:2] == ["ok", 1]


async def test_snapshot_with_the_turns_reads_only_the_partitions_this_node_holds(
    scripts, registry, redis_client
):
    mine = await new_task(scripts, requirements_class=keys.queued_class("c0", "n1"))
    await new_task(scripts, requirements_class=keys.queued_class("c0", "n2"))
    await make_agent(registry, redis_client, "a", max_concurrency=5)
    n2_lock, n2_wanted = keys.dispatch_turn_keys("n2")
    await redis_client.set(n2_lock, "other-node")

    reply = await read(scripts, DispatchSnapshotCall("begin", "this-node"))

    assert reply is not None and reply.partitions == ("n1",)
    assert reply.class_sets[3] == ["c0@n1"]  # n2's tasks are the holder's
    assert [head[0] for head in reply.heads[3][0]] == [mine] and len(reply.agent_rows) == 1
    assert await redis_client.get(keys.dispatch_turn_keys("n1")[0]) == "this-node"
    assert int(await redis_client.get(n2_wanted)) > 0  # the holder passes n2 again
    # Every partition waiting is held by another node now: nothing is read.
    assert await read(scripts, DispatchSnapshotCall("begin", "third-node")) is None


async def test_a_node_with_tasks_of_its_own_leaves_other_live_nodes_tasks_to_them(
    scripts, registry, redis_client
):
    await new_task(scripts, requirements_class=keys.queued_class("c0", "n1"))
    await new_task(scripts, requirements_class=keys.queued_class("c0", "n2"))
    await make_agent(registry, redis_client, "a", max_concurrency=5)
    await redis_client.set(keys.node_presence("n2"), "1")
    as_n1 = DispatchSnapshotCall("begin", "n1-turn", home="n1")

    reply = await read(scripts, as_n1)

    assert reply is not None and reply.partitions == ("n1",)
    assert not await redis_client.exists(*keys.dispatch_turn_keys("n2"))  # n2 passes its own
    await turn(scripts, "end", "n1-turn", "n1")
    await redis_client.delete(keys.node_presence("n2"))  # n2 is gone: its tasks are anyone's
    assert sorted((await read(scripts, as_n1)).partitions) == ["n1", "n2"]
    await turn(scripts, "release", "n1-turn", "n1", "n2")

    await redis_client.set(keys.node_presence("n2"), "1")
    await redis_client.delete(keys.task_queue("NORMAL", "c0@n1"))  # n1 has nothing waiting
    await redis_client.srem(keys.task_classes("NORMAL"), "c0@n1")
    assert (await read(scripts, as_n1)).partitions == ("n2",)  # its free slots take n2's


async def test_a_pass_leaves_the_agents_of_a_node_passing_now_to_it_unless_it_has_none(
    scripts, registry, redis_client
):
    await new_task(scripts, requirements_class=keys.queued_class("c0", "node-a"))
    await new_task(scripts, requirements_class=keys.queued_class("c0", "node-b"))
    await make_agent(registry, redis_client, "on-b", max_concurrency=5, node="node-b")
    await redis_client.set(keys.dispatch_turn_keys("node-b")[0], "node-b/its-turn")
    as_a = DispatchSnapshotCall("begin", "node-a/turn", home="node-a")

    # Node a has no agent of its own: it takes node b's, or its tasks would wait for as
    # long as node b passes.
    alone = await read(scripts, as_a)
    assert alone is not None and len(alone.agent_rows) == 1
    await turn(scripts, "release", "node-a/turn", "node-a")

    await make_agent(registry, redis_client, "on-a", max_concurrency=5, node="node-a")
    reply = await read(scripts, as_a)

    agents = [dict(zip(RECORD_FIELDS, row, strict=True))["agent_id"] for row in reply.agent_rows]
    assert agents == ["on-a"]  # node b, passing now, fills its own agent's slots
    await turn(scripts, "release", "node-a/turn", "node-a")
    await redis_client.delete(keys.dispatch_turn_keys("node-b")[0])  # node b's pass ended
    reply = await read(scripts, as_a)
    assert sorted(
        dict(zip(RECORD_FIELDS, r, strict=True))["agent_id"] for r in reply.agent_rows
    ) == [
        "on-a",
        "on-b",
    ]


async def turn(scripts, action: str, token: str, *partitions: str) -> TurnsEnded:
    call = DispatchTurnCall(action, token, partitions)
    return call.parse(await scripts.dispatch_turn(args=call.args()))


async def test_dispatch_turns_lose_no_request(scripts, redis_client):
    await new_task(scripts, requirements_class=keys.queued_class("c0", "n1"))
    lock, wanted = keys.dispatch_turn_keys("n1")

    taken = await read(scripts, DispatchSnapshotCall("begin", "a"))  # node a takes the turn
    assert taken is not None and taken.partitions == ("n1",) and taken.waited_ms == -1
    assert await read(scripts, DispatchSnapshotCall("begin", "b")) is None  # b asks meanwhile
    assert await redis_client.exists(wanted)  # the flag is left
    ended = await turn(scripts, "end", "a", "n1")
    assert ended.again == ("n1",) and ended.waited_ms >= 0  # a sees it and passes again
    assert await redis_client.get(lock) == "a"
    assert await turn(scripts, "end", "a", "n1") == TurnsEnded((), -1)  # nothing asked
    assert not await redis_client.exists(lock)  # a released it

    assert await read(scripts, DispatchSnapshotCall("begin", "b")) is not None
    await redis_client.set(lock, "c")  # b's lock expired; c took over
    assert (await turn(scripts, "end", "b", "n1")).again == ()
    assert await redis_client.get(lock) == "c"  # b does not free c's lock
    assert await read(scripts, DispatchSnapshotCall("begin", "d")) is None
    await turn(scripts, "release", "c", "n1")  # c stops mid-turn: lock freed, the flag stays
    assert not await redis_client.exists(lock)
    assert await redis_client.exists(wanted)
    stats = await redis_client.hgetall(keys.TASK_STATS)
    assert int(stats["dispatch_turn_waits"]) == 1  # b's request, served by a's pass
    assert int(stats["dispatch_turn_wait_ms_total"]) >= 0


async def test_again_keeps_the_turns_with_tasks_waiting_and_hands_back_the_others(
    scripts, registry, redis_client
):
    await new_task(scripts, requirements_class=keys.queued_class("c0", "n1"))
    await make_agent(registry, redis_client, "a", max_concurrency=5)
    gone_lock, _ = keys.dispatch_turn_keys("n-idle")
    await redis_client.set(gone_lock, "this-node")  # held, but nothing waits there now

    reply = await read(scripts, DispatchSnapshotCall("again", "this-node", held=("n-idle",)))

    assert reply is not None and reply.partitions == ("n1",)
    assert not await redis_client.exists(gone_lock)


async def test_tasks_queued_before_partitions_have_the_turn_of_before(
    scripts, registry, redis_client
):
    await new_task(scripts)  # class 'c0', without a partition
    await make_agent(registry, redis_client, "a")
    await redis_client.set(keys.DISPATCH_LOCK, "other-node")  # a node from before, passing

    assert await read(scripts, DispatchSnapshotCall("again", "this-node")) is None
    assert await redis_client.exists(keys.DISPATCH_WANTED)

    await redis_client.set(keys.DISPATCH_LOCK, "this-node")
    reply = await read(scripts, DispatchSnapshotCall("again", "this-node", held=("",)))
    assert reply is not None and reply.class_sets[3] == ["c0"] and len(reply.agent_rows) == 1
    assert reply.partitions == ("",) and reply.waited_ms >= 0  # it served that request


async def test_a_batch_on_a_full_redis_is_refused_call_by_call_and_writes_nothing(own_redis):
    """A batch's submits, sent as the entries of one call, on a Redis at maxmemory: each
    is refused as Redis refuses a write (OutOfMemoryError, which the API answers as
    "Redis is full"), as it was when each was a call of its own."""
    client = aioredis.Redis.from_url(own_redis.url(1), decode_responses=True)
    connection = MultiplexedConnection.like(client, timeout_s=2.0)
    try:
        script = TaskScripts(client).submit_task
        calls = [
            (
                script,
                (),
                SubmitTaskCall(
                    TaskToQueue(f"t{i}", TaskSubmission("noop", {"pad": "x" * 100_000})),
                    60_000,
                    None,
                    ["", 0, 1, 0],
                    "n1",
                ).args(),
            )
            for i in range(3)
        ]
        await client.config_set("maxmemory", str((await client.info("memory"))["used_memory"]))

        replies = await run_batch(connection, calls, raise_on_error=False)

        await client.config_set("maxmemory", "0")
        assert [type(r) for r in replies] == [OutOfMemoryError] * 3
        assert await client.keys("task*") == []
    finally:
        await connection.aclose()
        await client.aclose()
