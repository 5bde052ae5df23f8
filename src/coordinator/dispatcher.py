"""The dispatcher: assigns queued tasks to eligible agents with the balancing strategy.

A pass walks the priorities from URGENT to LOW, and within one priority the tasks in their
place in line (FIFO). Tasks are queued per requirements class as well as per priority, and a
pass looks only at the heads of the class queues: once no free agent fits a class, the pass
skips that whole class, so a task that no agent can take never delays any other task.

Every node runs a dispatcher; submits and freed slots wake them all through pub/sub, and each
also runs a pass every few hundred milliseconds in case a message was lost. Only the node
holding ``coordinator:lock:dispatch`` runs passes; the others set
``coordinator:dispatch:wanted``, and the holder keeps passing until that flag stays clear,
so no wake-up is lost. The lock is an efficiency device, not a safety one: each assignment
is one script that re-checks the task and the agent, so two passes racing (a lock that
expired mid-pass) can never assign a task twice or overfill a slot.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import asdict

from redis.asyncio import Redis

from coordinator import keys
from coordinator.api.error_mapping import redis_unavailable
from coordinator.balancing import BalancerState, Candidate, Strategy, choose
from coordinator.config import Settings
from coordinator.metrics import NodeMetrics
from coordinator.models import Agent, AgentStatus
from coordinator.registry import AgentRegistry
from coordinator.scripts import Scripts, TaskScripts
from coordinator.task_models import PRIORITIES_MOST_URGENT_FIRST, Requirements
from coordinator.tasks import TaskStore

log = logging.getLogger(__name__)

HEADS_PER_CLASS = 64
"""Tasks read from the head of each class queue at a time."""

LOCK_TTL_MS = 5_000
"""A node that dies holding the dispatch lock delays dispatching by at most this long."""

STOP_WAIT_S = 2.0
"""How long stopping waits for a pass in progress before cancelling it."""

AGENT_REFUSALS = ("agent_gone", "agent_unavailable", "agent_full")


class Dispatcher:
    """Runs dispatch passes on wake-ups and on a short timer."""

    def __init__(
        self,
        redis: Redis,
        registry: AgentRegistry,
        store: TaskStore,
        settings: Settings,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._registry = registry
        self._store = store
        self._settings = settings
        self._scripts = TaskScripts(redis)
        self._lock_scripts = Scripts(redis)
        self._liveness_timeout_ms = int(settings.liveness_timeout_s * 1000)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def request(self) -> None:
        """Ask for a pass soon (cheap; many requests coalesce into one pass)."""
        self._wake.set()

    def start(self) -> None:
        """Begin dispatching in the background."""
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="dispatcher")

    async def stop(self) -> None:
        """Stop dispatching and wait for the loop to end (idempotent).

        A pass in progress may finish first (briefly), so that the lock is released rather
        than left to expire, which would pause the other nodes' dispatching.
        """
        self._stopping.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), STOP_WAIT_S)
            except TimeoutError:
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), self._settings.task_timer_interval_s)
            except TimeoutError:
                pass
            if self._stopping.is_set():
                return
            self._wake.clear()
            try:
                await self.dispatch()
            except Exception as exc:
                if not redis_unavailable(exc):
                    log.exception("dispatch failed")
                else:
                    log.debug("dispatch skipped: Redis unavailable (%r)", exc)
                await asyncio.sleep(self._settings.task_timer_interval_s)

    async def dispatch(self) -> int:
        """Make sure a pass runs after this call: here, or on the node holding the lock.

        Returns the number of tasks this node assigned.
        """
        assigned = 0
        token = uuid.uuid4().hex
        turn = [keys.DISPATCH_LOCK, keys.DISPATCH_WANTED]
        if not await self._lock_scripts.dispatch_turn(
            keys=turn, args=["begin", token, LOCK_TTL_MS]
        ):
            return assigned  # the holder will see the flag
        again = True
        try:
            while again and not self._stopping.is_set():
                assigned += await self.dispatch_pass()
                again = bool(
                    await self._lock_scripts.dispatch_turn(
                        keys=turn, args=["end", token, LOCK_TTL_MS]
                    )
                )
        finally:
            if again:  # stopped or failed while holding the lock: free it for the others
                await self._lock_scripts.dispatch_turn(keys=turn, args=["release", token, 0])
        return assigned

    async def dispatch_pass(self) -> int:
        """Assign what can be assigned now; returns the number of assignments."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for priority in PRIORITIES_MOST_URGENT_FIRST:
                pipe.smembers(keys.task_classes(priority.name))
            class_sets = await pipe.execute()
        if not any(class_sets):
            return 0
        free, default_strategy, state = await asyncio.gather(
            self._free_agents(), self._store.strategy(), self._load_balancer_state()
        )
        if not free:
            return 0
        used = {agent_id: agent.active_tasks for agent_id, agent in free.items()}
        before = json.dumps(asdict(state), sort_keys=True)
        assigned = 0
        for priority, classes in zip(PRIORITIES_MOST_URGENT_FIRST, class_sets, strict=True):
            if not free:
                break
            assigned += await self._dispatch_priority(
                priority.name, sorted(classes), free, used, default_strategy, state
            )
        if json.dumps(asdict(state), sort_keys=True) != before:
            await self._redis.set(keys.BALANCER_STATE, json.dumps(asdict(state)))
        return assigned

    async def _dispatch_priority(
        self,
        priority: str,
        classes: Sequence[str],
        free: dict[str, Agent],
        used: dict[str, int],
        default_strategy: Strategy,
        state: BalancerState,
    ) -> int:
        """FIFO over the class queues of one priority, skipping classes no free agent fits."""
        assigned = 0
        after = dict.fromkeys(classes, "-inf")
        eligible_by_class: dict[str, list[Agent]] = {}
        open_classes = list(classes)
        while open_classes and free:
            async with self._redis.pipeline(transaction=False) as pipe:
                for cls in open_classes:
                    pipe.zrangebyscore(
                        keys.task_queue(priority, cls),
                        after[cls],
                        "+inf",
                        start=0,
                        num=HEADS_PER_CLASS,
                        withscores=True,
                    )
                heads = await pipe.execute()
            # A class that filled its batch may have more tasks beyond it: merge the classes
            # only up to the earliest such batch end, so FIFO holds across classes too.
            batch_ends = [e[-1][1] for e in heads if len(e) == HEADS_PER_CLASS]
            horizon = min(batch_ends) if batch_ends else math.inf
            line = sorted(
                (seq, task_id, cls)
                for cls, entries in zip(open_classes, heads, strict=True)
                for task_id, seq in entries
                if seq <= horizon
            )
            if not line:
                break
            exhausted = {
                cls
                for cls, entries in zip(open_classes, heads, strict=True)
                if len(entries) < HEADS_PER_CLASS and (not entries or entries[-1][1] <= horizon)
            }
            details = await self._task_details([task_id for _, task_id, _ in line])
            blocked: set[str] = set()
            for seq, task_id, cls in line:
                after[cls] = f"({seq:.0f}"
                if cls in blocked or task_id not in details:
                    continue
                requirements, strategy, routing_key = details[task_id]
                if cls not in eligible_by_class:
                    eligible_by_class[cls] = [a for a in free.values() if _fits(a, requirements)]
                if await self._assign_one(
                    task_id,
                    requirements,
                    strategy or default_strategy,
                    routing_key,
                    eligible_by_class[cls],
                    free,
                    used,
                    state,
                ):
                    assigned += 1
                elif not any(a.agent_id in free for a in eligible_by_class[cls]):
                    blocked.add(cls)
            open_classes = [c for c in open_classes if c not in blocked and c not in exhausted]
        return assigned

    async def _assign_one(
        self,
        task_id: str,
        requirements: Requirements,
        strategy: Strategy,
        routing_key: str,
        eligible: list[Agent],
        free: dict[str, Agent],
        used: dict[str, int],
        state: BalancerState,
    ) -> bool:
        """Try the strategy's choice, then the next choice if that agent refuses."""
        while True:
            candidates = [_candidate(a, used[a.agent_id]) for a in eligible if a.agent_id in free]
            if not candidates:
                return False
            chosen = choose(
                strategy,
                candidates,
                state,
                preferred_capabilities=requirements.preferred_capabilities,
                routing_key=routing_key,
            )
            reply = await self._scripts.assign_task(
                args=[
                    task_id,
                    chosen.agent_id,
                    secrets.token_hex(8),
                    self._liveness_timeout_ms,
                    self._settings.node_id,
                ]
            )
            verdict, detail = reply[0], reply[1]
            if verdict == "ok":
                if len(reply) > 2 and self._metrics is not None:  # a first attempt
                    self._metrics.observe_submit_to_assignment_ms(int(reply[2]))
                used[chosen.agent_id] += 1
                if used[chosen.agent_id] >= free[chosen.agent_id].max_concurrency:
                    del free[chosen.agent_id]
                log.debug(
                    "task assigned",
                    extra={"task_id": task_id, "agent_id": chosen.agent_id, "attempt": detail},
                )
                return True
            if verdict not in AGENT_REFUSALS:
                return False  # another node took the task, or it was cancelled
            log.debug(
                "agent refused: %s (%s)", verdict, detail, extra={"agent_id": chosen.agent_id}
            )
            del free[chosen.agent_id]

    async def _free_agents(self) -> dict[str, Agent]:
        """ACTIVE, live agents with an open stream on a live node and a free slot."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.AGENTS_CONNECTED)
            pipe.smembers(keys.AGENTS_ACTIVE)
            connected, active = await pipe.execute()
        agent_ids = sorted(set(connected) & active)
        if not agent_ids:
            return {}
        stream_nodes = {agent_id: connected[agent_id].split(" ", 1)[0] for agent_id in agent_ids}
        nodes = sorted(set(stream_nodes.values()))

        async def live_nodes() -> set[str]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for node in nodes:
                    pipe.exists(keys.node_presence(node))
                return {node for node, up in zip(nodes, await pipe.execute(), strict=True) if up}

        # Both reads at once: one round trip of waiting instead of two.
        alive, agents = await asyncio.gather(live_nodes(), self._registry.read_many(agent_ids))
        return {
            agent.agent_id: agent
            for agent in agents
            if stream_nodes[agent.agent_id] in alive
            and agent.status is AgentStatus.ACTIVE
            and agent.active_tasks < agent.max_concurrency
        }

    async def _task_details(
        self, task_ids: Sequence[str]
    ) -> dict[str, tuple[Requirements, Strategy | None, str]]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hmget(keys.task(task_id), "requirements", "strategy", "routing_key")
            rows = await pipe.execute()
        return {
            task_id: (
                _requirements(row[0]),
                Strategy.parse(row[1]) if row[1] else None,
                row[2] or "",
            )
            for task_id, row in zip(task_ids, rows, strict=True)
            if row[0] is not None
        }

    async def _load_balancer_state(self) -> BalancerState:
        raw = await self._redis.get(keys.BALANCER_STATE)
        if not raw:
            return BalancerState()
        data = json.loads(raw)
        return BalancerState(
            round_robin_last=data.get("round_robin_last", ""),
            weighted_current={k: float(v) for k, v in data.get("weighted_current", {}).items()},
        )


@functools.lru_cache(maxsize=4096)
def _requirements(raw: str) -> Requirements:
    """Requirements of a task, decoded once per distinct text (tasks of a class share it)."""
    return Requirements.from_json(raw)


def _fits(agent: Agent, requirements: Requirements) -> bool:
    """Whether an agent meets every requirement of a task."""
    r = requirements
    return (not r.agent_id or agent.agent_id == r.agent_id) and agent.matches(
        agent_type=r.agent_type,
        capabilities=r.capabilities,
        services=r.services,
        labels=r.labels,
        min_health_score=r.min_health_score,
    )


def _candidate(agent: Agent, active_tasks: int) -> Candidate:
    return Candidate(
        agent_id=agent.agent_id,
        active_tasks=active_tasks,
        max_concurrency=agent.max_concurrency,
        weight=agent.weight,
        load_metrics=agent.load_metrics,
        capabilities=frozenset(agent.capabilities),
        avg_duration_ms=agent.avg_duration_ms,
        recent_success=agent.recent_success,
        health_score=agent.health_score,
    )
