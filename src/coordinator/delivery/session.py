"""One open assignment stream: the events to send to one agent, in order, in bounded memory.

Assignments are announced whole on the node channel and queued here until the stream's
handler writes them. The queue is bounded by events and bytes (``QueueLimits``): an agent
that does not read its stream (gRPC flow control then holds the handler's writes) must not
grow the node without limit. When the queue is full an assignment is not queued: it stays
in Redis, and the session reads it from there once there is room again (as after a lost
announcement). Cancel notices, which Redis cannot reproduce, push out the newest queued
assignment instead. Events whose attempt has ended are dropped. The session also records
since when its queue has been full and since when a write has been in progress, which is
how ``coordinator.delivery.streams`` tells a stalled stream.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from coordinator.cancellation import raise_if_cancelled
from coordinator.delivery.messages import Assignment
from coordinator.storage import keys
from coordinator.tasks.models import Priority, TaskState
from coordinator.tasks.store import TaskStore

ASSIGNMENT_OVERHEAD_BYTES = 512
"""An assignment's bytes besides its task_data (ids, token, type of at most 64 characters,
times), a generous guess."""


@dataclass(frozen=True)
class AssignmentEvent:
    """Send this assignment to the agent; ``size_bytes`` is what it holds in memory, about."""

    assignment: Assignment
    size_bytes: int = ASSIGNMENT_OVERHEAD_BYTES


@dataclass(frozen=True)
class CancelEvent:
    """Tell the agent to stop an attempt."""

    task_id: str
    attempt: int
    reason: str


@dataclass(frozen=True)
class EndEvent:
    """End the stream: ``replaced`` by a newer one, agent ``deregistered``, node ``draining``."""

    reason: str


StreamEvent = AssignmentEvent | CancelEvent | EndEvent


def assignment_event(assignment: Assignment, task_data_bytes: int) -> AssignmentEvent:
    """The event of an assignment whose task_data is ``task_data_bytes`` long (as JSON)."""
    return AssignmentEvent(assignment, ASSIGNMENT_OVERHEAD_BYTES + task_data_bytes)


def _cancel_bytes(event: CancelEvent) -> int:
    return ASSIGNMENT_OVERHEAD_BYTES + len(event.reason)


@dataclass(frozen=True)
class QueueLimits:
    """Most events, and bytes, a session holds for its agent: queued, or taken by the handler
    and not yet written."""

    max_events: int = 1000
    max_bytes: int = 16 * 1024 * 1024


_Key = tuple[str, str, int]
"""A queued event's key: ("a" or "c", task_id, attempt)."""

_Attempt = tuple[str, int]
"""(task_id, attempt)."""

_HeldRow = list[Any]
"""A held task's state, attempt, agent_id, priority, seq, and task_data's length."""


class Session:
    """One open stream: the events to send to one agent, in order."""

    def __init__(
        self,
        agent_id: str,
        store: TaskStore,
        redis: Redis,
        resync_s: float,
        limits: QueueLimits | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.session_id = uuid.uuid4().hex
        self._store = store
        self._redis = redis
        self._resync_s = resync_s
        self._limits = limits or QueueLimits()
        self._wakeup = asyncio.Event()
        self._resync_due = True  # a new stream first sends what the agent already holds
        self._pending: dict[_Key, tuple[StreamEvent, int]] = {}  # in order of arrival
        self._pending_bytes = 0
        self._queued_attempt: dict[str, int] = {}  # task_id -> attempt of its queued assignment
        self._taken_events = 0  # handed to the handler, being written
        self._taken_bytes = 0
        self._sent: set[tuple[str, int]] = set()
        self._end: EndEvent | None = None
        self.full_since: float | None = None
        """Monotonic time since which the queue has refused events (None: it has room)."""
        self.writing_since: float | None = None
        """Monotonic time the handler's write in progress began (None: no write)."""
        self.recorded = False
        """True once its connect script was sent: Redis may record it as the agent's stream."""
        self.opened = False
        self.closed = False
        self._stop: Callable[[str], None] | None = None

    @property
    def ended(self) -> EndEvent | None:
        """Why the stream is ending, once it is."""
        return self._end

    @property
    def queued(self) -> tuple[int, int]:
        """Events and bytes held for the agent: queued, or taken and being written."""
        return (
            len(self._pending) + self._taken_events,
            self._pending_bytes + self._taken_bytes,
        )

    def nudge(self) -> None:
        """Something may have been missed (pub/sub reconnected): look in Redis again."""
        self._resync_due = True
        self._wakeup.set()

    # --- writes and stalls -------------------------------------------------------------

    def on_stop(self, stop: Callable[[str], None]) -> None:
        """How to end the stream at once, even while a write is held (given by the handler)."""
        self._stop = stop

    def stop(self, message: str) -> None:
        """End the stream at once with ``message`` (see ``on_stop``). The handler is not
        woken: it is cancelled."""
        self._end = self._end or EndEvent("stopped")
        self._clear_pending()
        if self._stop is not None:
            stop, self._stop = self._stop, None
            stop(message)

    def write_started(self) -> None:
        self.writing_since = time.monotonic()

    def write_finished(self) -> None:
        self.writing_since = None

    def stalled_for_s(self, now: float) -> float:
        """How long the stream has not moved: a write held, or a queue that stayed full."""
        since = [t for t in (self.writing_since, self.full_since) if t is not None]
        return now - min(since) if since else 0.0

    # --- the queue ---------------------------------------------------------------------

    def push(self, event: StreamEvent) -> None:
        """Queue an event that needs no lookup (assignments announced whole, cancel notices,
        the end). An assignment this stream has sent already is dropped."""
        if self._end is not None:
            return  # the stream is ending: nothing more reaches the agent
        if isinstance(event, EndEvent):
            self._end = event
            self._clear_pending()  # the handler sends the end alone
        elif isinstance(event, AssignmentEvent):
            self._push_assignment(event)
        else:
            self._push_cancel(event)
        self._wakeup.set()

    def _push_assignment(self, event: AssignmentEvent) -> None:
        task_id, attempt = event.assignment.task_id, event.assignment.attempt
        if (task_id, attempt) in self._sent:
            return
        queued = self._queued_attempt.get(task_id)
        if queued is not None:
            if queued > attempt:
                return  # an older attempt's announcement, late: it has ended
            self._unqueue(("a", task_id, queued))  # a newer attempt: the queued one ended
        if not self._fits(event.size_bytes):
            self._overflowed()
            return
        self._queue(("a", task_id, attempt), event, event.size_bytes)
        self._queued_attempt[task_id] = attempt
        self._sent.add((task_id, attempt))

    def _push_cancel(self, event: CancelEvent) -> None:
        key: _Key = ("a", event.task_id, event.attempt)
        if key in self._pending:
            self._unqueue(key)  # never sent: the agent need not hear of it at all
            return
        size = _cancel_bytes(event)
        # Redis can give back an assignment, not a cancel notice: assignments make room.
        while not self._fits(size) and self._evict_newest_assignment():
            pass
        if not self._fits(size):
            self._overflowed()  # only assignments' cancel notices fill it: bounded by slots
            return
        self._queue(("c", event.task_id, event.attempt), event, size)

    def _fits(self, size: int) -> bool:
        events, used = self.queued
        return events + 1 <= self._limits.max_events and used + size <= self._limits.max_bytes

    def _overflowed(self) -> None:
        """An assignment was left in Redis: read it from there once there is room."""
        self._resync_due = True
        if self.full_since is None:
            self.full_since = time.monotonic()

    def _queue(self, key: _Key, event: StreamEvent, size: int) -> None:
        self._pending[key] = (event, size)
        self._pending_bytes += size

    def _unqueue(self, key: _Key) -> None:
        entry = self._pending.pop(key, None)
        if entry is None:
            return
        self._pending_bytes -= entry[1]
        if key[0] == "a":
            self._sent.discard((key[1], key[2]))
            if self._queued_attempt.get(key[1]) == key[2]:
                del self._queued_attempt[key[1]]

    def _evict_newest_assignment(self) -> bool:
        for key in reversed(self._pending):
            if key[0] == "a":
                self._unqueue(key)
                self._overflowed()
                return True
        return False

    def _clear_pending(self) -> None:
        self._pending.clear()
        self._pending_bytes = 0
        self._queued_attempt.clear()

    def _take_pending(self) -> list[StreamEvent]:
        events = [event for event, _ in self._pending.values()]
        self._taken_events += len(events)
        self._taken_bytes += self._pending_bytes
        self._clear_pending()
        return events

    async def next_events(self) -> list[StreamEvent]:
        """The next events to send, waiting until there is at least one. Calling it again
        says the previous ones were written.

        Redis is read when the stream opens, when nudged, after the queue was full, and
        after each quiet ``resync_s``, never per pushed event: the announcements carry what
        to send.
        """
        self._taken_events = self._taken_bytes = 0
        self.full_since = None
        while True:
            if self._end is not None:
                return [self._end]
            fresh: list[StreamEvent] = []
            if self._resync_due:
                self._resync_due = False
                fresh = await self._unsent_assignments()
                raise_if_cancelled()
                if self._end is not None:
                    return [self._end]
            events = self._take_pending() + fresh  # announced first, then found in Redis
            if events:
                return events
            try:
                # (asyncio.timeout, not wait_for: no task created per wake-up of the stream)
                async with asyncio.timeout(self._resync_s):
                    await self._wakeup.wait()
            except TimeoutError:
                self._resync_due = True
            raise_if_cancelled()
            self._wakeup.clear()

    async def _unsent_assignments(self) -> list[StreamEvent]:
        """Assignments the agent holds, has not acknowledged, and this stream has not sent,
        as many as there is room for (the rest on the next call). Queued assignments whose
        attempt has ended are dropped.

        Reads a few fields of each held task first, and whole tasks (with their data) only
        for the assignments to send.
        """
        queued_before = [k for k in self._pending if k[0] == "a"]
        current, due_now = await self._read_held()
        # Forget attempts that ended; keep what is queued (it may be newer than the read).
        self._sent &= current | {(k[1], k[2]) for k in self._pending if k[0] == "a"}
        for key in queued_before:
            if (key[1], key[2]) not in due_now:
                self._unqueue(key)  # its attempt ended before it was sent
        chosen = self._fitting(due_now)
        return await self._read_assignments(chosen)

    async def _read_held(self) -> tuple[set[_Attempt], dict[_Attempt, _HeldRow]]:
        """The attempts of the tasks the agent holds, and of those the ones assigned to it
        and not yet acknowledged, with their row: state, attempt, agent_id, priority, seq,
        and the length of task_data."""
        held = sorted(str(t) for t in await self._redis.smembers(keys.agent_tasks(self.agent_id)))
        rows: list[_HeldRow] = []
        if held:
            async with self._redis.pipeline(transaction=False) as pipe:
                for task_id in held:
                    pipe.hmget(
                        keys.task(task_id), "state", "attempt", "agent_id", "priority", "seq"
                    )
                    pipe.hstrlen(keys.task(task_id), "task_data")
                replies = await pipe.execute()
            rows = [[*replies[i], replies[i + 1]] for i in range(0, len(replies), 2)]
        current = {(t, int(row[1] or 0)) for t, row in zip(held, rows, strict=True) if row[0]}
        due_now = {
            (t, int(row[1] or 0)): row
            for t, row in zip(held, rows, strict=True)
            if row[0] == TaskState.ASSIGNED.name and row[2] == self.agent_id
        }
        return current, due_now

    def _fitting(self, due_now: dict[_Attempt, _HeldRow]) -> dict[str, int]:
        """The unsent tasks of ``due_now`` to send, with their task_data lengths: in the
        order the dispatcher assigned them (most urgent first, then place in line), as many
        as fit beside what is queued and taken."""
        due = sorted(
            (-Priority[str(row[3])].value, int(row[4] or 0), task_id, int(row[5] or 0))
            for (task_id, attempt), row in due_now.items()
            if (task_id, attempt) not in self._sent
        )
        events, used = self.queued
        chosen: dict[str, int] = {}
        for *_, task_id, data_bytes in due:
            size = ASSIGNMENT_OVERHEAD_BYTES + data_bytes
            if events + 1 > self._limits.max_events or used + size > self._limits.max_bytes:
                self._resync_due = True  # the rest once these are written
                break
            events, used = events + 1, used + size
            chosen[task_id] = data_bytes
        return chosen

    async def _read_assignments(self, chosen: dict[str, int]) -> list[StreamEvent]:
        """The events of the ``chosen`` tasks (task_id: task_data length), read whole, that
        are still assigned to the agent and were not announced meanwhile."""
        # Room is kept for them while they are read: announcements arriving meanwhile must
        # not take it too.
        reserved = (len(chosen), sum(ASSIGNMENT_OVERHEAD_BYTES + b for b in chosen.values()))
        self._taken_events += reserved[0]
        self._taken_bytes += reserved[1]
        try:
            tasks = await self._store.get_many(list(chosen))
        finally:
            self._taken_events -= reserved[0]
            self._taken_bytes -= reserved[1]
        fresh: list[StreamEvent] = []
        for task in tasks:
            attempt_key = (task.task_id, task.attempt)
            if task.state is TaskState.ASSIGNED and task.agent_id == self.agent_id:
                if attempt_key in self._sent:
                    continue  # announced while this read went on
                self._sent.add(attempt_key)
                event = assignment_event(Assignment.of(task), chosen.get(task.task_id, 0))
                self._taken_events += 1
                self._taken_bytes += event.size_bytes
                fresh.append(event)
        return fresh
