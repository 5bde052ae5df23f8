"""One dispatch pass: from a snapshot, choose an agent for each task at the head of its
queue, most urgent first and FIFO within a priority, and send the assignments.

Tasks are queued per requirements class as well as per priority, and a pass looks only at
the heads of the class queues: once no free agent fits a class, the pass skips that whole
class, so a task that no agent can take never delays any other task. A retry goes to
another agent than the one whose attempt just expired or failed, unless that agent is the
only one with a free slot that fits it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from redis.asyncio import Redis

from coordinator.agents.records import AgentRecord
from coordinator.dispatch.assignments import Assignments
from coordinator.dispatch.balancing import BalancerState, choose
from coordinator.dispatch.script_calls import HEADS_PER_CLASS, AssignTaskCall, Head, QueueHeadsCall
from coordinator.dispatch.slots import (
    AgentSlots,
    Snapshot,
    elsewhere,
    fits,
    requirements_of,
)
from coordinator.dispatch.view import NodeView
from coordinator.storage import keys
from coordinator.storage.multiplex import MultiplexedConnection
from coordinator.storage.scripts import TaskScripts, run_batch
from coordinator.strategies import Strategy
from coordinator.tasks.models import PRIORITIES_MOST_URGENT_FIRST, Requirements
from coordinator.tasks.script_calls import AssignReply


@dataclass(frozen=True, slots=True)
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
    fallback: bool = False
    """The assignment script found no agent for it within its walk (``choose_by``): the
    strategy chooses among the snapshot's agents, as it does for the other strategies."""

    def choose_by(self) -> str:
        """How ``lua/assign_task.lua`` chooses this task's agent itself, over every free
        eligible agent of its class (``lua/rotation_lib.lua``): 'round_robin', or
        'consistent_hash' for a task with a routing key; '' when this node chooses (the
        other strategies, a pinned agent or a min_health_score, which only the node
        computes, or a fallback)."""
        r = self.requirements
        if self.fallback or r.agent_id or r.min_health_score:
            return ""
        if self.strategy is Strategy.ROUND_ROBIN or (
            self.strategy is Strategy.CONSISTENT_HASH and self.routing_key
        ):
            return self.strategy.name.lower()
        return ""


class Passes:
    """Runs passes for the dispatcher (which decides when, and holds the turn)."""

    def __init__(
        self,
        redis: Redis,
        multiplexed: MultiplexedConnection,
        scripts: TaskScripts,
        assignments: Assignments,
        view: NodeView,
        streams_here: Callable[[str], bool] | None = None,
    ) -> None:
        self._redis = redis
        self._multiplexed = multiplexed
        self._scripts = scripts
        self._assignments = assignments
        self._view = view
        self._streams_here = streams_here
        """Whether this node holds an agent's stream (least connections keeps the
        assignments it can on this node: ``AgentSlots.candidates``)."""

    async def run(self, snapshot: Snapshot) -> int:
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
            assigned += await self._dispatch_priority(priority.name, classes, heads, snapshot)
        if json.dumps(asdict(state), sort_keys=True) != before:
            await self._redis.set(keys.BALANCER_STATE, json.dumps(asdict(state)))
        return assigned

    async def _dispatch_priority(
        self,
        priority: str,
        classes: Sequence[str],
        first_heads: dict[str, list[Head]],
        snapshot: Snapshot,
    ) -> int:
        """FIFO over the class queues of one priority, skipping classes no free agent fits.
        ``first_heads`` are the snapshot's heads of each class (at most its ``heads_limit``
        of one); later ones are read here, no more per class than the free slots left."""
        slots, state, default_strategy = snapshot.slots, snapshot.state, snapshot.default_strategy
        assigned = 0
        after = dict.fromkeys(classes, "-inf")
        open_classes = list(classes)
        limit = snapshot.heads_limit
        heads = [first_heads.get(cls, []) for cls in open_classes]
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
            waiting = _waiting(in_line, after, snapshot.eligible, slots, default_strategy)
            assigned += await self._assign_in_order(waiting, slots, state)
            open_classes = [
                c for c in open_classes if c not in slots.blocked and c not in exhausted
            ]
            limit = min(HEADS_PER_CLASS, slots.free_slots())
            if not open_classes or limit <= 0:
                break  # the heads in hand are all handled: assigned, gone or blocked
            call = QueueHeadsCall(priority, limit, {cls: after[cls] for cls in open_classes})
            heads = call.parse(await self._scripts.queue_heads(args=call.args()))
        return assigned

    async def _assign_in_order(
        self, waiting: list[_Waiting], slots: AgentSlots, state: BalancerState
    ) -> int:
        """Choose an agent for each waiting task in turn (or let the assignment script
        choose: ``_Waiting.choose_by``), then send every assignment in one round trip. A
        task whose agent refused (its slot went meanwhile) gets the next choice in another
        round; a class with no free eligible agent left is blocked."""
        assigned = 0
        script = self._scripts.assign_task
        while waiting:
            chosen: list[tuple[_Waiting, str, str]] = []
            for w in waiting:
                if w.cls in slots.blocked:
                    continue
                choice = self._choose(w, slots, state)
                if choice is None:
                    slots.blocked.add(w.cls)
                    continue
                chosen.append((w, *choice))
            if not chosen:
                break
            replies = await run_batch(
                self._multiplexed,
                [
                    (
                        script,
                        (),
                        AssignTaskCall(w.task_id, self._assignments.to(agent_id), by).args(),
                    )
                    for w, agent_id, by in chosen
                ],
            )
            waiting = []
            for (w, agent_id, by), raw in zip(chosen, replies, strict=True):
                reply = AssignReply.parse(raw)
                if reply.ok:
                    assigned += 1
                    self._took(w.task_id, reply.agent_id or agent_id, reply, slots, by)
                    continue
                again = self._refused(w, agent_id, reply, slots, by)
                if again is not None:
                    waiting.append(again)  # try its next choice
        return assigned

    def _choose(
        self, w: _Waiting, slots: AgentSlots, state: BalancerState
    ) -> tuple[str, str] | None:
        """(agent_id, '') as the strategy chooses among the snapshot's least loaded free
        eligible agents, its slot taken; ('', choose_by) for the script to choose; None
        when the snapshot has no free agent for the class."""
        here = self._streams_here if w.strategy is Strategy.LEAST_CONNECTIONS else None
        candidates = slots.candidates(w.cls, w.eligible, here)
        if not candidates:
            return None
        by = w.choose_by()
        if by:
            return "", by
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
        return agent_id, ""

    def _took(
        self, task_id: str, agent_id: str, reply: AssignReply, slots: AgentSlots, by: str
    ) -> None:
        """An assignment made: recorded, and its slot taken in the view (and in the pass's
        slots when the script chose the agent)."""
        if by:
            slots.take_slot(agent_id)
        self._assignments.record(task_id, agent_id, reply, way="pass")
        self._view.taken_by_pass(slots, agent_id)

    @staticmethod
    def _refused(
        w: _Waiting, agent_id: str, reply: AssignReply, slots: AgentSlots, by: str
    ) -> _Waiting | None:
        """What to try next for a task whose assignment was refused: its next choice after
        a refusal of its agent, the snapshot's agents after the script's walk found none
        near, or nothing (the task went, or no agent of its class is free)."""
        if not by:
            return w if slots.not_assigned(agent_id, reply.verdict, reply.detail) else None
        if reply.verdict == "walk_bound":
            return dataclasses.replace(w, fallback=True)
        if reply.verdict == "no_free_agent":
            slots.blocked.add(w.cls)
        return None


def _waiting(
    in_line: list[tuple[float, str, str, list[str]]],
    after: dict[str, str],
    eligible_by_class: dict[str, list[AgentRecord]],
    slots: AgentSlots,
    default_strategy: Strategy,
) -> list[_Waiting]:
    """The heads ``in_line`` (seq, task_id, class, details), in order, with what choosing
    their agents needs; moves each class's ``after`` past its heads, and fills in
    ``eligible_by_class`` (the snapshot's, shared with the view made of it: keyed by
    requirements class, whichever partition queued the task) for a class met the first
    time."""
    waiting: list[_Waiting] = []
    for seq, task_id, cls, (raw_requirements, raw_strategy, routing_key, avoid) in in_line:
        after[cls] = f"({seq:.0f}"
        if not raw_requirements:
            continue  # deleted meanwhile
        requirements = requirements_of(raw_requirements)
        strategy = Strategy.parse(raw_strategy) if raw_strategy else None
        requirements_class = requirements.eligibility_class()
        eligible = eligible_by_class.get(requirements_class)
        if eligible is None:
            eligible = eligible_by_class[requirements_class] = [
                a for a in slots.agents.values() if fits(a, requirements)
            ]
        waiting.append(
            _Waiting(
                task_id,
                requirements,
                strategy or default_strategy,
                routing_key,
                eligible,
                cls,
                avoid,
            )
        )
    return waiting
