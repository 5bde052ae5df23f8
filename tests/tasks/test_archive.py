"""The archive of finished tasks (lua/archive_lib.lua), against a real Redis: whatever order
tasks finish in, every archived task is in its indexes' chunks, by seq, in listpacks that
never overflow; the retention forgets the oldest finished first across the archive and the
tasks not archived yet; and ListTasks replies, pages and page tokens are the same before,
while and after tasks are archived."""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from aitbc.coordinator.v1 import task_pb2
from coordinator.storage import keys
from coordinator.tasks.models import Requirements
from script_support import (
    archive_chunks,
    assign,
    failure,
    make_agent,
    report,
    submit_reply,
    task_record,
    tasks_in_state,
)

CHUNK_ENTRIES = 128
"""Redis' default zset-max-listpack-entries, the most a chunk holds."""


async def checked_index(redis, index: str) -> list[str]:
    """The task ids of an archive's index by seq, once its invariants are checked: chunks
    of 1 to CHUNK_ENTRIES entries, listpacks, each holding only seqs of its own range."""
    chunks = await archive_chunks(redis, index)
    starts = [start for _, start, _ in chunks] + [math.inf]
    for (chunk, start, entries), upto in zip(chunks, starts[1:], strict=True):
        assert 0 < len(entries) <= CHUNK_ENTRIES, chunk
        assert await redis.object("encoding", chunk) == "listpack", chunk
        assert all(start <= seq < upto for _, seq in entries), chunk
    return [task_id for _, _, entries in chunks for task_id, _ in entries]


async def archive_all(scripts) -> None:
    while await scripts.compact_finished_tasks(args=[20, 0]):
        pass


@pytest.mark.parametrize("spread", [0, 400])
async def test_tasks_finishing_in_any_order_are_archived_by_seq_in_listpack_chunks(
    scripts, registry, redis_client, spread
):
    """800 tasks on 4 agents end (cancelled) in their order, or far from it (each up to
    ``spread`` places later), archived 20 at a time as they end: the state's index is dense
    (chunks cut by range), each agent's sparse (cut by count, after its last chunk or
    within); then the retention takes them oldest finished first."""
    count = 800
    rng = random.Random(18)
    agents = [f"agent-{i}" for i in range(4)]
    for agent_id in agents:
        await make_agent(registry, redis_client, agent_id, max_concurrency=count)
    task_ids = [(await submit_reply(scripts))[1] for _ in range(count)]
    agent_of = {t: rng.choice(agents) for t in task_ids}
    for task_id in task_ids:
        assert (await assign(scripts, task_id, agent_of[task_id]))[0] == "ok"
    ending = sorted(task_ids, key=lambda t: task_ids.index(t) + rng.uniform(0, spread))
    for n, task_id in enumerate(ending):
        assert await scripts.cancel_task(args=[task_id, "done", "", ""]) == ["ok"]
        if n % 30 == 29:
            await scripts.compact_finished_tasks(args=[20, 0])
    await archive_all(scripts)

    state_index = keys.archived_in_state("CANCELLED")
    assert await checked_index(redis_client, state_index) == task_ids
    for agent_id in agents:
        mine = [t for t in task_ids if agent_of[t] == agent_id]
        assert await checked_index(redis_client, keys.archived_by_agent(agent_id)) == mine
    # The list holds them in the order they ended (within a millisecond, in any order).
    order = await redis_client.lrange(keys.TASK_ARCHIVED, 0, -1)
    ended = [int((await task_record(redis_client, t))["updated_at_ms"]) for t in order]
    assert sorted(order) == sorted(task_ids) and ended == sorted(ended)
    assert not spread or order[:50] != task_ids[:50], "ended in another order than created"
    assert await tasks_in_state(redis_client, "CANCELLED") == count
    assert len(await redis_client.zrange(state_index, 0, -1)) <= 2 * count / CHUNK_ENTRIES

    # Read back by seq from any bound (the bound included), as ListTasks does, 50 a time.
    newest_first: list[str] = []
    high: float | str = "+inf"
    while True:
        reply = await scripts.list_index_entries(args=[high, 50, 0, state_index])
        entries = [(float(s), t) for t, s in zip(reply[::2], reply[1::2], strict=True)]
        assert entries == sorted(entries, reverse=True) and len(entries) <= 50
        entries = [e for e in entries if not newest_first or e[0] < float(high)]
        if not entries:
            break
        newest_first += [t for _, t in entries]
        high = entries[-1][0]
    assert newest_first == task_ids[::-1]

    # The retention, by count, then by time: the oldest finished go first, and the chunks
    # stay whole.
    for keep, bound_ms in ((650, 0), (333, 0), (40, 0), (0, ended[-1])):
        while await scripts.forget_finished_tasks(args=[bound_ms, 100, keep]):
            pass
        kept = order[len(order) - keep :] if keep else []
        assert await redis_client.lrange(keys.TASK_ARCHIVED, 0, -1) == kept
        by_seq = [t for t in task_ids if t in set(kept)]
        assert await checked_index(redis_client, state_index) == by_seq
        for agent_id in agents:
            mine = [t for t in by_seq if agent_of[t] == agent_id]
            assert await checked_index(redis_client, keys.archived_by_agent(agent_id)) == mine
        assert await tasks_in_state(redis_client, "CANCELLED") == keep
        assert sum([await redis_client.exists(keys.task(t)) for t in task_ids]) == keep
    assert await redis_client.keys("tasks:archive*") == [keys.TASK_ARCHIVE_CHUNKS]


async def test_a_forgotten_task_takes_its_idempotency_record_with_it(scripts, redis_client):
    """While the window lasts, a request_id's record outlived its task once the retention
    forgot it: a submit found no task and created one. Now the record goes with the task
    (the same submit creates a task), unless it names a newer task already."""
    archived, waiting, reused = [
        (await submit_reply(scripts, request_id=f"r-{n}", submitted_by=by))[1]
        for n, by in ((1, ""), (2, "alice"), (3, ""))
    ]
    for task_id in (archived, waiting, reused):
        await scripts.cancel_task(args=[task_id, "done", "", ""])
    await scripts.compact_finished_tasks(args=[1, 0])  # the first archived, the others not
    newer = (await submit_reply(scripts))[1]
    await redis_client.set(keys.task_request("r-3"), newer)  # as when reused after the window
    assert await scripts.forget_finished_tasks(args=[2**50, 10, 0]) == 3

    assert await redis_client.get(keys.task_request("r-1")) is None
    assert await redis_client.get(keys.task_request("r-2", "alice")) is None
    assert await redis_client.get(keys.task_request("r-3")) == newer
    again = await submit_reply(scripts, request_id="r-1")
    assert again[0] == 1 and again[1] != archived  # a new task, as before


async def test_the_retention_takes_the_oldest_finished_first_archived_or_not(
    scripts, registry, redis_client
):
    await make_agent(registry, redis_client, "a", max_concurrency=10)
    task_ids = [(await submit_reply(scripts))[1] for _ in range(10)]
    for task_id in task_ids:
        await scripts.cancel_task(args=[task_id, "done", "", ""])
        await asyncio.sleep(0.002)  # each its own end
    ended = [int((await task_record(redis_client, t))["updated_at_ms"]) for t in task_ids]
    await scripts.compact_finished_tasks(args=[6, 0])  # the 6 oldest archived, 4 not yet

    async def kept() -> list[str]:
        return [t for t in task_ids if await redis_client.exists(keys.task(t))]

    assert await scripts.forget_finished_tasks(args=[0, 100, 8]) == 2
    assert await kept() == task_ids[2:]
    assert await scripts.forget_finished_tasks(args=[0, 100, 3]) == 5  # 4 archived, 1 not
    assert await kept() == task_ids[7:]
    assert await redis_client.llen(keys.TASK_ARCHIVED) == 0
    # The time bound: those that ended at or before it (bound ms are ends, equal ends go
    # together), whichever side of the archive they are on.
    await scripts.compact_finished_tasks(args=[1, 0])
    assert await scripts.forget_finished_tasks(args=[ended[8], 100, 0]) == 2
    assert await kept() == task_ids[9:]
    assert await scripts.forget_finished_tasks(args=[ended[9], 100, 0]) == 1
    assert await kept() == [] and not await redis_client.exists(keys.TASK_FINISHED)


@pytest.fixture
async def mixed(scripts, registry, redis_client) -> list[str]:
    """Tasks in every state, on two agents, of several priorities, more than a chunk of
    some: COMPLETED, FAILED and dead-lettered, CANCELLED, EXPIRED, PENDING, ASSIGNED,
    RUNNING. Their ids, by seq."""
    rng = random.Random(5)
    for agent_id in ("a1", "a2"):
        await make_agent(registry, redis_client, agent_id, max_concurrency=1000)
    priorities = ["LOW", "NORMAL", "HIGH", "URGENT"]
    task_ids = []
    for n in range(360):
        kind = rng.choice(["complete"] * 6 + ["fail", "cancel", "expire", "pend", "hold"])
        options = {"schedule_to_start_ms": 1} if kind == "expire" else {}
        reply = await submit_reply(scripts, priority=rng.choice(priorities), **options)
        task_id = reply[1]
        task_ids.append(task_id)
        await redis_client.hset(keys.task(task_id), "requirements", Requirements().to_json())
        if kind in ("complete", "fail", "hold"):
            agent_id = "a1" if n % 3 else "a2"
            await assign(scripts, task_id, agent_id, nonce=f"n{n}")
            token = await redis_client.hget(keys.task(task_id), "fencing_token")
            if kind != "hold" or n % 2:
                await report(scripts, task_id, agent_id, token, "ack")
            if kind == "complete":
                await report(scripts, task_id, agent_id, token, "complete", f'{{"n":{n}}}')
            elif kind == "fail":
                await report(scripts, task_id, agent_id, token, "fail", failure(retryable=False))
        elif kind == "cancel":
            await scripts.cancel_task(args=[task_id, "no", "", ""])
    await asyncio.sleep(0.002)
    await scripts.expire_tasks(args=[1000])
    # The agents' node is gone: no dispatch pass assigns the PENDING tasks meanwhile.
    await redis_client.delete(keys.node_presence("node-1"))
    return task_ids


FILTERS = [
    {},
    *({"states": [state]} for state in range(1, 8)),
    {"states": [task_pb2.TASK_STATE_COMPLETED, task_pb2.TASK_STATE_FAILED]},
    {"states": [task_pb2.TASK_STATE_PENDING, task_pb2.TASK_STATE_CANCELLED]},
    {"agent_id": "a1"},
    {"agent_id": "a2", "states": [task_pb2.TASK_STATE_COMPLETED]},
    {"priorities": [task_pb2.TASK_PRIORITY_HIGH]},
    {"priorities": [task_pb2.TASK_PRIORITY_LOW], "states": [task_pb2.TASK_STATE_EXPIRED]},
    {"dead_letter": True},
    {"agent_id": "nobody"},
]


async def pages(
    node, page_size: int, token: str = "", **filters
) -> list[task_pb2.ListTasksResponse]:
    replies = []
    while True:
        request = task_pb2.ListTasksRequest(page_size=page_size, page_token=token, **filters)
        replies.append(await node.tasks.ListTasks(request))
        token = replies[-1].next_page_token
        if not token:
            return replies


async def test_list_tasks_replies_are_the_same_before_while_and_after_tasks_are_archived(
    start_node, scripts, mixed, redis_client
):
    node = await start_node(task_timer_interval_s=3600)  # compaction only as this test calls it
    before = {
        (i, size): await pages(node, size, **f)
        for i, f in enumerate(FILTERS)
        for size in (40, 1000)
    }
    listed = [t.task_id for reply in before[(0, 1000)] for t in reply.tasks]
    assert listed == mixed[::-1]
    assert all(before[(i, 1000)][0].tasks for i in range(len(FILTERS) - 1)), "every filter finds"
    # Tokens handed out before: their listings go on after the tasks they point into moved.
    first_pages = {
        i: await node.tasks.ListTasks(task_pb2.ListTasksRequest(page_size=50, **f))
        for i, f in enumerate(FILTERS)
    }

    # Listings while tasks are archived between their calls, and after.
    async def archive_some() -> None:
        for _ in range(30):
            assert await scripts.compact_finished_tasks(args=[3, 0]) == 3
            await asyncio.sleep(0)

    listed_during = await asyncio.gather(
        archive_some(), *(pages(node, size, **FILTERS[i]) for i, size in before)
    )
    assert await redis_client.llen(keys.TASK_ARCHIVED) == 90
    assert await redis_client.zcard(keys.TASK_FINISHED) > 0  # some archived, some not
    for (i, size), replies in zip(before, listed_during[1:], strict=True):
        assert replies == before[(i, size)], (FILTERS[i], size)
    for (i, size), replies in before.items():
        assert await pages(node, size, **FILTERS[i]) == replies, (FILTERS[i], size)

    await archive_all(scripts)
    assert not await redis_client.exists(keys.TASK_FINISHED)
    for (i, size), replies in before.items():
        assert await pages(node, size, **FILTERS[i]) == replies, (FILTERS[i], size)
    for i, first in first_pages.items():
        token = first.next_page_token
        rest = await pages(node, 1000, token, **FILTERS[i]) if token else []
        ids = [t.task_id for reply in [first, *rest] for t in reply.tasks]
        assert ids == [t.task_id for reply in before[(i, 1000)] for t in reply.tasks]
