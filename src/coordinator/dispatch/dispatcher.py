"""The dispatcher: assigns queued tasks to eligible agents with the balancing strategy.

A pass walks the priorities from URGENT to LOW, and within one priority the tasks in their
place in line (FIFO). Tasks are queued per requirements class as well as per priority, and a
pass looks only at the heads of the class queues: once no free agent fits a class, the pass
skips that whole class, so a task that no agent can take never delays any other task.
A retry goes to another agent than the one whose attempt just expired or failed, unless
that agent is the only one with a free slot that fits it.

Every node runs a dispatcher. The node that queues a task or frees a slot (a submit, a
report, a cancel, a reaper round, a stream opening) asks its own dispatcher for a pass, and
each also runs a pass every few hundred milliseconds.

A submit needs no pass when nothing waits ahead of its task: the node chooses the agent
from its view (a copy of its latest snapshot, with the assignments it made and the slots
its reports freed since; a pass's own snapshot never changes under it), and the script
that creates the task assigns it to that agent instead of queueing it
(``Dispatcher.plan_submit``); if a task waits ahead after all, or the slot went meanwhile,
the script queues the task, and a pass follows.
Otherwise a submit to a node that is not passing asks for the turn and reads the pass's
snapshot in that round trip, so the pass needs one round trip more, not two.

Only the node holding ``coordinator:lock:dispatch`` runs passes; the others set
``coordinator:dispatch:wanted``, and the holder keeps passing until that flag stays clear,
so no request is lost, whichever node it came from, without any pub/sub message. The lock
is an efficiency device, not a safety one: each assignment is one script that re-checks
the task and the agent, so two passes racing (a lock that expired mid-pass), or a pass and
an assignment at submit, can never assign a task twice or overfill a slot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from redis.asyncio import Redis

from coordinator.agents.records import AgentRecord, AgentStatus
from coordinator.agents.registry import RECORD_FIELDS, AgentRegistry
from coordinator.config import Settings
from coordinator.dispatch.balancing import BalancerState, choose
from coordinator.dispatch.slots import (
    AgentSlots,
    Head,
    Snapshot,
    balancer_state,
    elsewhere,
    fits,
    read_heads,
    requirements_of,
)
from coordinator.node.metrics import NodeMetrics
from coordinator.storage import keys
from coordinator.storage.multiplex import MultiplexedConnection
from coordinator.storage.redis_errors import redis_unavailable
from coordinator.storage.scripts import PiggybackCalls, ScriptCall, TaskScripts, run_batch
from coordinator.tasks.calls import SubmitPlan, TaskToQueue
from coordinator.tasks.models import PRIORITIES_MOST_URGENT_FIRST, Requirements, Strategy
from coordinator.tasks.store import TaskStore

log = logging.getLogger(__name__)

HEADS_PER_CLASS = 1000
"""Most tasks read from the head of each class queue at a time (fewer when there are fewer
free slots: a pass reads no task it could not assign)."""

LOCK_TTL_MS = 5_000
"""A node that dies holding the dispatch lock delays dispatching by at most this long."""

STOP_WAIT_S = 2.0
"""How long stopping waits for a pass in progress before cancelling it."""

AT_SUBMIT_STRATEGIES = frozenset(
    {Strategy.LEAST_CONNECTIONS, Strategy.CAPABILITY_BASED, Strategy.CONSISTENT_HASH}
)
"""Strategies whose choice depends only on what a node's view keeps current (the agents,
their registration and their slots): only their tasks are assigned at submit. The others
read metrics that the agents report all the time, or keep a shared turn that passes
persist (round robin): their tasks wait for a pass, which reads everything afresh."""

VIEW_MAX_AGE_S = 0.5
"""A view older than this is not chosen from: the submit takes a pass's way, whose snapshot
is the next view."""

VIEW_REFRESH_S = VIEW_MAX_AGE_S / 2
"""A submit that chooses from a view older than this has it read again in the background,
so that under a steady flow of submits none finds it too old (and takes a pass's way:
about one task in a hundred at 200/s otherwise, which was the p99 of submit→assignment)."""

_PRIORITY_RANK = {priority: rank for rank, priority in enumerate(PRIORITIES_MOST_URGENT_FIRST)}

_SNAPSHOT_ARGS = [
    len(PRIORITIES_MOST_URGENT_FIRST),
    *(priority.name for priority in PRIORITIES_MOST_URGENT_FIRST),
    *RECORD_FIELDS,
]


def snapshot_args(
    turn_action: str = "", token: str = "", heads: int = HEADS_PER_CLASS
) -> list[Any]:
    """The ARGV of ``lua/dispatch_snapshot.lua``: the turn to take first ('begin' or
    'again', or '' for none, or 'view' for none and the agents in any case) with this
    node's token and the lock's time to live, then heads per class, the priorities, the
    agent fields."""
    return [turn_action, token, LOCK_TTL_MS, heads, *_SNAPSHOT_ARGS]


LocalDelivery = Callable[[dict[str, Any]], None]
"""Sends an assignment message of ``lua/assign_task.lua`` to a stream this node holds."""


@dataclass(frozen=True)
class _Turn:
    """A dispatch turn a submit took, with the snapshot read in its round trip."""

    token: str
    requests: int
    """``Dispatcher.request`` calls made before the snapshot was read (it serves them)."""
    snapshot: Snapshot


@dataclass(frozen=True)
class _Waiting:
    """A task at the head of its queue, with what choosing its agent needs."""

    task_id: str
    requirements: Requirements
    strategy: Strategy
    routing_key: str
    eligible: list[AgentRecord]
    cls: str
    avoid_agent_id: str = ""
    """The agent whose attempt of this task just expired or failed: the retry goes to
    another agent when another can take it."""


class Dispatcher:
    """Runs dispatch passes on wake-ups and on a short timer."""

    def __init__(
        self,
        redis: Redis,
        multiplexed: MultiplexedConnection,
        registry: AgentRegistry,
        store: TaskStore,
        settings: Settings,
        metrics: NodeMetrics | None = None,
        deliver: LocalDelivery | None = None,
    ) -> None:
        self._redis = redis
        self._multiplexed = multiplexed
        """Task-script batches: snapshots and assignments go through it."""
        self._metrics = metrics
        self._deliver = deliver
        self._registry = registry
        self._store = store
        self._settings = settings
        self._scripts = TaskScripts(redis)
        self._liveness_timeout_ms = int(settings.liveness_timeout_s * 1000)
        self._wake = asyncio.Event()
        self._requests = 0
        """Requests so far: a pass serves those made before its snapshot was read."""
        self._passing = False
        self._handed: _Turn | None = None
        """A turn taken in a submit's round trip, for the loop to pass from."""
        self._view: Snapshot | None = None
        """The latest snapshot read that had tasks waiting (the others read no agent), or
        read for a view (``_refresh_view``): what tasks are assigned at submit from."""
        self._refreshing: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._releasing: set[asyncio.Task[Any]] = set()

    def request(self) -> None:
        """Ask for a pass soon (cheap; many requests coalesce into one pass)."""
        self._requests += 1
        self._wake.set()

    def plan_submit(self, tasks_to_queue: Sequence[TaskToQueue]) -> SubmitPlan | None:
        """What rides in the round trip that queues ``tasks_to_queue``; None when nothing does
        (then ``request``).

        - An agent for each task whose agent this node can choose from its view (a strategy
          of ``AT_SUBMIT_STRATEGIES``): ``lua/submit_task.lua`` assigns the task to it
          instead of queueing it, if no task waits ahead and the agent can still take it,
          and such a task needs no pass at all.
        - For the other tasks, or when an assignment is refused, a pass: when this node is
          not passing, the turn and the pass's snapshot ride after the submits (the pass
          then needs no round trip of its own before it assigns), otherwise a request.
        """
        if self._task is None or self._stopping.is_set():
            return None
        slots, chosen = self._choose_at_submit(tasks_to_queue)
        calls = []
        turn: tuple[str, int] | None = None
        if len(chosen) < len(tasks_to_queue) and not self._passing and self._handed is None:
            turn = (uuid.uuid4().hex, self._requests)
            calls.append(self._snapshot_call("begin", turn[0]))
        if not chosen and not calls:
            return None
        position = {to_queue.task_id: i for i, to_queue in enumerate(tasks_to_queue)}

        def take_replies(
            submits: list[Any], piggybacked: list[Any], after_the_submits: bool
        ) -> None:
            refused = self._take_assignments_at_submit(
                slots, chosen, [submits[position[task_id]] for task_id, _ in chosen]
            )
            if turn is not None:
                (reply,) = piggybacked
                self._take_turn(*turn, reply, after_the_submits)
            elif refused or len(chosen) < len(tasks_to_queue):
                self.request()

        assignments = {task_id: self._assignment_args(agent_id) for task_id, agent_id in chosen}
        return SubmitPlan(assignments, PiggybackCalls(calls, take_replies))

    def slots_freed(self, agent_ids: Sequence[str]) -> None:
        """This node took reports that ended attempts of these agents: their slots are free
        in the view too. (A report that Redis took before the view's snapshot was read is
        counted twice: the assignment script then refuses the slot, and a pass follows.)"""
        if self._view is not None:
            for agent_id in agent_ids:
                self._view.slots.give_back_slot(agent_id)

    def _choose_at_submit(
        self, tasks_to_queue: Sequence[TaskToQueue]
    ) -> tuple[AgentSlots | None, list[tuple[str, str]]]:
        """An agent for each task that can have one from the view, as a pass would choose
        (most urgent first, then in line), each taking its slot in the view's slot table:
        that table, and the (task_id, agent_id) chosen."""
        view = self._view
        if view is None:
            return None, []
        age = asyncio.get_running_loop().time() - view.read_at
        if age > VIEW_REFRESH_S:
            self._refresh_view_soon()
        if age > VIEW_MAX_AGE_S:
            return None, []
        chosen = []
        for to_queue in sorted(tasks_to_queue, key=lambda t: _PRIORITY_RANK[t.submission.priority]):
            s = to_queue.submission
            strategy = s.strategy or view.default_strategy
            if strategy not in AT_SUBMIT_STRATEGIES or s.requirements.min_health_score:
                continue  # their choice needs what only a fresh snapshot says
            cls = s.requirements.eligibility_class()
            eligible = view.eligible.get(cls)
            if eligible is None:
                eligible = view.eligible[cls] = [
                    a for a in view.slots.agents.values() if fits(a, s.requirements)
                ]
            candidates = view.slots.candidates(eligible)
            if not candidates:
                continue
            agent_id = choose(
                strategy,
                candidates,
                view.state,
                preferred_capabilities=s.requirements.preferred_capabilities,
                routing_key=s.routing_key,
                tie_key=to_queue.task_id,
            ).agent_id
            view.slots.take_slot(agent_id)
            chosen.append((to_queue.task_id, agent_id))
        return view.slots, chosen

    def _take_assignments_at_submit(
        self, slots: AgentSlots | None, chosen: list[tuple[str, str]], submits: list[Any]
    ) -> bool:
        """Record the assignments made at submit from ``slots``, from the replies of the
        submits of their tasks; True when one was refused (its task waits in line: a pass
        must follow)."""
        refused = False
        for (task_id, agent_id), reply in zip(chosen, submits, strict=True):
            detail: Any
            if isinstance(reply, Exception):
                verdict, detail = "error", reply
                refused = True
            elif reply[0] != 1:  # a repeated request_id, or over quota: no new task
                verdict, detail = "task_gone", "not created"
            elif reply[4][0] == "ok":
                self._assigned(task_id, agent_id, reply[4], way="submit")
                continue
            else:
                verdict, detail = reply[4][:2]
                refused = True
            if slots is not None:  # that table still counts the slot as taken
                slots.not_assigned(agent_id, verdict, detail)
        return refused

    def _take_turn(self, token: str, requests: int, reply: Any, after_the_submits: bool) -> None:
        """The reply of the turn and snapshot that rode in a submit's round trip: hand the
        turn to the loop, which passes from that snapshot."""
        if isinstance(reply, Exception):
            self.request()  # the usual way, then
            return
        snapshot = self._parse_snapshot(reply)
        if snapshot is None:
            return  # another node's turn: it saw the 'wanted' flag
        if self._stopping.is_set() or self._handed is not None:
            self._release_soon(token)
            self.request()
            return
        self._handed = _Turn(token, requests, snapshot)
        self._wake.set()
        if not after_the_submits:  # a submit ran after the snapshot: pass again after
            self.request()

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
        handed, self._handed = self._handed, None
        if handed is not None:  # taken by a submit but never passed: free it for the others
            self._release_soon(handed.token)
        refreshing = self._refreshing
        if refreshing is not None:
            refreshing.cancel()
            await asyncio.gather(refreshing, return_exceptions=True)
        await asyncio.gather(*self._releasing, return_exceptions=True)

    def _refresh_view_soon(self) -> None:
        """Read the view again in the background, unless that is under way already."""
        if self._refreshing is None and not self._stopping.is_set():
            self._refreshing = asyncio.create_task(self._refresh_view(), name="view refresh")

    async def _refresh_view(self) -> None:
        """Read a snapshot of the agents (no tasks: a view needs none) and make it the view.
        Submits sent before it are counted in it; one sent meanwhile may find a slot it took
        free again in the new view, and its script then refuses the agent: a pass follows."""
        try:
            await self._snapshot("view")
        except Exception as exc:  # a submit finding the view too old takes a pass's way
            log.debug("view not refreshed: %r", exc)
        finally:
            self._refreshing = None

    def _release_soon(self, token: str) -> None:
        """Hand back a turn that will not be passed, in the background."""
        task = asyncio.create_task(self._release(token))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release(self, token: str) -> None:
        try:
            await self._scripts.dispatch_turn(args=["release", token, 0])
        except Exception as exc:  # the node is closing Redis: the lock expires by itself
            log.debug("dispatch turn not handed back (it expires): %r", exc)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), self._settings.task_timer_interval_s)
            except TimeoutError:
                pass
            if self._stopping.is_set():
                return
            self._wake.clear()
            handed, self._handed = self._handed, None
            try:
                await self.dispatch(handed)
            except Exception as exc:
                if not redis_unavailable(exc):
                    log.exception("dispatch failed")
                else:
                    log.debug("dispatch skipped: Redis unavailable (%r)", exc)
                await asyncio.sleep(self._settings.task_timer_interval_s)

    async def dispatch(self, handed: _Turn | None = None) -> int:
        """Make sure a pass runs after this call: here, or on the node holding the lock.
        With ``handed`` (a turn a submit took, see ``offer_turn``), pass from its snapshot.

        Returns the number of tasks this node assigned.
        """
        self._passing = True
        try:
            return await self._take_turns(handed)
        finally:
            self._passing = False

    async def _take_turns(self, handed: _Turn | None) -> int:
        assigned = 0
        if handed is None:
            token, served = uuid.uuid4().hex, self._requests
            # Asking for the turn and reading the snapshot are one step: the holder needs
            # the snapshot at once, and another node's request reads nothing.
            snapshot = await self._snapshot("begin", token)
            if snapshot is None:
                return assigned  # the holder will see the flag
        else:
            token, served, snapshot = handed.token, handed.requests, handed.snapshot
        holding = True
        try:
            while snapshot is not None and not self._stopping.is_set():
                assigned += await self._pass(snapshot)
                if self._requests != served:  # asked on this node meanwhile: again at once
                    served = self._requests
                    self._wake.clear()
                    snapshot = await self._snapshot("again", token)
                    holding = snapshot is not None
                elif await self._scripts.dispatch_turn(args=["end", token, LOCK_TTL_MS]):
                    snapshot = await self._snapshot()
                else:
                    holding, snapshot = False, None
        finally:
            if holding:  # stopped or failed while holding the lock: free it for the others
                await self._scripts.dispatch_turn(args=["release", token, 0])
        return assigned

    async def dispatch_pass(self) -> int:
        """Assign what can be assigned now, without taking the turn; returns the number of
        assignments."""
        snapshot = await self._snapshot()
        assert snapshot is not None
        return await self._pass(snapshot)

    async def _snapshot(self, turn_action: str = "", token: str = "") -> Snapshot | None:
        """Read what a pass starts from; with ``turn_action`` ('begin' or 'again') and this
        node's token, take the turn in the same step: None when another node has it. With
        'view', read the agents only, for the view."""
        (reply,) = await run_batch(self._multiplexed, [self._snapshot_call(turn_action, token)])
        return self._parse_snapshot(reply, for_view=turn_action == "view")

    def _snapshot_call(self, turn_action: str, token: str) -> ScriptCall:
        heads = 0 if turn_action == "view" else HEADS_PER_CLASS  # a view needs no tasks
        return (self._scripts.dispatch_snapshot, [], snapshot_args(turn_action, token, heads))

    def _parse_snapshot(self, reply: Any, for_view: bool = False) -> Snapshot | None:
        """The snapshot from ``lua/dispatch_snapshot.lua``'s reply; None without the turn.
        It becomes the view when it was read ``for_view`` or had tasks waiting."""
        if not reply:
            return None
        now_ms, stored_strategy, raw_state, class_sets, rows, heads, heads_limit = reply
        agents = {
            agent.agent_id: agent
            for agent in self._registry.decode_records(rows, int(now_ms))
            if agent.status is AgentStatus.ACTIVE
        }
        snapshot = Snapshot(
            class_sets=[sorted(c) for c in class_sets],
            heads=[
                dict(zip(classes, [read_heads(e) for e in entries], strict=False))
                for classes, entries in zip(class_sets, heads, strict=True)
            ],
            heads_limit=int(heads_limit),
            slots=AgentSlots(agents),
            default_strategy=self._store.strategy_or_default(stored_strategy),
            state=balancer_state(raw_state),
            read_at=asyncio.get_running_loop().time(),
        )
        if for_view or any(class_sets):  # else the script read no agent: no view
            # The view is a copy with its own slots: submits and reports change the view's
            # all the time, and must not change a snapshot under a pass (one taken with no
            # free slot read no task; a slot freed in it later made its pass look for them).
            self._view = dataclasses.replace(
                snapshot, slots=AgentSlots(agents), state=balancer_state(raw_state), eligible={}
            )
        return snapshot

    async def _pass(self, snapshot: Snapshot) -> int:
        """One pass from ``snapshot``: returns the number of assignments."""
        slots = snapshot.slots
        if snapshot.heads_limit <= 0 or not slots.free:
            # No task was read: nothing waited, or no slot was free when the snapshot was
            # read. A slot freed since then asks for a pass of its own (its report wakes the
            # dispatcher when tasks wait), which reads the tasks.
            return 0
        state = snapshot.state
        before = json.dumps(asdict(state), sort_keys=True)
        assigned = 0
        for priority, classes, heads in zip(
            PRIORITIES_MOST_URGENT_FIRST, snapshot.class_sets, snapshot.heads, strict=True
        ):
            if not slots.free:
                break
            assigned += await self._dispatch_priority(
                priority.name,
                classes,
                (heads, snapshot.heads_limit),
                slots,
                snapshot.default_strategy,
                state,
            )
        if json.dumps(asdict(state), sort_keys=True) != before:
            await self._redis.set(keys.BALANCER_STATE, json.dumps(asdict(state)))
        return assigned

    async def _dispatch_priority(
        self,
        priority: str,
        classes: Sequence[str],
        first_heads: tuple[dict[str, list[Head]], int],
        slots: AgentSlots,
        default_strategy: Strategy,
        state: BalancerState,
    ) -> int:
        """FIFO over the class queues of one priority, skipping classes no free agent fits.
        ``first_heads`` are the snapshot's heads of each class with the most it read of one;
        later ones are read here, no more per class than the free slots left."""
        assigned = 0
        after = dict.fromkeys(classes, "-inf")
        eligible_by_class: dict[str, list[AgentRecord]] = {}
        open_classes = list(classes)
        snapshot_heads, limit = first_heads
        heads = [snapshot_heads.get(cls, []) for cls in open_classes]
        while open_classes and slots.free:
            # A class that filled its batch may have more tasks beyond it: merge the classes
            # only up to the earliest such batch end, so FIFO holds across classes too.
            batch_ends = [e[-1][1] for e in heads if e and len(e) == limit]
            horizon = min(batch_ends) if batch_ends else math.inf
            in_line = sorted(
                (seq, task_id, cls, details)
                for cls, entries in zip(open_classes, heads, strict=True)
                for task_id, seq, *details in entries
                if seq <= horizon
            )
            if not in_line:
                break
            exhausted = {
                cls
                for cls, entries in zip(open_classes, heads, strict=True)
                if len(entries) < limit and (not entries or entries[-1][1] <= horizon)
            }
            waiting: list[_Waiting] = []
            for seq, task_id, cls, (raw_requirements, raw_strategy, routing_key, avoid) in in_line:
                after[cls] = f"({seq:.0f}"
                if not raw_requirements:
                    continue  # deleted meanwhile
                requirements = requirements_of(raw_requirements)
                strategy = Strategy.parse(raw_strategy) if raw_strategy else None
                if cls not in eligible_by_class:
                    eligible_by_class[cls] = [
                        a for a in slots.free.values() if fits(a, requirements)
                    ]
                waiting.append(
                    _Waiting(
                        task_id,
                        requirements,
                        strategy or default_strategy,
                        routing_key,
                        eligible_by_class[cls],
                        cls,
                        avoid,
                    )
                )
            assigned += await self._assign_in_order(waiting, slots, state)
            open_classes = [
                c for c in open_classes if c not in slots.blocked and c not in exhausted
            ]
            limit = min(HEADS_PER_CLASS, slots.free_slots())
            if not open_classes or limit <= 0:
                break  # the heads in hand are all handled: assigned, gone or blocked
            replies = await self._scripts.queue_heads(
                args=[
                    priority,
                    limit,
                    *(item for cls in open_classes for item in (cls, after[cls])),
                ]
            )
            heads = [read_heads(entries) for entries in replies]
        return assigned

    async def _assign_in_order(
        self, waiting: list[_Waiting], slots: AgentSlots, state: BalancerState
    ) -> int:
        """Choose an agent for each waiting task in turn, then send every assignment in one
        round trip. A task whose agent refused (its slot went meanwhile) gets the next
        choice in another round; a class with no free eligible agent left is blocked."""
        assigned = 0
        while waiting:
            chosen: list[tuple[_Waiting, str]] = []
            for w in waiting:
                if w.cls in slots.blocked:
                    continue
                candidates = slots.candidates(w.eligible)
                if not candidates:
                    slots.blocked.add(w.cls)
                    continue
                if w.avoid_agent_id and len(candidates) > 1:
                    candidates = elsewhere(candidates, w.avoid_agent_id)
                agent_id = choose(
                    w.strategy,
                    candidates,
                    state,
                    preferred_capabilities=w.requirements.preferred_capabilities,
                    routing_key=w.routing_key,
                    tie_key=w.task_id,
                ).agent_id
                slots.take_slot(agent_id)
                chosen.append((w, agent_id))
            if not chosen:
                break
            replies = await run_batch(
                self._multiplexed,
                [self._assign_call(w.task_id, agent_id) for w, agent_id in chosen],
            )
            waiting = []
            for (w, agent_id), reply in zip(chosen, replies, strict=True):
                verdict = reply[0]
                if verdict == "ok":
                    assigned += 1
                    self._assigned(w.task_id, agent_id, reply, way="pass")
                    self._taken_in_view(slots, agent_id)
                    continue
                if slots.not_assigned(agent_id, verdict, reply[1]):
                    waiting.append(w)  # try its next choice
        return assigned

    def _taken_in_view(self, slots: AgentSlots, agent_id: str) -> None:
        """A pass assigned a task to ``agent_id``: its slot is taken in the view too (the
        view is the pass's snapshot's copy, or a later one; a later one that already
        counts the assignment counts it twice until it is read again: a submit then
        chooses another agent, or its task waits for a pass)."""
        view = self._view
        if view is not None and view.slots is not slots:
            view.slots.take_slot(agent_id)

    def _assign_call(self, task_id: str, agent_id: str) -> ScriptCall:
        """``lua/assign_task.lua`` for one task and agent."""
        return (self._scripts.assign_task, [], [task_id, *self._assignment_args(agent_id)])

    def _assignment_args(self, agent_id: str) -> list[Any]:
        """The arguments of an assignment to ``agent_id``: ``lua/assign_task.lua``'s
        ARGV[2..6], which are ``lua/submit_task.lua``'s ARGV[7..11]."""
        return [
            agent_id,
            secrets.token_hex(8),
            self._liveness_timeout_ms,
            self._settings.node_id,
            "1" if self._deliver is not None else "",
        ]

    def _assigned(self, task_id: str, agent_id: str, reply: list[Any], way: str) -> None:
        """Record one assignment made at submit or by a pass (``way``); send it at once when
        this node holds the agent's stream."""
        if self._metrics is not None:
            self._metrics.count_assignment(way)
            if len(reply) > 2 and int(reply[2]) >= 0:  # a first attempt
                self._metrics.observe_submit_to_assignment_ms(int(reply[2]))
        if len(reply) > 3 and self._deliver is not None:
            self._deliver(json.loads(reply[3]))
        log.debug(
            "task assigned",
            extra={"task_id": task_id, "agent_id": agent_id, "attempt": reply[1], "way": way},
        )
