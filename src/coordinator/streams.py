"""The assignment streams this node holds: one session per agent with an open
StreamAssignments.

Opening a session records in Redis which node holds the agent's stream (that is the agent's
presence); assignments made by any node are announced, whole, on this node's pub/sub channel
and forwarded at once. A session does not rely on the announcements alone: it also sends
what Redis says the agent holds and has not acknowledged, when it opens, after a pub/sub
reconnect and on a timer. So a lost message delays an assignment but never loses it, and an
agent that reconnects receives its unacknowledged assignments again (at-least-once
delivery; the agent recognises a repeat by task_id and attempt).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from coordinator import keys
from coordinator.cancellation import raise_if_cancelled
from coordinator.errors import NotFound
from coordinator.scripts import TaskScripts
from coordinator.task_models import Assignment, Priority, TaskState
from coordinator.tasks import TaskStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AssignmentEvent:
    """Send this assignment to the agent."""

    assignment: Assignment


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


class Session:
    """One open stream: the events to send to one agent, in order."""

    def __init__(self, agent_id: str, store: TaskStore, redis: Redis, resync_s: float) -> None:
        self.agent_id = agent_id
        self.session_id = uuid.uuid4().hex
        self._store = store
        self._redis = redis
        self._resync_s = resync_s
        self._wakeup = asyncio.Event()
        self._resync_due = True  # a new stream first sends what the agent already holds
        self._pending: list[StreamEvent] = []
        self._sent: set[tuple[str, int]] = set()

    def nudge(self) -> None:
        """Something may have been missed (pub/sub reconnected): look in Redis again."""
        self._resync_due = True
        self._wakeup.set()

    def push(self, event: StreamEvent) -> None:
        """Queue an event that needs no lookup (assignments announced whole, cancel notices,
        the end). An assignment this stream has sent already is dropped."""
        if isinstance(event, AssignmentEvent):
            key = (event.assignment.task_id, event.assignment.attempt)
            if key in self._sent:
                return
            self._sent.add(key)
        self._pending.append(event)
        self._wakeup.set()

    async def next_events(self) -> list[StreamEvent]:
        """The next events to send, waiting until there is at least one.

        Redis is read when the stream opens, when nudged, and after each quiet
        ``resync_s``, never per pushed event: the announcements carry what to send.
        """
        while True:
            events, self._pending = self._pending, []
            if any(isinstance(e, EndEvent) for e in events):
                return [next(e for e in events if isinstance(e, EndEvent))]
            if self._resync_due:
                self._resync_due = False
                events.extend(await self._unsent_assignments())
                raise_if_cancelled()
            if events:
                return events
            try:
                await asyncio.wait_for(self._wakeup.wait(), self._resync_s)
            except TimeoutError:
                self._resync_due = True
            raise_if_cancelled()
            self._wakeup.clear()

    async def _unsent_assignments(self) -> list[StreamEvent]:
        """Assignments the agent holds, has not acknowledged, and this stream has not sent.

        Reads a few fields of each held task first, and whole tasks (with their data) only
        for the assignments to send.
        """
        held = sorted(str(t) for t in await self._redis.smembers(keys.agent_tasks(self.agent_id)))
        if not held:
            self._sent.clear()
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for task_id in held:
                pipe.hmget(keys.task(task_id), "state", "attempt", "agent_id", "priority", "seq")
            rows = await pipe.execute()
        current = {(t, int(row[1])) for t, row in zip(held, rows, strict=True) if row[0]}
        self._sent &= current  # forget attempts that ended
        due = [
            (-Priority[row[3]].value, int(row[4]), task_id)
            for task_id, row in zip(held, rows, strict=True)
            if row[0] == TaskState.ASSIGNED.name
            and row[2] == self.agent_id
            and (task_id, int(row[1])) not in self._sent
        ]
        # In the order the dispatcher assigned them: most urgent first, then place in line.
        tasks = await self._store.get_many([task_id for *_, task_id in sorted(due)])
        fresh: list[StreamEvent] = []
        for task in tasks:
            if task.state is TaskState.ASSIGNED and task.agent_id == self.agent_id:
                self._sent.add((task.task_id, task.attempt))
                fresh.append(AssignmentEvent(Assignment.of(task)))
        return fresh


class AssignmentStreams:
    """Every session of this node, by agent id."""

    def __init__(self, redis: Redis, store: TaskStore, node_id: str, resync_s: float) -> None:
        self._redis = redis
        self._store = store
        self._node_id = node_id
        self._resync_s = resync_s
        self._scripts = TaskScripts(redis)
        self._sessions: dict[str, Session] = {}
        self._closing: set[asyncio.Task[Any]] = set()

    @property
    def session_count(self) -> int:
        """Agents with an open stream on this node (read by the metrics thread: one len())."""
        return len(self._sessions)

    async def open(self, agent_id: str) -> Session:
        """Record the stream in Redis (replacing any older one); NotFound if unregistered."""
        session = Session(agent_id, self._store, self._redis, self._resync_s)
        connected = await self._scripts.connect_stream(
            args=[agent_id, self._node_id, session.session_id]
        )
        if not connected:
            raise NotFound(f"agent_id: no agent {agent_id!r} is registered; register it first")
        older = self._sessions.get(agent_id)
        self._sessions[agent_id] = session
        if older is not None:  # on this node: end it now, whenever the pub/sub message comes
            older.push(EndEvent("replaced"))
        log.info("assignment stream opened", extra={"agent_id": agent_id})
        return session

    def close(self, session: Session) -> None:
        """Record that the stream closed, in the background (the handler may be cancelled)."""
        self._forget(session)
        task = asyncio.create_task(self._disconnect(session), name="stream-disconnect")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _disconnect(self, session: Session) -> None:
        try:
            await self._scripts.disconnect_stream(
                args=[session.agent_id, self._node_id, session.session_id]
            )
            log.info("assignment stream closed", extra={"agent_id": session.agent_id})
        except Exception as exc:  # the agent stays "connected" to this node until it is gone
            log.warning(
                "could not record a closed stream (%r)", exc, extra={"agent_id": session.agent_id}
            )

    def _forget(self, session: Session) -> None:
        if self._sessions.get(session.agent_id) is session:
            del self._sessions[session.agent_id]

    def on_node_message(self, message: dict[str, Any]) -> None:
        """A message from the node channel (see the task scripts' notify_agent)."""
        session = self._sessions.get(message.get("agent_id", ""))
        if session is None:
            return
        kind = message.get("kind")
        if kind == "assign":
            session.push(AssignmentEvent(Assignment.from_message(message)))
        elif kind == "cancel":
            session.push(
                CancelEvent(message["task_id"], int(message["attempt"]), message.get("reason", ""))
            )
        elif kind == "replaced" and message.get("session_id") == session.session_id:
            self._forget(session)
            session.push(EndEvent("replaced"))
        elif kind == "deregistered":
            self._forget(session)
            session.push(EndEvent("deregistered"))

    def resync_all(self) -> None:
        """After a pub/sub reconnect: every session looks in Redis at once."""
        for session in self._sessions.values():
            session.nudge()

    async def drain(self) -> None:
        """Node shutdown: end every stream (agents reconnect elsewhere) and record it."""
        for session in list(self._sessions.values()):
            session.push(EndEvent("draining"))
            self.close(session)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait for the background disconnect records to be written."""
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
