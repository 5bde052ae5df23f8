"""The node's one pub/sub connection: messages for the assignment streams this node holds,
and task transitions for WatchTask. (The dispatcher needs no messages: a node that queues a
task or frees a slot asks its own dispatcher, and the dispatch turn reaches the node that
is passing.)

Pub/sub carries nudges and copies, never the only copy of any state: receivers also read
Redis on a timer, so a message lost while the connection was down delays work but loses
nothing. After a reconnect the hub tells its listeners, which resynchronise at
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from coordinator import keys
from coordinator.api.error_mapping import redis_unavailable

log = logging.getLogger(__name__)

RECONNECT_DELAY_S = 0.5


class EventHub:
    """Subscribes once per node and fans messages out to local listeners."""

    def __init__(
        self,
        redis: Redis,
        node_id: str,
        on_node_message: Callable[[dict[str, Any]], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        self._redis = redis
        self._node_channel = keys.node_channel(node_id)
        self._on_node_message = on_node_message
        self._on_reconnect = on_reconnect
        self._pubsub: PubSub | None = None
        self._watchers: dict[str, set[asyncio.Queue[str]]] = defaultdict(set)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe and start listening."""
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="event-hub")

    async def stop(self) -> None:
        """Stop listening and close the connection (idempotent)."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._close()

    @contextlib.asynccontextmanager
    async def watch_task(self, task_id: str) -> AsyncIterator[asyncio.Queue[str]]:
        """A queue receiving the new state's name at each transition of one task."""
        channel = keys.task_channel(task_id)
        queue: asyncio.Queue[str] = asyncio.Queue()
        first = not self._watchers[channel]
        self._watchers[channel].add(queue)
        try:
            if first and self._pubsub is not None:
                with contextlib.suppress(Exception):  # the run loop resubscribes after errors
                    await self._pubsub.subscribe(channel)
            yield queue
        finally:
            self._watchers[channel].discard(queue)
            if not self._watchers[channel]:
                del self._watchers[channel]
                if self._pubsub is not None:
                    with contextlib.suppress(Exception):
                        await self._pubsub.unsubscribe(channel)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not redis_unavailable(exc):
                    log.exception("event hub failed; reconnecting")
                else:
                    log.warning("event hub lost Redis (%r); reconnecting", exc)
            await self._close()
            if self._stopping.is_set():
                return
            await asyncio.sleep(RECONNECT_DELAY_S)

    async def _listen(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._pubsub = pubsub
        await pubsub.subscribe(self._node_channel, *self._watchers)
        # Anything published while we were not subscribed was missed: resynchronise.
        self._on_reconnect()
        for channel in self._watchers:
            self._wake_watchers(channel, "")
        while not self._stopping.is_set():
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            channel = message["channel"]
            data = message["data"]
            if channel == self._node_channel:
                try:
                    self._on_node_message(json.loads(data))
                except Exception:
                    log.exception("bad node message %r", data)
            else:
                self._wake_watchers(channel, data)

    def _wake_watchers(self, channel: str, state: str) -> None:
        for queue in self._watchers.get(channel, ()):
            queue.put_nowait(state)

    async def _close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
