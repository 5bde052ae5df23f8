"""A finished task's compact form (coordinator/storage/finished_records.py), against a real
Redis: the scripts pack a task that reaches a final state into a listpack hash, every field
reads back exactly, old-form hashes (as the scripts before this form left finished tasks)
read the same, and the wire replies for a finished task do not change."""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import pytest
from google.protobuf.duration_pb2 import Duration

from agent_harness import eventually, get_task, submit_request
from aitbc.coordinator.v1 import task_pb2
from coordinator.storage import finished_records, keys
from coordinator.tasks.models import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_SCHEDULE_TO_START_S,
    DEFAULT_START_TO_CLOSE_S,
    Requirements,
    RetryPolicy,
)
from script_support import (
    archived_ids,
    assign,
    failure,
    make_agent,
    report,
    submit_reply,
    task_record,
)


def test_tables_agree_with_the_submission_defaults():
    defaults = finished_records.DEFAULTS
    assert defaults["max_attempts"] == str(DEFAULT_MAX_ATTEMPTS)
    assert defaults["schedule_to_start_ms"] == str(round(DEFAULT_SCHEDULE_TO_START_S * 1000))
    assert defaults["start_to_close_ms"] == str(round(DEFAULT_START_TO_CLOSE_S * 1000))
    assert defaults["retry"] == RetryPolicy().to_json()
    assert set(json.loads(Requirements().to_json())) <= set(finished_records.KEY_TOKENS)
    codes = list(finished_records.FIELD_CODES.values())
    assert len(set(codes)) == len(codes) and all(len(c) == 1 and c.isalpha() for c in codes)
    for fragment in finished_records.FRAGMENTS:  # gsub replacements, and never a code byte
        assert "%" not in fragment and all(ord(c) >= 32 for c in fragment)


async def _finish(scripts, registry, redis, action, payload, extra_fields=None, **options):
    """A task submitted with ``options`` (and ``extra_fields`` written into it), assigned to
    agent 'a', acknowledged, reported with ``action``, then compacted: the report's reply
    and the hash before it was compacted (the record the reply carries)."""
    await make_agent(registry, redis, "a", max_concurrency=5)
    reply = await submit_reply(scripts, **options)
    task_id = reply[1]
    if extra_fields:
        await redis.hset(keys.task(task_id), mapping=extra_fields)
    await assign(scripts, task_id, "a", nonce=uuid.uuid4().hex[:16])
    token = await redis.hget(keys.task(task_id), "fencing_token")
    await scripts.report_task(args=[task_id, "a", token, "ack", ""])
    report = await scripts.report_task(args=[task_id, "a", token, action, payload])
    before = dict(zip(report[3][::2], report[3][1::2], strict=True))
    assert before == await redis.hgetall(keys.task(task_id))  # not compacted yet
    assert await scripts.compact_finished_tasks(args=[10, 0]) == 1
    return task_id, report, before


async def _assert_compact_and_exact(redis, task_id, before, plain=()):
    """The hash is state, pieces p1, p2, ... and the ``plain`` fields, a listpack, and reads
    back as ``before``."""
    stored = await redis.hgetall(keys.task(task_id))
    assert finished_records.is_compact(stored)
    pieces = len(stored) - 1 - len(plain)
    assert set(stored) == {"state", *plain} | {f"p{i}" for i in range(1, pieces + 1)}
    assert all(stored[name] == before[name] for name in plain)
    assert await redis.object("encoding", keys.task(task_id)) == "listpack"
    assert await task_record(redis, task_id) == before  # every field, exactly


async def test_a_completed_task_is_packed_into_a_listpack_and_reads_back_exactly(
    scripts, registry, redis_client
):
    task_id, report, before = await _finish(
        scripts, registry, redis_client, "complete", '{"answer":42}', request_id="req-1"
    )
    assert report[:2] == ["ok", "COMPLETED"]
    assert before["state"] == "COMPLETED" and before["result"] == '{"answer":42}'
    assert json.loads(before["transitions"])[-1]["state"] == "COMPLETED"
    await _assert_compact_and_exact(redis_client, task_id, before)

    # A repeated report reads the packed task: the same reply, the same record.
    token = before["fencing_token"]
    again = await scripts.report_task(args=[task_id, "a", token, "complete", '{"answer":42}'])
    assert again[0] == "repeat" and dict(zip(again[3][::2], again[3][1::2], strict=True)) == before
    # So does an idempotent submit of its request_id, and a cancel.
    assert (await submit_reply(scripts, request_id="req-1"))[:3] == [
        0,
        task_id,
        before["created_at_ms"],
    ]
    assert await scripts.cancel_task(args=[task_id, "late", "", ""]) == ["final", "COMPLETED"]
    # Forgotten with every index entry: its agent's index too (read from the packed form).
    assert await archived_ids(redis_client, keys.archived_by_agent("a")) == [task_id]
    assert await scripts.forget_finished_tasks(args=[int(before["updated_at_ms"]) + 1, 10, 0]) == 1
    assert await archived_ids(redis_client, keys.archived_by_agent("a")) == []
    assert await archived_ids(redis_client, keys.archived_in_state("COMPLETED")) == []
    assert not await redis_client.exists(keys.task(task_id), keys.TASK_ARCHIVED)


async def test_unusual_values_survive_the_packing(scripts, registry, redis_client):
    """Non-default settings, UTF-8 cut across pieces, a control byte in a free-text field
    (which stays a field of its own), a field without a code, a retry policy and an error:
    a failed, dead-lettered task."""
    routing_key = "réq\x01✓" * 4
    retry = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=7.0, backoff_multiplier=1.5)
    error = {"message": "no luck ✓ " * 30, "type": "T", "retryable": False}
    task_id, report, before = await _finish(
        scripts,
        registry,
        redis_client,
        "fail",
        json.dumps(error, ensure_ascii=False),  # raw UTF-8, which cjson keeps
        extra_fields={"routing_key": routing_key, "some_new_field": "x=y"},
        request_id="odd-request",
        priority="URGENT",
        max_attempts=7,
        retry=retry,
    )
    assert report[:2] == ["ok", "FAILED"]
    assert before["routing_key"] == routing_key and before["dead_lettered"] == "1"
    assert "✓" in before["error"] and before["some_new_field"] == "x=y"
    await _assert_compact_and_exact(redis_client, task_id, before, plain=["routing_key"])
    assert len(await redis_client.hgetall(keys.task(task_id))) > 5  # several pieces


def _joined(stored: dict[str, str]) -> str:
    return "".join(stored[f"p{i}"] for i in range(1, len(stored)) if f"p{i}" in stored)


@pytest.mark.parametrize("agent_id", ["agent0-00000", "a.b:c-1_x", "ab"])
async def test_repeated_values_are_referred_to_and_read_back_exactly(
    scripts, registry, redis_client, agent_id
):
    """The agent's id, the fencing token and two times come back in the transitions and
    attempts: the packing refers to them (byte 0 and the field's code; an id too short to
    gain is left as it is), and both readers give back every field. A task retried on
    another agent refers to the last one."""
    for agent in ("first-agent", agent_id):
        await make_agent(registry, redis_client, agent, max_concurrency=5)
    quick = RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.001)
    task_id = (await submit_reply(scripts, request_id="r-1", retry=quick))[1]
    await assign(scripts, task_id, "first-agent", nonce="nonce-1")
    token = await redis_client.hget(keys.task(task_id), "fencing_token")
    await report(scripts, task_id, "first-agent", token, "fail", failure())
    await asyncio.sleep(0.01)  # the retry's backoff
    await scripts.promote_due_tasks(args=[10])
    assert (await assign(scripts, task_id, agent_id, nonce="nonce-2"))[0] == "ok"
    token = await redis_client.hget(keys.task(task_id), "fencing_token")
    await report(scripts, task_id, agent_id, token, "ack")
    reply = await scripts.report_task(args=[task_id, agent_id, token, "complete", "{}"])
    before = dict(zip(reply[3][::2], reply[3][1::2], strict=True))
    assert await scripts.compact_finished_tasks(args=[10, 0]) == 1

    packed = _joined(await redis_client.hgetall(keys.task(task_id)))
    assert ("\x00O" in packed) == (len(agent_id) >= finished_records.MIN_REFERENCED)
    assert "\x00P" in packed and "\x00a" in packed
    same_ms = before["updated_at_ms"] == before["assigned_at_ms"]  # then one reference
    assert ("\x00X" in packed) != same_ms
    assert "first-agent" in packed  # the first attempt's agent, as it was
    assert await task_record(redis_client, task_id) == before
    again = await scripts.report_task(args=[task_id, agent_id, token, "complete", "{}"])
    assert again[0] == "repeat" and dict(zip(again[3][::2], again[3][1::2], strict=True)) == before


async def test_a_record_packed_before_byte_0_was_used_reads_the_same(
    scripts, registry, redis_client
):
    """A compact record as the packing left it before its references and pieces of JSON
    (byte 0): both readers read it as they read the new one."""
    task_id, _, before = await _finish(
        scripts, registry, redis_client, "complete", "{}", request_id="r-2"
    )
    stored = await redis_client.hgetall(keys.task(task_id))
    packed = _joined(stored)
    created, text = packed.split("\x1e", 1)
    by_char = {
        str(i): finished_records.shortened(t) for i, t in enumerate(finished_records.ESCAPED_TEXT)
    }
    for entry in text.split("\x1e")[:-1]:
        for name, quoted in finished_records.REFERENCED.items():
            if entry[:1] == finished_records.FIELD_CODES[name]:
                by_char[entry[0]] = f'"{entry[1:]}"' if quoted else entry[1:]
    old = created + "\x1e" + re.sub("\x00(.)", lambda m: by_char[m[1]], text)
    assert "\x00" in packed and "\x00" not in old and len(old) > len(packed)
    await redis_client.delete(keys.task(task_id))
    pieces = {f"p{n + 1}": old[i : i + 64] for n, i in enumerate(range(0, len(old), 64))}
    await redis_client.hset(keys.task(task_id), mapping={"state": stored["state"], **pieces})
    assert await task_record(redis_client, task_id) == before
    token = before["fencing_token"]
    again = await scripts.report_task(args=[task_id, "a", token, "complete", "{}"])
    assert again[0] == "repeat" and dict(zip(again[3][::2], again[3][1::2], strict=True)) == before


async def test_a_large_result_stays_a_field_of_its_own(scripts, registry, redis_client):
    result = json.dumps({"blob": "x" * 20_000})
    task_id, _, before = await _finish(scripts, registry, redis_client, "complete", result)
    stored = await redis_client.hgetall(keys.task(task_id))
    assert finished_records.is_compact(stored) and stored["result"] == result
    assert await task_record(redis_client, task_id) == before


async def test_a_long_packed_record_is_one_piece(scripts, redis_client):
    """Too many pieces for a listpack: one piece (the hash is a hashtable anyway)."""
    task_id = (await submit_reply(scripts, request_id="r" * 1000))[1]
    extra = {f"extra_{i}": "v" * 900 for i in range(10)}
    await redis_client.hset(keys.task(task_id), mapping=extra)
    before = await redis_client.hgetall(keys.task(task_id))
    assert await scripts.cancel_task(args=[task_id, "stop", "", ""]) == ["ok"]
    await asyncio.sleep(0.002)
    assert await scripts.compact_finished_tasks(args=[10, 0]) == 1
    stored = await redis_client.hgetall(keys.task(task_id))
    assert {name for name in stored if name.startswith("p")} == {"p1"}
    record = await task_record(redis_client, task_id)
    assert {name: record[name] for name in extra} == extra
    assert record["request_id"] == before["request_id"] and record["state"] == "CANCELLED"


async def test_finished_no_op_tasks_leave_their_compact_hash_and_listpack_archive_entries(
    scripts, registry, redis_client
):
    """What finished no-op tasks leave once compacted, as the bench's are (a 32-digit
    request_id, one capability): the hash in the compact form, a listpack; and, instead of
    entries in four sorted sets that Redis keeps as skiplists (about 150 bytes each), entries
    in the archive's listpacks: chunks of at most 128 in their state's and their agent's
    index, and the list of them in the order they finished. MEMORY USAGE of each part is
    printed; the bench measures the total (bench/task_runs.py)."""
    count = 300
    agent_id = "agent0-00000"
    requirements = Requirements(capabilities=("bench",)).to_json()
    await make_agent(registry, redis_client, agent_id, max_concurrency=count)
    task_ids = []
    for _ in range(count):
        reply = await submit_reply(scripts, request_id=uuid.uuid4().hex, retry=RetryPolicy())
        task_id = reply[1]
        await redis_client.hset(keys.task(task_id), "requirements", requirements)
        await assign(scripts, task_id, agent_id, nonce=uuid.uuid4().hex[:16])
        token = await redis_client.hget(keys.task(task_id), "fencing_token")
        await scripts.report_task(args=[task_id, agent_id, token, "ack", "", "0"])
        await scripts.report_task(args=[task_id, agent_id, token, "complete", "{}", "0"])
        task_ids.append(task_id)
    assert await scripts.compact_finished_tasks(args=[count + 1, 0]) == count

    async def usage(key: str) -> int:
        return int(await redis_client.memory_usage(key, samples=0))

    listed_in = [
        keys.TASK_ALL,
        keys.tasks_in_state("COMPLETED"),
        keys.TASK_FINISHED,
        keys.tasks_by_agent(agent_id),
    ]
    assert not await redis_client.exists(*listed_in)
    assert sorted(await redis_client.lrange(keys.TASK_ARCHIVED, 0, -1)) == sorted(task_ids)
    archive_bytes = await usage(keys.TASK_ARCHIVED)
    for index in (keys.archived_in_state("COMPLETED"), keys.archived_by_agent(agent_id)):
        chunks = await redis_client.zrange(index, 0, -1)
        assert await archived_ids(redis_client, index) == task_ids  # by seq
        for number in chunks:
            chunk = f"{keys.TASK_ARCHIVE_CHUNK_PREFIX}{number}"
            assert await redis_client.zcard(chunk) <= 128
            assert await redis_client.object("encoding", chunk) == "listpack"
            archive_bytes += await usage(chunk)
    records = [await usage(keys.task(t)) for t in task_ids]
    assert {await redis_client.object("encoding", keys.task(t)) for t in task_ids} == {"listpack"}
    request_keys = [k async for k in redis_client.scan_iter(match=f"{keys.TASK_REQUEST_PREFIX}*")]
    request = sum([await usage(k) for k in request_keys]) / count
    print(
        f"record {max(records)} B, idempotency key {request:.0f} B, "
        f"archive entries {archive_bytes / count:.0f} B"
    )


async def test_wire_replies_are_the_same_for_the_compact_and_the_old_form(node, pool, redis_client):
    """GetTask and ListTasks of finished tasks with every field set, read once from the
    compact form, and again after the hash is written back as the scripts before it left
    it (a plain hash of every field)."""
    agent = await pool.start(node.channel, "agent-1", labels={"zone": "eu"})
    request = submit_request(
        data={"x": [1, 2.5, "✓"], "nested": {"k": None}},
        task_type="wire.check",
        priority=task_pb2.TASK_PRIORITY_HIGH,
        requirements=task_pb2.TaskRequirements(
            labels={"zone": "eu"}, min_health_score=0.0, preferred_capabilities=["fast"]
        ),
        max_attempts=4,
        schedule_to_start_timeout=Duration(seconds=90),
        start_to_close_timeout=Duration(seconds=45),
        retry_policy=task_pb2.RetryPolicy(
            initial_backoff=Duration(nanos=10_000_000),
            max_backoff=Duration(seconds=1),
            backoff_multiplier=1.5,
        ),
        request_id="wire-check-1",
        balancing_strategy=task_pb2.BALANCING_STRATEGY_LEAST_CONNECTIONS,
        routing_key="route-7",
    )
    done_id = (await node.tasks.SubmitTask(request)).task.task_id
    first = await agent.next_assignment()
    await agent.fail(first, "flaky", retryable=True)
    second = await agent.next_assignment()
    await agent.acknowledge(second)
    done = await agent.complete(second, answer=42, note="ok ✓")
    assert done.state == task_pb2.TASK_STATE_COMPLETED and len(done.attempts) == 2
    cancelled_id = (await node.tasks.SubmitTask(submit_request(task_type="later"))).task.task_id
    await node.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=cancelled_id, reason="no"))

    redis = redis_client
    task_ids = [done_id, cancelled_id]

    async def compacted() -> bool:  # by the node's reaper
        records = [await redis.hgetall(keys.task(t)) for t in task_ids]
        return all(finished_records.is_compact(r) for r in records)

    await eventually(compacted, what="the reaper compacted both tasks")
    compact = [await get_task(node.tasks, t) for t in task_ids]
    listed = await node.tasks.ListTasks(task_pb2.ListTasksRequest())
    assert compact[0] == done

    for task_id in task_ids:  # the old form: every field in a plain hash
        fields = await task_record(redis, task_id)
        await redis.delete(keys.task(task_id))
        await redis.hset(keys.task(task_id), mapping=fields)
        assert not finished_records.is_compact(await redis.hgetall(keys.task(task_id)))
    assert [await get_task(node.tasks, t) for t in task_ids] == compact
    assert await node.tasks.ListTasks(task_pb2.ListTasksRequest()) == listed


async def test_compaction_archives_oldest_finished_first_and_waits_while_tasks_wait(
    scripts, registry, redis_client
):
    await make_agent(registry, redis_client, "a", max_concurrency=10)
    task_ids = [(await submit_reply(scripts))[1] for _ in range(5)]
    for task_id in task_ids[::-1]:  # finished newest first, a few milliseconds apart
        assert await scripts.cancel_task(args=[task_id, "no", "", ""]) == ["ok"]
        await asyncio.sleep(0.003)
    finished_order = task_ids[::-1]

    assert await scripts.compact_finished_tasks(args=[2, 0]) == 2
    assert await redis_client.lrange(keys.TASK_ARCHIVED, 0, -1) == finished_order[:2]
    assert await redis_client.zrange(keys.TASK_FINISHED, 0, -1) == finished_order[2:]
    assert await redis_client.zrange(keys.TASK_ALL, 0, -1) == task_ids[:3]
    assert await scripts.compact_finished_tasks(args=[10, 0]) == 3
    assert await redis_client.lrange(keys.TASK_ARCHIVED, 0, -1) == finished_order
    assert await archived_ids(redis_client, keys.archived_in_state("CANCELLED")) == task_ids
    assert await redis_client.hgetall(keys.TASK_ARCHIVED_STATES) == {"CANCELLED": "5"}
    assert not await redis_client.exists(
        keys.TASK_FINISHED, keys.TASK_ALL, keys.tasks_in_state("CANCELLED")
    )
    assert await scripts.compact_finished_tasks(args=[10, 0]) == 0
    records = [await redis_client.hgetall(keys.task(t)) for t in task_ids]
    assert all(finished_records.is_compact(r) for r in records)

    # While a task waits in line, compaction waits, unless too many wait for it.
    await submit_reply(scripts)  # queued
    last = (await submit_reply(scripts))[1]
    await scripts.cancel_task(args=[last, "no", "", ""])
    assert await scripts.compact_finished_tasks(args=[10, 1]) == 0
    assert not finished_records.is_compact(await redis_client.hgetall(keys.task(last)))
    assert await scripts.compact_finished_tasks(args=[10, 0]) == 1
    assert finished_records.is_compact(await redis_client.hgetall(keys.task(last)))
    assert (await redis_client.lrange(keys.TASK_ARCHIVED, -1, -1)) == [last]


async def test_a_redis_from_before_the_archive_is_archived_as_it_is(
    scripts, registry, redis_client
):
    """Finished tasks as the versions before the archive left them: still in the sorted
    sets, some compacted in place (``tasks:compacted`` the place reached), some not. The
    compaction archives both, reading seq and agent of a compact one from its pieces."""
    await make_agent(registry, redis_client, "a", max_concurrency=5)
    packed = (await submit_reply(scripts))[1]
    await assign(scripts, packed, "a", nonce="n1")
    token = await redis_client.hget(keys.task(packed), "fencing_token")
    await scripts.report_task(args=[packed, "a", token, "complete", "{}", "0"])
    record = await task_record(redis_client, packed)
    assert await scripts.compact_finished_tasks(args=[10, 0]) == 1
    # Back to the old layout: the compact hash stays, its entries return to the sorted sets.
    seq, ended = int(record["seq"]), int(record["updated_at_ms"])
    await redis_client.delete(
        keys.TASK_ARCHIVED,
        keys.TASK_ARCHIVED_STATES,
        keys.archived_in_state("COMPLETED"),
        keys.archived_by_agent("a"),
        *[k async for k in redis_client.scan_iter(match=f"{keys.TASK_ARCHIVE_CHUNK_PREFIX}*")],
    )
    await redis_client.zadd(keys.TASK_ALL, {packed: seq})
    await redis_client.zadd(keys.tasks_in_state("COMPLETED"), {packed: seq})
    await redis_client.zadd(keys.tasks_by_agent("a"), {packed: seq})
    await redis_client.zadd(keys.TASK_FINISHED, {packed: ended})
    await redis_client.set("tasks:compacted", f"{ended} {packed}")
    plain = (await submit_reply(scripts))[1]
    await scripts.cancel_task(args=[plain, "no", "", ""])

    assert await scripts.compact_finished_tasks(args=[10, 0]) == 2
    assert await redis_client.lrange(keys.TASK_ARCHIVED, 0, -1) == [packed, plain]
    assert await archived_ids(redis_client, keys.archived_by_agent("a")) == [packed]
    assert await archived_ids(redis_client, keys.archived_in_state("COMPLETED")) == [packed]
    assert await archived_ids(redis_client, keys.archived_in_state("CANCELLED")) == [plain]
    assert await task_record(redis_client, packed) == record
