"""What a dispatch pass and a node's view choose from: the agents and their slots as a
snapshot saw them (and as the node changed them since), the heads of the class queues, and
the small decoders of what ``lua/dispatch_snapshot.lua`` read. No Redis here: the
dispatcher reads and writes, these keep count."""

from __future__ import annotations

import bisect
import functools
import heapq
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from coordinator.agents.records import AgentRecord
from coordinator.dispatch.balancing import BalancerState, Candidate
from coordinator.dispatch.script_calls import Head
from coordinator.strategies import Strategy
from coordinator.tasks.models import Requirements

log = logging.getLogger(__name__)

CANDIDATES_PER_TASK = 16
"""The most agents a strategy chooses among for one task: the least loaded free eligible
agents of the snapshot (the strategy's best of those; every one in a cluster with no more),
so that choosing costs the same with 10 agents or 10,000."""

AGENT_REFUSALS = ("agent_gone", "agent_unavailable", "agent_full")
"""Refusals of ``lua/assign_task.lua`` about the agent, not the task: it is not chosen again
in the pass."""


@dataclass
class AgentSlots:
    """What a node knows of the agents' slots since a snapshot: who has a free slot and how
    many slots each uses, counting the assignments made since (by its passes and at
    submit) and the slots its reports freed. Only the scripts know for sure: they check
    again."""

    agents: dict[str, AgentRecord]
    """The ACTIVE, live agents of the snapshot with an open stream: the least loaded
    available ones of each class with tasks waiting (or of all, for a view)."""
    blocked: set[str] = field(default_factory=set)
    """Requirements classes that no free agent fits any more in the pass under way."""
    refused: set[str] = field(default_factory=set)
    """Agents whose script refused them (gone, unavailable or full): not chosen again."""

    def __post_init__(self) -> None:
        self.used = {agent_id: agent.active_tasks for agent_id, agent in self.agents.items()}
        self.free = {
            agent_id: agent
            for agent_id, agent in self.agents.items()
            if agent.active_tasks < agent.max_concurrency
        }
        self._candidates: dict[str, Candidate] = {}
        self._by_load: dict[tuple[str, bool], _LoadOrder] = {}

    def candidates(
        self,
        cls: str,
        eligible: list[AgentRecord],
        here: Callable[[str], bool] | None = None,
    ) -> list[Candidate]:
        """The strategy's view of the least loaded eligible agents (of requirements class
        ``cls``) that still have a free slot, at most ``CANDIDATES_PER_TASK``, least loaded
        first; each built once per change of its slots, not once per task. A heap per class
        keeps the order, its top ``CANDIDATES_PER_TASK`` off it: a task that takes a
        slot costs O(CANDIDATES_PER_TASK + log agents), not O(agents).

        With ``here`` (whether this node holds an agent's stream; least connections): the
        least loaded of those streaming here when the least loaded of them is within one
        task of the least loaded of all (relative to its slots). So an assignment stays on
        the node that made it (no pub/sub hop, and two nodes passing at once fill
        different agents instead of racing for the same slots), while no agent ends up
        more than a task or two above another."""
        order = self._order(cls, eligible)
        chosen = []
        if here is not None:
            near = self._least_loaded(self._order(cls, eligible, here))
            lowest = self._lowest_load(order)
            if near and lowest is not None:
                slack = 1 / max(self.agents[near[0]].max_concurrency, 1)
                if self._load(near[0])[0] <= lowest + slack:
                    chosen = near
        if not chosen:
            chosen = self._least_loaded(order)
        out = []
        for agent_id in chosen:
            candidate = self._candidates.get(agent_id)
            if candidate is None:
                agent = self.agents[agent_id]
                candidate = self._candidates[agent_id] = candidate_of(agent, self.used[agent_id])
            out.append(candidate)
        return out

    def _order(
        self, cls: str, eligible: list[AgentRecord], here: Callable[[str], bool] | None = None
    ) -> _LoadOrder:
        """The heap by load of the class's agents (of those streaming here, with ``here``)."""
        key = (cls, here is not None)
        order = self._by_load.get(key)
        if order is None:
            members = {
                a.agent_id
                for a in eligible
                if a.agent_id in self.agents and (here is None or here(a.agent_id))
            }
            order = self._by_load[key] = _LoadOrder([(*self._load(a), a) for a in members], members)
            heapq.heapify(order.heap)
        return order

    def _load(self, agent_id: str) -> tuple[float, int]:
        """The least connections order: slot use, then active tasks."""
        used = self.used[agent_id]
        return used / max(self.agents[agent_id].max_concurrency, 1), used

    def _least_loaded(self, order: _LoadOrder) -> list[str]:
        """The free agents at the top of ``order``, at most ``CANDIDATES_PER_TASK``, least
        loaded first. They stay off the heap, in ``order.top``, until their load changes:
        a task that takes one agent's slot costs one entry out and one in, not
        ``CANDIDATES_PER_TASK`` of each. A heap entry whose agent's load changed since is
        pushed again with its load now; the full ones sink below every free one (slot
        use 1)."""
        self._refresh_top(order)
        heap, top = order.heap, order.top
        on_top = {entry[2] for entry in top}
        free = self._trim_top(order, sum(entry[2] in self.free for entry in top))
        while heap and heap[0][0] < 1 and (free < CANDIDATES_PER_TASK or heap[0] < top[-1]):
            use, used, agent_id = heapq.heappop(heap)
            if agent_id in on_top:
                continue  # a copy pushed when its slot came free
            load = self._load(agent_id)
            if load != (use, used):
                heapq.heappush(heap, (*load, agent_id))
                continue
            bisect.insort(top, (use, used, agent_id))
            on_top.add(agent_id)
            free = self._trim_top(order, free + (agent_id in self.free))
        # A refused agent stays on top in its place, never chosen.
        return [agent_id for _, _, agent_id in top if agent_id in self.free]

    def _refresh_top(self, order: _LoadOrder) -> None:
        """The entries of ``order.top`` whose agent's load changed go back to the heap
        (an agent's load changes with its slots used alone: compared first, cheaply)."""
        fresh = []
        used = self.used
        for entry in order.top:
            agent_id = entry[2]
            if used[agent_id] == entry[1]:
                fresh.append(entry)
            else:
                heapq.heappush(order.heap, (*self._load(agent_id), agent_id))
        order.top = fresh

    def _trim_top(self, order: _LoadOrder, free: int) -> int:
        """Back to the heap, the entries of ``order.top`` after its
        ``CANDIDATES_PER_TASK``-th free agent; the number of free agents left on top."""
        top = order.top
        while top and (
            free > CANDIDATES_PER_TASK
            or (free == CANDIDATES_PER_TASK and top[-1][2] not in self.free)
        ):
            entry = top.pop()
            free -= entry[2] in self.free
            heapq.heappush(order.heap, entry)
        return free

    def _lowest_load(self, order: _LoadOrder) -> float | None:
        """The slot use of the least loaded free agent of ``order`` (None: none is free),
        fixing only the stale entries it meets: cheaper than ``_least_loaded``."""
        self._refresh_top(order)
        lowest = next((use for use, _, a in order.top if a in self.free), None)
        heap = order.heap
        skipped: list[tuple[float, int, str]] = []
        while heap and heap[0][0] < 1 and (lowest is None or heap[0][0] < lowest):
            use, used, agent_id = heap[0]
            load = self._load(agent_id)
            if load != (use, used):
                heapq.heapreplace(heap, (*load, agent_id))
            elif agent_id in self.free:
                lowest = use
                break
            else:  # refused: kept for its place, never chosen
                skipped.append(heapq.heappop(heap))
        for entry in skipped:
            heapq.heappush(heap, entry)
        return lowest

    def free_slots(self) -> int:
        return sum(agent.max_concurrency - self.used[a] for a, agent in self.free.items())

    def take_slot(self, agent_id: str) -> None:
        if agent_id not in self.used:
            return  # not an agent of the snapshot (a view read after it left)
        self.used[agent_id] += 1
        self._candidates.pop(agent_id, None)
        if self.used[agent_id] >= self.agents[agent_id].max_concurrency:
            self.free.pop(agent_id, None)

    def give_back_slot(self, agent_id: str) -> None:
        """A slot is free again (unless the agent was refused): an assignment did not
        happen, or an attempt ended."""
        if self.used.get(agent_id, 0) <= 0:
            return  # not an agent of the snapshot, or its report was in it already
        self.used[agent_id] -= 1
        self._candidates.pop(agent_id, None)
        for order in self._by_load.values():  # it moves up: a copy where it now belongs
            if agent_id in order.members:
                heapq.heappush(order.heap, (*self._load(agent_id), agent_id))
        agent = self.agents[agent_id]
        if agent_id not in self.refused and self.used[agent_id] < agent.max_concurrency:
            self.free[agent_id] = agent

    def refuse(self, agent_id: str) -> None:
        self.refused.add(agent_id)
        self.free.pop(agent_id, None)

    def not_assigned(self, agent_id: str, verdict: str, detail: Any) -> bool:
        """``lua/assign_task.lua`` refused an assignment to ``agent_id``: its slot is free
        again, unless the refusal was about the agent, which is then not chosen again.
        True for such an agent refusal (the task may go to its next choice)."""
        self.give_back_slot(agent_id)
        if verdict not in AGENT_REFUSALS:
            return False  # about the task: another node took it, or it was cancelled
        log.debug("agent refused: %s (%s)", verdict, detail, extra={"agent_id": agent_id})
        self.refuse(agent_id)
        return True


@dataclass
class _LoadOrder:
    """The eligible agents of one requirements class as a heap by load (slot use, active
    tasks, agent_id); entries go stale as slots change, and are fixed when met."""

    heap: list[tuple[float, int, str]]
    members: set[str]
    top: list[tuple[float, int, str]] = field(default_factory=list)
    """The least loaded entries, off the heap and sorted: the free agents a strategy
    chooses among (and refused ones between them)."""


@dataclass
class Snapshot:
    """What a pass starts from (``lua/dispatch_snapshot.lua``). A copy of the latest one a
    node read, with slots of its own, is its view, which tasks are assigned at submit from
    (``Dispatcher.plan_submit``): a pass's snapshot changes only with the pass's own
    assignments."""

    class_sets: list[list[str]]
    """The requirements classes with tasks waiting, per priority, most urgent first."""
    heads: list[dict[str, list[Head]]]
    """The first tasks of each of those classes, per priority."""
    heads_limit: int
    """The most tasks read per class: a class with fewer has no more."""
    slots: AgentSlots
    """The ACTIVE, live agents with an open stream on a live node, and their slots."""
    default_strategy: Strategy
    state: BalancerState
    read_at: float
    """The event loop's time when it was read."""
    more_agents: bool = False
    """Whether available agents were left unread: ``slots`` holds the least loaded of
    them only, and a pass that used those up passes again."""
    partitions: tuple[str, ...] = ()
    """The partitions whose dispatch turn the node holds for this pass (``classes`` are
    theirs); none for a snapshot read without the turns."""
    eligible: dict[str, list[AgentRecord]] = field(default_factory=dict)
    """Per requirements class, the agents of the snapshot that fit it (assigning at submit:
    ``slots`` says which of them still have a slot)."""


def elsewhere(candidates: list[Candidate], avoid_agent_id: str) -> list[Candidate]:
    """The candidates but ``avoid_agent_id`` (a retry's last agent), unless it is the only
    one: a retry goes back to it only when no other eligible agent has a free slot now.
    (Waiting for another would hold the task for an agent that may never come.)"""
    return [c for c in candidates if c.agent_id != avoid_agent_id] or candidates


def balancer_state(raw: str | None) -> BalancerState:
    """The strategies' shared state as stored in Redis (round-robin and weighted turns)."""
    if not raw:
        return BalancerState()
    data = json.loads(raw)
    return BalancerState(
        round_robin_last=data.get("round_robin_last", ""),
        weighted_current={k: float(v) for k, v in data.get("weighted_current", {}).items()},
    )


@functools.lru_cache(maxsize=4096)
def requirements_of(raw: str) -> Requirements:
    """Requirements of a task, decoded once per distinct text (tasks of a class share it)."""
    return Requirements.from_json(raw)


def fits(agent: AgentRecord, requirements: Requirements) -> bool:
    """Whether an agent meets every requirement of a task."""
    r = requirements
    return (not r.agent_id or agent.agent_id == r.agent_id) and agent.matches(
        agent_type=r.agent_type,
        capabilities=r.capabilities,
        services=r.services,
        labels=r.labels,
        min_health_score=r.min_health_score,
    )


def candidate_of(agent: AgentRecord, active_tasks: int) -> Candidate:
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
