"""Reads of the task store: one task or many, pages of tasks, the queues, the cluster's
strategy and statistics. ``TaskStore`` (``coordinator.tasks.store``) is these and the
changes of state; nothing here changes a task."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis

from coordinator.config import Settings
from coordinator.errors import NotFound
from coordinator.storage import finished_records, keys, page_tokens
from coordinator.storage.redis_time import epoch_ms
from coordinator.storage.scripts import TaskScripts
from coordinator.strategies import Strategy
from coordinator.tasks.models import (
    PRIORITIES_MOST_URGENT_FIRST,
    ListTasksQuery,
    LoadBalancerStats,
    QueueReport,
    QueueStats,
    Task,
    TaskPage,
    TaskState,
    TaskStats,
)
from coordinator.tasks.records import decode_task

log = logging.getLogger(__name__)

BATCH = 500
"""Most tasks one index read handles."""


class TaskReads:
    """What every node reads of the tasks in the same Redis."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._scripts = TaskScripts(redis)
        self._liveness_timeout_ms = int(settings.liveness_timeout_s * 1000)

    async def get(self, task_id: str) -> Task:
        """One task with its history; NotFound if unknown (or past its retention)."""
        record: dict[str, str] = await self._redis.hgetall(keys.task(task_id))  # type: ignore[assignment]
        if not record:
            raise NotFound(f"task_id: no task {task_id!r}")
        return decode_task(finished_records.expand(record, task_id))

    async def get_many(self, task_ids: Sequence[str]) -> list[Task]:
        """The tasks that still exist among ``task_ids``, in that order."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hgetall(keys.task(task_id))
            records = await pipe.execute()
        return [
            decode_task(finished_records.expand(r, task_id))
            for task_id, r in zip(task_ids, records, strict=True)
            if r
        ]

    async def list_tasks(
        self,
        query: ListTasksQuery,
        *,
        item_bytes: Callable[[Task], int] | None = None,
        max_page_bytes: int = 0,
    ) -> TaskPage:
        """Tasks matching ``query``, newest first, one page at a time. With ``item_bytes``
        (what a task adds to the reply), a page also ends before its items would exceed
        ``max_page_bytes``, though it always holds one task when any remains; the
        next_page_token then continues right after the last task returned."""
        fingerprint = _fingerprint(query)
        after = page_tokens.decode(query.page_token, fingerprint)
        indexes = _indexes(query)
        page: list[Task] = []
        page_bytes = 0
        cursor = after
        last_listed: tuple[float, str] | None = None
        more = False
        # A page, whether more follow and the entry the page token names: enough unfiltered.
        batch = min(BATCH, query.page_size + 2)
        while not more:
            high: float | str = "+inf" if cursor is None else cursor[0]
            reply = await self._scripts.list_index_entries(args=[high, batch, *indexes])
            batch = BATCH
            entries = [
                (float(score), str(member))
                for member, score in zip(reply[::2], reply[1::2], strict=True)
            ]
            if cursor is not None:
                entries = [entry for entry in entries if entry < cursor]
            if not entries:
                break
            by_id = {t.task_id: t for t in await self.get_many([m for _, m in entries])}
            for entry in entries:
                cursor = entry
                task = by_id.get(entry[1])
                if task is None or not _matches(task, query):
                    continue
                if len(page) == query.page_size:
                    more = True
                    break
                if item_bytes is not None:
                    size = item_bytes(task)
                    if page and page_bytes + size > max_page_bytes:
                        more = True
                        break
                    page_bytes += size
                page.append(task)
                last_listed = entry
        token = ""
        if more and last_listed is not None:
            token = page_tokens.encode(last_listed, fingerprint)
        return TaskPage(tasks=page, next_page_token=token)

    async def queues(self) -> QueueReport:
        """Pending tasks per priority, retries waiting, and the dead-letter size."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.time()
            for priority in PRIORITIES_MOST_URGENT_FIRST:
                pipe.zcard(keys.task_queue(priority.name))
                pipe.zrange(keys.task_queue(priority.name), 0, 0)
            pipe.zcard(keys.TASK_SCHEDULED)
            pipe.zcard(keys.TASK_DEAD_LETTER)
            replies = await pipe.execute()
        now_ms = epoch_ms(replies[0])
        heads = replies[1:-2]
        head_ids = [h[0] for h in heads[1::2] if h]
        async with self._redis.pipeline(transaction=False) as pipe:
            for task_id in head_ids:  # only the creation time: task data can be large
                pipe.hget(keys.task(task_id), "created_at_ms")
            created = {
                t: int(ms) for t, ms in zip(head_ids, await pipe.execute(), strict=True) if ms
            }
        queues = []
        for i, priority in enumerate(PRIORITIES_MOST_URGENT_FIRST):
            size, head = heads[2 * i], heads[2 * i + 1]
            age_ms = now_ms - created[head[0]] if head and head[0] in created else 0
            queues.append(QueueStats(priority, int(size), max(0, age_ms) / 1000))
        return QueueReport(queues, scheduled_retries=int(replies[-2]), dead_letter=int(replies[-1]))

    async def strategy(self) -> Strategy:
        """The cluster's load-balancing strategy."""
        stored = await self._redis.get(keys.BALANCING_STRATEGY)
        return self.strategy_or_default(stored)

    async def set_strategy(self, strategy: Strategy) -> Strategy:
        """Store the cluster's strategy for every node; returns the previous one."""
        previous = await self._redis.set(keys.BALANCING_STRATEGY, strategy.name.lower(), get=True)
        log.info("balancing strategy set to %s", strategy.name.lower())
        return self.strategy_or_default(previous)

    def strategy_or_default(self, stored: Any) -> Strategy:
        """The strategy stored in Redis, or COORDINATOR_BALANCING_STRATEGY when none is."""
        return Strategy.parse(str(stored or self._settings.balancing_strategy))

    async def stats(self) -> TaskStats:
        """Cluster-wide counters and latencies: the same on every node."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.hgetall(keys.TASK_STATS)
            pipe.lrange(keys.TASK_ASSIGN_LATENCIES, 0, -1)
            pipe.hgetall(keys.TASK_ASSIGNMENTS_PER_AGENT)
            pipe.smembers(keys.AGENTS_ACTIVE)
            pipe.get(keys.BALANCING_STRATEGY)
            now, counters, latencies, per_agent, active, strategy = await pipe.execute()
        now_ms = epoch_ms(now)
        active_ids = sorted(active)
        load = 0.0
        live = 0
        if active_ids:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zmscore(keys.AGENTS_HEARTBEATS, active_ids)
                for agent_id in active_ids:
                    pipe.hmget(keys.agent(agent_id), "active_tasks", "max_concurrency")
                scores, *slots = await pipe.execute()
            loads = [
                int(used or 0) / int(total)
                for score, (used, total) in zip(scores, slots, strict=True)
                if score is not None and score >= now_ms - self._liveness_timeout_ms and total
            ]
            live = len(loads)
            load = sum(loads) / live if live else 0.0
        count = int(counters.get("submit_to_assignment_count", 0))
        total_ms = int(counters.get("submit_to_assignment_ms_total", 0))
        samples = sorted(int(x) for x in latencies)
        p99 = float(samples[max(0, math.ceil(0.99 * len(samples)) - 1)]) if samples else 0.0
        distributed = int(counters.get("tasks_distributed", 0))
        return TaskStats(
            tasks_submitted=int(counters.get("tasks_submitted", 0)),
            tasks_distributed=distributed,
            tasks_completed=int(counters.get("tasks_completed", 0)),
            tasks_failed=int(counters.get("tasks_failed", 0)),
            tasks_cancelled=int(counters.get("tasks_cancelled", 0)),
            tasks_expired=int(counters.get("tasks_expired", 0)),
            avg_submit_to_assignment_ms=total_ms / count if count else 0.0,
            p99_submit_to_assignment_ms=p99,
            load_balancer_stats=LoadBalancerStats(
                strategy=self.strategy_or_default(strategy),
                active_agents=live,
                total_assignments=distributed,
                avg_agent_load=round(load, 6),
                assignments_per_agent={k: int(v) for k, v in sorted(per_agent.items())},
            ),
            queues=(await self.queues()).queues,
        )


def _indexes(query: ListTasksQuery) -> list[str | int]:
    """ARGV[3..] of ``lua/list_index_entries.lua`` for a listing: the one sorted set that
    lists every task it may show, and the archive's indexes that list its finished tasks
    once archived (a dead-lettered task stays in ``tasks:dead-letter``, archived or not)."""
    if query.dead_letter:
        return [1, keys.TASK_DEAD_LETTER]
    if query.agent_id:
        return [1, keys.tasks_by_agent(query.agent_id), keys.archived_by_agent(query.agent_id)]
    final = sorted(s.name for s in query.states or TaskState if s.final)
    archived = [keys.archived_in_state(name) for name in final]
    if len(query.states) == 1:
        return [1, keys.tasks_in_state(next(iter(query.states)).name), *archived]
    return [1, keys.TASK_ALL, *archived]


def _matches(task: Task, query: ListTasksQuery) -> bool:
    return (
        (not query.states or task.state in query.states)
        and (not query.priorities or task.priority in query.priorities)
        and (not query.agent_id or task.agent_id == query.agent_id)
        and (not query.dead_letter or task.dead_lettered)
    )


def _fingerprint(query: ListTasksQuery) -> str:
    return page_tokens.fingerprint(
        [
            sorted(s.name for s in query.states),
            query.agent_id,
            sorted(p.name for p in query.priorities),
            query.dead_letter,
        ]
    )
