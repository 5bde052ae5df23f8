"""WatchTask is event-driven: idle watchers cost no Redis commands, and a watcher still sees
what happened while the node's pub/sub connection was down."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import redis.asyncio as aioredis

from agent_harness import eventually, submit_request
from aitbc.coordinator.v1 import task_pb2
from coordinator.delivery.events import EventHub
from coordinator.storage import keys

PENDING = task_pb2.TASK_STATE_PENDING
CANCELLED = task_pb2.TASK_STATE_CANCELLED

WATCHERS = 300
WINDOW_S = 3.0


async def commands_in(client: aioredis.Redis, seconds: float) -> int:
    """Commands Redis processed over ``seconds`` (the two INFO calls included)."""
    before = (await client.info("stats"))["total_commands_processed"]
    await asyncio.sleep(seconds)
    return int((await client.info("stats"))["total_commands_processed"]) - int(before)


@contextlib.asynccontextmanager
async def watching(
    tasks: object, task_ids: list[str]
) -> AsyncIterator[list[grpc.aio.UnaryStreamCall[object, task_pb2.WatchTaskResponse]]]:
    """WatchTask streams on ``task_ids``, each past its first message; cancelled at the end."""
    calls = [tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=t)) for t in task_ids]  # type: ignore[attr-defined]
    try:
        firsts = await asyncio.wait_for(asyncio.gather(*(c.read() for c in calls)), 30)
        assert all(f.task.state == PENDING for f in firsts)
        yield calls
    finally:
        for call in calls:
            call.cancel()


async def test_idle_watchers_cost_no_redis_commands(start_node, own_redis):
    """Each watched task used to be read back every second: 300 watchers were about 300
    commands a second. Now a task that does not change is never read again (a safety
    re-read comes only after about a minute)."""
    node = await start_node(
        redis_url=own_redis.url(1),
        # The node's own timers are Redis commands too: slow them to keep the baseline small.
        sweep_interval_s=5.0,
        task_timer_interval_s=5.0,
        health_check_interval_s=1.0,
    )
    client = aioredis.Redis.from_url(own_redis.url(1), decode_responses=True)
    try:
        batch = task_pb2.SubmitTasksRequest(tasks=[submit_request() for _ in range(WATCHERS)])
        task_ids = [r.task_id for r in (await node.tasks.SubmitTasks(batch)).results]
        await asyncio.sleep(0.5)  # the dispatch passes the submit asked for
        baseline = await commands_in(client, WINDOW_S)
        async with watching(node.tasks, task_ids):
            await asyncio.sleep(0.5)  # the last subscriptions settle
            watched = await commands_in(client, WINDOW_S)
            subscribed = await client.pubsub_numsub(*(keys.task_channel(t) for t in task_ids))
            assert all(count == 1 for _, count in subscribed), "one subscription per task"
        extra = watched - baseline
        assert extra < WATCHERS * WINDOW_S / 10, (
            f"{WATCHERS} idle watchers cost {extra} Redis commands in {WINDOW_S} s "
            f"(baseline {baseline})"
        )

        async def unsubscribed() -> bool:
            return not await client.pubsub_channels(keys.TASK_CHANNEL_PREFIX + "*")

        await eventually(unsubscribed, timeout_s=5, what="the watchers' channels to go")
    finally:
        await client.aclose()


async def test_a_watcher_sees_what_happened_while_pubsub_was_down(node, redis_client):
    """The transition is published while the node's pub/sub connection is gone: the watcher
    hears nothing, yet reads the task again once the hub is subscribed again."""
    task_id = (await node.tasks.SubmitTask(submit_request())).task.task_id
    call = node.tasks.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id))
    try:
        assert (await asyncio.wait_for(call.read(), 5)).task.state == PENDING
        killed = await redis_client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        assert killed >= 1
        await node.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task_id))
        # Far sooner than the safety re-read (about a minute): the reconnect woke it.
        assert (await asyncio.wait_for(call.read(), 5)).task.state == CANCELLED
    finally:
        call.cancel()


async def test_watchers_of_one_task_share_its_subscription(node, redis_client, pool):
    task_id = (await node.tasks.SubmitTask(submit_request())).task.task_id
    channel = keys.task_channel(task_id)
    async with watching(node.tasks, [task_id] * 20) as calls:
        assert await redis_client.pubsub_numsub(channel) == [(channel, 1)]
        await node.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task_id))
        states = await asyncio.gather(*(asyncio.wait_for(c.read(), 5) for c in calls))
        assert {s.task.state for s in states} == {CANCELLED}


async def hold_watch(hub: EventHub, task_id: str, release: asyncio.Event) -> None:
    async with hub.watch_task(task_id):
        await release.wait()


async def test_the_hub_stops_at_once_while_a_burst_of_watchers_unsubscribes(redis_client):
    # 300 watchers leave together and the node stops while their UNSUBSCRIBE is being
    # sent: a cancellation delivered inside redis-py's send can be lost there, which left
    # the flusher waiting for ever and the node's shutdown hanging (the watchers bench
    # scenario's node was SIGKILLed one run in three).
    for round_ in range(3):
        hub = EventHub(redis_client, "hub-node", lambda _: None, lambda: None)
        await hub.start()
        release = asyncio.Event()
        holders = [
            asyncio.create_task(hold_watch(hub, f"burst-{round_}-{i}", release)) for i in range(300)
        ]
        await asyncio.sleep(0.3)  # each holder is watching; their SUBSCRIBE went out
        assert hub.watched_channels == 300
        release.set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the UNSUBSCRIBE burst is under way
        await asyncio.wait_for(hub.stop(), timeout=3)
        await asyncio.gather(*holders)
