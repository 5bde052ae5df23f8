"""Helpers for the tests that run the task and dispatch Lua scripts on their own against a
real Redis: agents made through the real registry, submits, assignments, reports, dumps."""

from __future__ import annotations

import json
import uuid

from coordinator.agents.records import AgentRegistration
from coordinator.auth.quotas import SubmitQuota
from coordinator.storage import finished_records, key_tags, keys
from coordinator.storage.scripts import TaskScripts
from coordinator.tasks.models import RetryPolicy
from coordinator.tasks.script_calls import NO_ASSIGNMENT

NODE = "node-1"
LIVENESS_MS = 30_000
LEASE_MS = 30_000
START_MS = 60_000
RETRY = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=2.5, backoff_multiplier=3.0)
NO_QUOTA = SubmitQuota()


# --- helpers ---------------------------------------------------------------------------------


async def subscribe(pubsub, *channels: str) -> None:
    """Subscribe as the node does: SSUBSCRIBE when the key names carry a Redis Cluster hash
    tag (the scripts then SPUBLISH), SUBSCRIBE otherwise."""
    if key_tags.current_tag():
        await pubsub.ssubscribe(*channels)
    else:
        await pubsub.subscribe(*channels)


async def dump(redis) -> dict[str, tuple[str, object]]:
    """Every key of the test database with its type and value."""
    state: dict[str, tuple[str, object]] = {}
    for key in sorted(await redis.keys("*")):
        kind = await redis.type(key)
        value: object
        if kind == "string":
            value = await redis.get(key)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "set":
            value = sorted(await redis.smembers(key))
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        else:
            raise AssertionError(f"{key}: unexpected type {kind}")
        state[key] = (kind, value)
    return state


async def submit(scripts, **options):
    """Run submit_task with the fields TaskStore.submit writes; returns (created, task_id)."""
    reply = await submit_reply(scripts, **options)
    return reply[0], reply[1]


async def submit_reply(
    scripts,
    *,
    priority="NORMAL",
    requirements_class="c0",
    request_id="",
    window_ms=60_000,
    schedule_to_start_ms=START_MS,
    start_to_close_ms=LEASE_MS,
    max_attempts=3,
    retry=RETRY,
    task_id=None,
    assignment=NO_ASSIGNMENT,
    submitted_by="",
    quota=NO_QUOTA,
):
    """Run submit_task with the fields TaskStore.submit writes, and ``assignment`` (ARGV[7..11],
    for an assignment at submit), ``submitted_by`` and its ``quota`` (ARGV[12..15]); returns
    its reply."""
    fields = {
        "task_type": "test",
        "task_data": '{"n":1}',
        "requirements": "{}",
        "max_attempts": str(max_attempts),
        "start_to_close_ms": str(start_to_close_ms),
        "retry": retry.to_json(),
        "strategy": "",
        "routing_key": "",
    }
    return await scripts.submit_task(
        args=[
            task_id or uuid.uuid4().hex,
            request_id,
            window_ms,
            priority,
            requirements_class,
            schedule_to_start_ms,
            *assignment,
            *quota.script_args(submitted_by),
            *(item for pair in fields.items() for item in pair),
        ]
    )


async def new_task(scripts, **options) -> str:
    return (await submit(scripts, **options))[1]


async def make_agent(registry, redis, agent_id, *, max_concurrency=1, node=NODE, streaming=True):
    """A registered agent; with ``streaming``, its stream is open on ``node``, which is alive."""
    await registry.register(
        AgentRegistration(agent_id=agent_id, agent_type="worker", max_concurrency=max_concurrency)
    )
    if streaming:
        await redis.set(keys.node_presence(node), "1")
        # As a node opening the agent's stream does (which keeps agents:available exact).
        await TaskScripts(redis).connect_stream(args=[agent_id, node, f"session-{agent_id}"])


async def assign(scripts, task_id, agent_id, nonce="nonce", liveness_ms=LIVENESS_MS, node=NODE):
    return await scripts.assign_task(args=[task_id, agent_id, nonce, liveness_ms, node])


async def report(scripts, task_id, agent_id, token, action, payload=""):
    """The script's verdict; a complete or fail also returns the task, checked here."""
    reply = await scripts.report_task(args=[task_id, agent_id, token, action, payload])
    if action in ("complete", "fail") and reply[0] in ("ok", "repeat"):
        task = dict(zip(reply[3][::2], reply[3][1::2], strict=True))
        assert task["task_id"] == task_id and task["state"] == reply[1]
        return reply[:3]
    return reply


def failure(message="boom", retryable=True) -> str:
    return json.dumps({"message": message, "type": "TestError", "retryable": retryable})


async def task_record(redis, task_id) -> dict[str, str]:
    """The task's fields, whichever its form (a finished task's is compact)."""
    return finished_records.expand(await redis.hgetall(keys.task(task_id)), task_id)


async def active_tasks(redis, agent_id) -> int:
    return int(await redis.hget(keys.agent(agent_id), "active_tasks"))


async def assigned(scripts, registry, redis, agent_id="a", **task_options) -> tuple[str, str]:
    """A task assigned to a (new) streaming agent; returns (task_id, fencing token)."""
    task_id = await new_task(scripts, **task_options)
    await make_agent(registry, redis, agent_id)
    assert (await assign(scripts, task_id, agent_id))[:2] == ["ok", 1]
    return task_id, await redis.hget(keys.task(task_id), "fencing_token")


def queued_keys(priority="NORMAL", requirements_class="c0") -> list[str]:
    return [keys.task_queue(priority), keys.task_queue(priority, requirements_class)]


# --- counts and the archive -------------------------------------------------------------


async def tasks_in_state(redis, state: str) -> int:
    """How many tasks are in ``state``, archived or not (``tasks:state:{STATE}`` holds only
    those not archived), read in one MULTI: a task archived meanwhile counts once."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zcard(keys.tasks_in_state(state))
        pipe.hget(keys.TASK_ARCHIVED_STATES, state)
        listed, archived = await pipe.execute()
    return int(listed) + int(archived or 0)


async def finished_kept(redis) -> int:
    """How many finished tasks Redis keeps: archived, or waiting for the archive."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zcard(keys.TASK_FINISHED)
        pipe.llen(keys.TASK_ARCHIVED)
        waiting, archived = await pipe.execute()
    return int(waiting) + int(archived)


async def archive_chunks(redis, index: str) -> list[tuple[str, float, list[tuple[str, float]]]]:
    """The chunks of one of the archive's indexes, lowest first: each chunk's key, its
    score (where its range starts) and its entries (task_id, seq), lowest first."""
    chunks = []
    for number, start in await redis.zrange(index, 0, -1, withscores=True):
        chunk = f"{keys.TASK_ARCHIVE_CHUNK_PREFIX}{number}"
        chunks.append((chunk, start, await redis.zrange(chunk, 0, -1, withscores=True)))
    return chunks


async def archived_ids(redis, index: str) -> list[str]:
    """The task ids in one of the archive's indexes, by seq."""
    return [task_id for *_, entries in await archive_chunks(redis, index) for task_id, _ in entries]


# --- every script ----------------------------------------------------------------------------
