"""The task reaper: the timers of the task side, run by one node per round.

Each round it puts tasks whose retry backoff has passed back in line, expires tasks no agent
took within their schedule-to-start timeout, gives up attempts whose lease ended, gives up
the attempts of agents that are lost, and deletes finished tasks past their retention.

An agent is lost when its heartbeat expired, when it was deregistered, or when its stream
has been closed for longer than the grace period (COORDINATOR_STREAM_GRACE_S). A stream
held by a node that died without a word (SIGKILL, power loss) counts as closed from the
round that notices the node's presence key is gone. Within the grace period an agent that
reconnects, to any node, keeps its tasks.

Every step is a script that re-checks what it changes, so a round that overlaps another
(a lock that lapsed) does no harm.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from redis.asyncio import Redis

from coordinator.config import Settings
from coordinator.periodic import Periodic
from coordinator.storage import keys
from coordinator.storage.redis_errors import redis_unavailable
from coordinator.storage.redis_time import epoch_ms
from coordinator.storage.scripts import TaskScripts
from coordinator.tasks.script_calls import (
    CompactFinishedTasksCall,
    ExpireTasksCall,
    ForgetFinishedTasksCall,
    PromoteDueTasksCall,
    ReleaseTaskCall,
)

log = logging.getLogger(__name__)

BATCH = 500
"""Most tasks one step handles per round; the next round takes the rest."""

COMPACT_BATCH = 12
"""Finished tasks compacted and archived by one script call: about 1.1-1.4 ms of Redis
time (about 100 µs a task), so that the calls waiting behind it wait little."""

COMPACT_CALLS = 84
"""Most compaction calls per round: 1,008 tasks, 2,000 a second at the default interval."""

COMPACT_DEFERRED = 20_000
"""Compaction is background work: while tasks wait in line it waits, unless more finished
tasks than this wait for it (about 65 MB more than compacted and archived), so that a
burst does not pay for it and a long one does not grow Redis without bound."""

HOLDERS_PER_ROUND = 1000
"""About how many agents holding tasks a round looks at (lua/holders_in_doubt.lua): with
10,000 holding, each is looked at every ten rounds (5 s), and a round costs Redis the same
with 1,000 agents or 100,000."""


class TaskReaper:
    """Runs ``reap_once`` every COORDINATOR_TASK_TIMER_INTERVAL_S on the node holding the lock."""

    def __init__(
        self, redis: Redis, settings: Settings, wake_dispatcher: Callable[[], None] | None = None
    ) -> None:
        self._redis = redis
        self._settings = settings
        # After a round the dispatcher passes at once: retries came due, slots came free.
        self._wake_dispatcher = wake_dispatcher or (lambda: None)
        self._scripts = TaskScripts(redis)
        self._interval_ms = max(1, int(settings.task_timer_interval_s * 1000))
        self._liveness_timeout_ms = int(settings.liveness_timeout_s * 1000)
        self._grace_ms = int(settings.stream_grace_s * 1000)
        self._loop = Periodic("task-reaper", settings.task_timer_interval_s, self._round)
        self._holders_cursor = "0"

    def start(self) -> None:
        """Begin reaping in the background."""
        self._loop.start()

    async def stop(self) -> None:
        """Stop reaping (idempotent)."""
        await self._loop.stop()

    async def reap_once(self) -> bool:
        """Run one round if this node wins the round's lock; returns whether it ran."""
        won = await self._redis.set(
            keys.TASK_REAP_LOCK, self._settings.node_id, nx=True, px=self._interval_ms
        )
        if not won:
            return False
        await self._scripts.promote_due_tasks(args=PromoteDueTasksCall(BATCH).args())
        expire = ExpireTasksCall(BATCH)
        for task_id in expire.parse(await self._scripts.expire_tasks(args=expire.args())):
            log.warning("task expired: no agent took it in time", extra={"task_id": task_id})
        now_ms = epoch_ms(await self._redis.time())
        await self._expire_leases(now_ms)
        await self._release_lost_agents(now_ms)
        bound_ms = now_ms - int(self._settings.task_retention_s * 1000)
        await self._scripts.forget_finished_tasks(
            args=ForgetFinishedTasksCall(
                bound_ms, BATCH, self._settings.task_retention_max_tasks
            ).args()
        )
        await self._compact_finished()
        return True

    async def _compact_finished(self) -> None:
        compact = CompactFinishedTasksCall(COMPACT_BATCH, COMPACT_DEFERRED)
        for _ in range(COMPACT_CALLS):
            done = compact.parse(await self._scripts.compact_finished_tasks(args=compact.args()))
            if done < COMPACT_BATCH:
                return

    async def _expire_leases(self, now_ms: int) -> None:
        due = [
            str(t)
            for t in await self._redis.zrangebyscore(
                keys.TASK_LEASES, "-inf", now_ms, start=0, num=BATCH
            )
        ]
        for task_id in due:
            release = ReleaseTaskCall(
                task_id, "", True, "lease_expired", "lease expired without a report"
            )
            state = release.parse(await self._scripts.release_task(args=release.args()))
            if state:
                log.warning(
                    "lease expired: attempt given up, task now %s",
                    state,
                    extra={"task_id": task_id},
                )

    async def _release_lost_agents(self, now_ms: int) -> None:
        # Only the holders not plainly well come back (lua/holders_in_doubt.lua).
        fresh_after_ms = now_ms - self._liveness_timeout_ms
        self._holders_cursor, rows = await self._scripts.holders_in_doubt(
            args=[fresh_after_ms, self._holders_cursor, HOLDERS_PER_ROUND]
        )
        for agent_id, exists, heartbeat, connection, closed_at, node_alive in rows:
            heartbeat_ms = None if heartbeat is None else float(heartbeat)
            closed_at_ms = None if closed_at is None else float(closed_at)
            if not exists:
                reason = "agent deregistered"
            elif heartbeat_ms is None or heartbeat_ms < fresh_after_ms:
                reason = "agent's heartbeat expired"
            elif connection and node_alive:
                if closed_at_ms is not None:  # its node was thought dead and is back
                    await self._redis.zrem(keys.AGENTS_DISCONNECTED, agent_id)
                continue  # streaming: all is well
            elif connection and closed_at_ms is None:
                # Its node died without closing the stream: the grace period starts now.
                await self._redis.zadd(keys.AGENTS_DISCONNECTED, {agent_id: now_ms}, nx=True)
                log.warning(
                    "agent's node %s is gone; waiting for the agent to reconnect",
                    connection.split(" ", 1)[0],
                    extra={"agent_id": agent_id},
                )
                continue
            elif closed_at_ms is None or closed_at_ms > now_ms - self._grace_ms:
                continue  # within the grace period (or not yet recorded)
            else:
                reason = "agent's stream closed and it did not come back in time"
            await self._release_agent(agent_id, reason)

    async def _release_agent(self, agent_id: str, reason: str) -> None:
        held = sorted(str(t) for t in await self._redis.smembers(keys.agent_tasks(agent_id)))
        for task_id in held:
            release = ReleaseTaskCall(task_id, agent_id, False, "agent_lost", reason)
            state = release.parse(await self._scripts.release_task(args=release.args()))
            if state:
                log.warning(
                    "%s: attempt given up, task now %s",
                    reason,
                    state,
                    extra={"task_id": task_id, "agent_id": agent_id},
                )
        if not held:  # a stale entry: nothing to give back
            await self._redis.srem(keys.AGENTS_HOLDING, agent_id)

    async def _round(self) -> None:
        try:
            if await self.reap_once():
                self._wake_dispatcher()
        except Exception as exc:
            if not redis_unavailable(exc):
                raise
            log.debug("task reaper round skipped: Redis unavailable (%r)", exc)
