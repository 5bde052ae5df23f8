"""The assignment streams this node holds: one session per agent with an open
StreamAssignments (``coordinator.delivery.session``).

Opening a session records in Redis which node holds the agent's stream (that is the agent's
presence); assignments made by any node are announced, whole, on this node's pub/sub channel
and forwarded at once. A session does not rely on the announcements alone: it also sends
what Redis says the agent holds and has not acknowledged, when it opens, after a pub/sub
reconnect and on a timer. So a lost message delays an assignment but never loses it, and an
agent that reconnects receives its unacknowledged assignments again (at-least-once
delivery; the agent recognises a repeat by task_id and attempt).

Redis decides which of two streams of one agent is its stream: the one whose connect script
ran last. Opens of one agent on this node take turns (script, then local table), so the
local table changes in the order Redis ran them; a stream replaced on another node is found
by its session id, even while it is still opening.

A stream whose agent does not read it (gRPC flow control holds the node's writes, or its
queue stays full) for ``stall_timeout_s`` is ended and recorded as closed: the agent is no
longer connected, so it receives no work until it opens a stream again, and the tasks it
holds go to other agents after the stream grace period unless it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

from coordinator.delivery.messages import (
    AgentDeregistered,
    AssignNotice,
    NodeMessage,
    StreamReplaced,
    node_message_from_fields,
)
from coordinator.delivery.script_calls import ConnectStream, DisconnectStream
from coordinator.delivery.session import (
    AssignmentEvent,
    CancelEvent,
    EndEvent,
    QueueLimits,
    Session,
    StreamEvent,
    assignment_event,
)
from coordinator.errors import Aborted, NotFound, Unavailable
from coordinator.periodic import Periodic
from coordinator.storage.scripts import TaskScripts
from coordinator.tasks.store import TaskStore

__all__ = [
    "AssignmentEvent",
    "AssignmentStreams",
    "CancelEvent",
    "EndEvent",
    "QueueLimits",
    "Session",
    "StreamEvent",
    "ended_error",
]

log = logging.getLogger(__name__)


class _TurnLock:
    """An asyncio lock shared by the opens of one agent, kept while anyone uses it."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class AssignmentStreams:
    """Every session of this node, by agent id."""

    def __init__(
        self,
        redis: Redis,
        store: TaskStore,
        node_id: str,
        resync_s: float,
        limits: QueueLimits | None = None,
        stall_timeout_s: float = 10.0,
    ) -> None:
        self._redis = redis
        self._store = store
        self._node_id = node_id
        self._resync_s = resync_s
        self._limits = limits or QueueLimits()
        self._stall_timeout_s = stall_timeout_s
        self._scripts = TaskScripts(redis)
        self._sessions: dict[str, Session] = {}  # each agent's current stream
        self._live: dict[str, Session] = {}  # by session id, from open until its handler ends
        self._opening: dict[str, Session] = {}  # by agent id, inside its connect script
        self._turns: dict[str, _TurnLock] = {}
        self._closing: set[asyncio.Task[Any]] = set()
        self._draining = False
        self._watchdog = Periodic(
            "stream-watchdog", min(1.0, stall_timeout_s / 4), self._end_stalled
        )

    @property
    def session_count(self) -> int:
        """Agents with an open stream on this node (read by the metrics thread: one len())."""
        return len(self._sessions)

    def holds(self, agent_id: str) -> bool:
        """Whether this node holds the agent's current stream."""
        return agent_id in self._sessions

    def sessions_by_agent(self) -> dict[str, str]:
        """The session id of each agent's current stream on this node (for diagnostics)."""
        return {agent_id: s.session_id for agent_id, s in self._sessions.items()}

    def queued(self, agent_id: str) -> tuple[int, int]:
        """Events and bytes held for an agent's current stream on this node."""
        session = self._sessions.get(agent_id)
        return session.queued if session is not None else (0, 0)

    def start(self) -> None:
        """Start looking for stalled streams."""
        self._watchdog.start()

    async def open(self, agent_id: str) -> Session:
        """Record the stream in Redis (replacing any older one); NotFound if unregistered,
        Unavailable while the node drains, Aborted if a newer stream replaced it already."""
        self._refuse_if_draining()
        session = Session(agent_id, self._store, self._redis, self._resync_s, self._limits)
        self._live[session.session_id] = session
        try:
            async with self._turn(agent_id):
                self._refuse_if_draining()
                self._opening[agent_id] = session
                session.recorded = True  # from now on Redis may name it: its close is recorded
                try:
                    call = ConnectStream(agent_id, self._node_id, session.session_id)
                    connected = call.parse(await self._scripts.connect_stream(args=call.args()))
                finally:
                    del self._opening[agent_id]
                if not connected:
                    raise NotFound(
                        f"agent_id: no agent {agent_id!r} is registered; register it first"
                    )
                self._refuse_if_draining()
                if session.ended is not None:  # replaced or deregistered while it opened
                    raise ended_error(agent_id, session.ended) or self._draining_error()
                older = self._sessions.get(agent_id)
                self._sessions[agent_id] = session
                if older is not None:  # Redis ran this script after the older one's
                    older.push(EndEvent("replaced"))
        except BaseException:
            # The script may have run (even if this call was cancelled meanwhile): record the
            # close, which changes nothing in Redis unless this stream is the recorded one.
            self.finish(session)
            raise
        session.opened = True
        log.info("assignment stream opened", extra={"agent_id": agent_id})
        return session

    def finish(self, session: Session) -> None:
        """The stream's handler ended: record the close (once) and forget the session."""
        self._close(session)
        self._live.pop(session.session_id, None)

    @contextlib.asynccontextmanager
    async def _turn(self, agent_id: str) -> AsyncIterator[None]:
        turn = self._turns.get(agent_id)
        if turn is None:
            turn = self._turns[agent_id] = _TurnLock()
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.users -= 1
            if turn.users == 0:
                del self._turns[agent_id]

    def _refuse_if_draining(self) -> None:
        if self._draining:
            raise self._draining_error()

    def _draining_error(self) -> Unavailable:
        return Unavailable(
            f"node {self._node_id} is shutting down; open StreamAssignments on another node"
        )

    def _close(self, session: Session) -> None:
        """Record that the stream closed, in the background (the handler may be cancelled).
        Once per stream, whoever ends it first (its handler, the drain, the watchdog)."""
        if session.closed:
            return
        session.closed = True
        self._forget(session)
        if not session.recorded:
            return
        task = asyncio.create_task(self._disconnect(session), name="stream-disconnect")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _disconnect(self, session: Session) -> None:
        try:
            call = DisconnectStream(session.agent_id, self._node_id, session.session_id)
            await self._scripts.disconnect_stream(args=call.args())
            if session.opened:
                log.info("assignment stream closed", extra={"agent_id": session.agent_id})
        except Exception as exc:  # the agent stays "connected" to this node until it is gone
            log.warning(
                "could not record a closed stream (%r)", exc, extra={"agent_id": session.agent_id}
            )

    def _forget(self, session: Session) -> None:
        if self._sessions.get(session.agent_id) is session:
            del self._sessions[session.agent_id]

    def on_node_message(self, message: NodeMessage) -> None:
        """A message from the node channel (see ``coordinator.delivery.messages``)."""
        if isinstance(message, StreamReplaced):
            # By session: it may be this node's current one or one still opening.
            replaced = self._live.get(message.session_id)
            if replaced is not None:
                self._forget(replaced)
                replaced.push(EndEvent("replaced"))
            return
        if isinstance(message, AgentDeregistered):
            agent_id = message.agent_id
            for session in (self._sessions.get(agent_id), self._opening.get(agent_id)):
                if session is not None:
                    self._forget(session)
                    session.push(EndEvent("deregistered"))
            return
        current = self._sessions.get(message.agent_id)
        if current is None:
            return
        if isinstance(message, AssignNotice):
            current.push(assignment_event(message.assignment, message.task_data_chars))
        else:
            current.push(CancelEvent(message.task_id, message.attempt, message.reason))

    def deliver_local(self, fields: dict[str, Any]) -> None:
        """An assignment message that came back in this node's own script reply (the
        dispatcher's local delivery: the agent's stream is here), as its JSON object."""
        message = node_message_from_fields(fields)
        if message is not None:
            self.on_node_message(message)

    def resync_all(self) -> None:
        """After a pub/sub reconnect: every session looks in Redis at once."""
        for session in self._sessions.values():
            session.nudge()

    async def _end_stalled(self) -> None:
        """End the streams whose agents have not read them for the stall timeout."""
        now = time.monotonic()
        for session in list(self._live.values()):
            stalled_s = session.stalled_for_s(now)
            if stalled_s < self._stall_timeout_s or session.closed:
                continue
            log.warning(
                "agent did not read its assignment stream for %.1f s: stream ended, the agent "
                "gets no work until it opens a stream again",
                stalled_s,
                extra={"agent_id": session.agent_id},
            )
            session.stop(
                f"agent_id: agent {session.agent_id!r} did not read its StreamAssignments for "
                f"{stalled_s:.0f} s (COORDINATOR_STREAM_STALL_TIMEOUT_S); the node ended it, "
                "and the agent gets no work until it opens the stream again"
            )
            self._close(session)

    def begin_drain(self) -> None:
        """Node shutdown begins: new streams are refused (UNAVAILABLE) from now on."""
        self._draining = True

    async def drain(self) -> None:
        """Node shutdown: end every stream (agents reconnect elsewhere) and record it."""
        self.begin_drain()
        for session in list(self._live.values()):
            if not session.opened:
                continue  # still opening: it will see the drain and record its own close
            session.push(EndEvent("draining"))
            self._close(session)
        await self.wait_closed()

    async def stop(self) -> None:
        """Stop the watchdog and wait for the close records (after the server stopped)."""
        await self._watchdog.stop()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait for the background disconnect records to be written."""
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def ended_error(agent_id: str, end: EndEvent) -> Exception | None:
    """The error a stream ends with for ``end``; None when it ends with a NodeDraining."""
    if end.reason == "draining":
        return None
    if end.reason == "deregistered":
        return NotFound(
            f"agent_id: agent {agent_id!r} was deregistered; register it again to receive work"
        )
    return Aborted(f"agent_id: a newer StreamAssignments for agent {agent_id!r} replaced this one")
