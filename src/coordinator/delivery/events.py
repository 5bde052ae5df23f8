"""The node's one pub/sub connection: messages for the assignment streams this node holds,
and task transitions for WatchTask. (The dispatcher needs no messages: a node that queues a
task or frees a slot asks its own dispatcher, and the dispatch turn reaches the node that
is passing.)

Pub/sub carries nudges and copies, never the only copy of any state: receivers also read
Redis on a timer, so a message lost while the connection was down delays work but loses
nothing. After a reconnect the hub tells its listeners, which resynchronise at
once.

A watched task costs nothing while it does not change: one SUBSCRIBE when its first local
watcher comes (the watchers that come together share one command), one UNSUBSCRIBE when the
last goes, and no reads. Redis delivers every message on a live connection, in order, so
only a reconnect can lose one: the hub then wakes each watcher once Redis confirmed its
channel again, and the watcher reads its task. A new watcher likewise waits for that
confirmation before its first read, so that no transition falls between the two.

Redis Cluster mode (``sharded``): the channels carry the node's hash tag and the scripts
SPUBLISH on them, so the hub SSUBSCRIBEs on the owner of that slot. When the slot moves,
Redis unsubscribes the hub from its channels (an SUNSUBSCRIBE of the node channel, which the
hub never asks for): the hub reconnects, to the new owner, and resynchronises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError

from coordinator.delivery.messages import NodeMessage, parse_node_message
from coordinator.storage import keys
from coordinator.storage.redis_errors import redis_unavailable

log = logging.getLogger(__name__)

RECONNECT_DELAY_S = 0.5

FLUSHER_STOP_TIMEOUT_S = 1.0
"""How long a closing connection waits for its subscription flusher to end."""


SUBSCRIBE_WAIT_S = 2.0
"""How long a new watch waits for Redis to confirm its channel before it reads its task
anyway (the hub is reconnecting: it wakes the watch when the channel is confirmed)."""


class _Watched:
    """The local watchers of one task channel."""

    __slots__ = ("queues", "subscribed")

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[str]] = set()
        self.subscribed = asyncio.Event()
        """Set once Redis confirmed the channel on the current connection."""


class EventHub:
    """Subscribes once per node and fans messages out to local listeners."""

    def __init__(
        self,
        redis: Redis,
        node_id: str,
        on_node_message: Callable[[NodeMessage], None],
        on_reconnect: Callable[[], None],
        sharded: bool = False,
    ) -> None:
        self._redis = redis
        self._sharded = sharded
        self._node_channel = keys.node_channel(node_id)
        self._on_node_message = on_node_message
        self._on_reconnect = on_reconnect
        self._pubsub: PubSub | None = None
        self._watched: dict[str, _Watched] = {}
        self._changed: set[str] = set()
        """Task channels whose first watcher came or last watcher went since the last flush."""
        self._flush_wanted = asyncio.Event()
        self._sent: set[str] = set()
        """Task channels whose last command on the current connection was SUBSCRIBE."""
        self._unconfirmed: Counter[str] = Counter()
        """SUBSCRIBE replies still to come on the current connection, per channel."""
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

    @property
    def watched_channels(self) -> int:
        """How many task channels this node's watchers need."""
        return len(self._watched)

    @contextlib.asynccontextmanager
    async def watch_task(self, task_id: str) -> AsyncIterator[asyncio.Queue[str]]:
        """A queue receiving the new state's name at each transition of one task, and ""
        when one may have been missed (the connection was lost). The task's state read
        after entering is at least as new as anything the queue will be told."""
        channel = keys.task_channel(task_id)
        watched = self._watched.get(channel)
        if watched is None:
            watched = self._watched[channel] = _Watched()
            self._changed_channel(channel)
        queue: asyncio.Queue[str] = asyncio.Queue()
        watched.queues.add(queue)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watched.subscribed.wait(), SUBSCRIBE_WAIT_S)
            # The caller reads the task next: what was said before is in that read.
            while not queue.empty():
                queue.get_nowait()
            yield queue
        finally:
            watched.queues.discard(queue)
            if not watched.queues and self._watched.get(channel) is watched:
                del self._watched[channel]
                self._changed_channel(channel)

    def _changed_channel(self, channel: str) -> None:
        self._changed.add(channel)
        self._flush_wanted.set()

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
        pubsub = self._redis.pubsub()
        self._pubsub = pubsub
        # Every channel needed now goes in this one SUBSCRIBE; later changes are flushed.
        self._changed.clear()
        self._sent = set(self._watched)
        self._unconfirmed = Counter(self._sent)
        await self._subscribe(pubsub, self._node_channel, *self._sent)
        # Anything published while we were not subscribed was missed: resynchronise. (The
        # watchers are woken when Redis confirms their channels, see _confirmed.)
        self._on_reconnect()
        closing = asyncio.Event()
        flusher = asyncio.create_task(
            self._flush_subscriptions(pubsub, closing), name="event-hub-flush"
        )
        try:
            while not self._stopping.is_set():
                if flusher.done():
                    flusher.result()  # its error ends this connection: the loop reconnects
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    self._handle(message)
        finally:
            # A cancellation delivered while redis-py sends a command can be lost inside it;
            # the flusher would then wait for the next change for ever (and hold up stop()).
            # So it is also told, and woken, and not waited for past a bound.
            closing.set()
            self._flush_wanted.set()
            flusher.cancel()
            await asyncio.wait({flusher}, timeout=FLUSHER_STOP_TIMEOUT_S)

    async def _subscribe(self, pubsub: PubSub, *channels: str) -> None:
        if self._sharded:
            await pubsub.ssubscribe(*channels)
        else:
            await pubsub.subscribe(*channels)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        channel = message["channel"]
        if kind in ("subscribe", "ssubscribe"):
            self._confirmed(channel)
        elif kind == "sunsubscribe" and channel == self._node_channel:
            raise RedisConnectionError("the Redis Cluster moved the slot of this node's channels")
        elif kind not in ("message", "smessage"):
            return
        elif channel == self._node_channel:
            data = message["data"]
            try:
                node_message = parse_node_message(data)
                if node_message is not None:
                    self._on_node_message(node_message)
            except Exception:
                log.exception("bad node message %r", data)
        else:
            self._wake_watchers(channel, message["data"])

    async def _flush_subscriptions(self, pubsub: PubSub, closing: asyncio.Event) -> None:
        """Send the SUBSCRIBE and UNSUBSCRIBE that the watchers' comings and goings need,
        those that came together in one command each, until ``closing`` is set."""
        while not closing.is_set():
            await self._flush_wanted.wait()
            await asyncio.sleep(0)  # the other watchers opening in this burst join in
            if closing.is_set():
                return
            self._flush_wanted.clear()
            changed, self._changed = self._changed, set()
            subscribe = [c for c in changed if c in self._watched and c not in self._sent]
            unsubscribe = [c for c in changed if c not in self._watched and c in self._sent]
            for channel in changed:
                # Watched again before its UNSUBSCRIBE went out: still subscribed.
                if channel in self._watched and channel in self._sent:
                    if not self._unconfirmed[channel]:
                        self._watched[channel].subscribed.set()
            if subscribe:
                self._sent.update(subscribe)
                self._unconfirmed.update(subscribe)
                await self._subscribe(pubsub, *subscribe)
            if unsubscribe:
                self._sent.difference_update(unsubscribe)
                await (pubsub.sunsubscribe if self._sharded else pubsub.unsubscribe)(*unsubscribe)

    def _confirmed(self, channel: str) -> None:
        """Redis confirmed a SUBSCRIBE: messages on ``channel`` reach us from now on."""
        if channel not in self._unconfirmed:
            return  # the node channel
        self._unconfirmed[channel] -= 1
        if self._unconfirmed[channel] > 0:
            return  # a later SUBSCRIBE of the same channel is still on its way
        del self._unconfirmed[channel]
        watched = self._watched.get(channel)
        if watched is not None and channel in self._sent:
            watched.subscribed.set()
            # What happened before now was not heard (a reconnect): have a look.
            self._wake_watchers(channel, "")

    def _wake_watchers(self, channel: str, state: str) -> None:
        watched = self._watched.get(channel)
        if watched is not None:
            for queue in watched.queues:
                queue.put_nowait(state)

    async def _close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self._sent.clear()
        self._unconfirmed.clear()
        for watched in self._watched.values():
            watched.subscribed.clear()
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
