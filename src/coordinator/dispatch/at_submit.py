"""Assignment at submit: a submit needs no pass when nothing waits ahead of its task. The
node chooses the agent from its view (``NodeView``), and ``lua/submit_task.lua`` assigns
the task to that agent instead of queueing it; if a task waits ahead after all, or the slot
went meanwhile, the script queues the task, and a pass follows."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from coordinator.dispatch.assignments import Assignments
from coordinator.dispatch.balancing import choose
from coordinator.dispatch.slots import AgentSlots, fits
from coordinator.dispatch.view import NodeView
from coordinator.strategies import Strategy
from coordinator.tasks.calls import TaskToQueue
from coordinator.tasks.models import PRIORITIES_MOST_URGENT_FIRST
from coordinator.tasks.script_calls import SubmitReply

AT_SUBMIT_STRATEGIES = frozenset(
    {Strategy.LEAST_CONNECTIONS, Strategy.CAPABILITY_BASED, Strategy.CONSISTENT_HASH}
)
"""Strategies whose choice depends only on what a node's view keeps current (the agents,
their registration and their slots): only their tasks are assigned at submit (consistent
hash only without a routing key: the ring of every agent is in Redis, and a pass's
assignment script walks it). The others read metrics that the agents report all the
time, or keep a rotation in Redis (round robin): their tasks wait for a pass, which reads
everything afresh."""

VIEW_MAX_AGE_S = 0.5
"""A view older than this is not chosen from: the submit takes a pass's way, whose snapshot
is the next view."""

VIEW_REFRESH_S = VIEW_MAX_AGE_S / 2
"""A submit that chooses from a view older than this has it read again in the background,
so that under a steady flow of submits none finds it too old (and takes a pass's way:
about one task in a hundred at 200/s otherwise, which was the p99 of submit→assignment)."""

VIEW_USED_UP_REFRESH_S = 0.05
"""A view in which a submit found no free agent for a task is read again once it is older
than this, rather than VIEW_REFRESH_S: one task to each of thousands of agents uses up the
view's free agents in a few submits, and the tasks that found none wait for a pass, all on
the node holding the turn."""

PROBE_TIMEOUT_S = 1.0
"""A probe (``SubmitAssigner``) whose reply never came, its submit having failed before its
round trip, stops counting as under way after this long."""

_PRIORITY_RANK = {priority: rank for rank, priority in enumerate(PRIORITIES_MOST_URGENT_FIRST)}

Chosen = list[tuple[str, str, int]]
"""(task_id, agent_id, priority rank) of each task assigned at submit, in the order chosen."""


class SubmitAssigner:
    """Chooses agents for tasks about to be queued, and takes what the submits' replies say
    became of those assignments.

    Once the script refused one for a task waiting ahead ('not_first'), tasks of that
    priority and less urgent ones would be refused too until the passes catch up: under a
    burst (a drain, one task to each of 10,000 agents) every submit was, and choosing their
    agents, and reading the view again for them, was a tenth of a node's CPU for nothing.
    So from then on only one such task at a time, the probe, is chosen; the others wait
    for a pass as they would have. The first probe assigned ends this.
    """

    def __init__(
        self,
        view: NodeView,
        assignments: Assignments,
        streams_here: Callable[[str], bool] | None = None,
    ) -> None:
        self._view = view
        self._assignments = assignments
        self._streams_here = streams_here
        """As a pass's: least connections keeps what it can on this node
        (``AgentSlots.candidates``)."""
        self._waiting_rank: int | None = None
        """The rank of the priority at which, or more urgent, a task waits ahead (as a
        refusal said); None when none is known to."""
        self._probe: tuple[str, float] | None = None
        """The probe under way: its task_id, and the loop time it was chosen."""

    def choose(self, tasks_to_queue: Sequence[TaskToQueue]) -> tuple[AgentSlots | None, Chosen]:
        """An agent for each task that can have one from the view, as a pass would choose
        (most urgent first, then in line), each taking its slot in the view's slot table:
        that table, and the (task_id, agent_id, rank) chosen. While tasks wait ahead, of the
        tasks they would be refused for only a probe is chosen, when none is under way."""
        now = asyncio.get_running_loop().time()
        waiting_rank, probing = self._waiting_and_probing(now)
        ranked = sorted(
            (
                (rank, to_queue)
                for to_queue in tasks_to_queue
                if (rank := _PRIORITY_RANK[to_queue.submission.priority]) < waiting_rank or probing
            ),
            key=lambda ranked_task: ranked_task[0],
        )
        view = self._view.current
        if view is None or not ranked:
            return None, []
        age = now - view.read_at
        if age > VIEW_REFRESH_S:
            self._view.refresh_soon()
        if age > VIEW_MAX_AGE_S:
            return None, []
        chosen = []
        for rank, to_queue in ranked:
            if rank >= waiting_rank and not probing:
                continue  # a probe is chosen already
            s = to_queue.submission
            strategy = s.strategy or view.default_strategy
            if strategy not in AT_SUBMIT_STRATEGIES or s.requirements.min_health_score:
                continue  # their choice needs what only a fresh snapshot says
            if strategy is Strategy.CONSISTENT_HASH and s.routing_key:
                continue  # its ring is in Redis: a pass's assignment script walks it
            cls = s.requirements.eligibility_class()
            eligible = view.eligible.get(cls)
            if eligible is None:
                eligible = view.eligible[cls] = [
                    a for a in view.slots.agents.values() if fits(a, s.requirements)
                ]
            here = self._streams_here if strategy is Strategy.LEAST_CONNECTIONS else None
            candidates = view.slots.candidates(cls, eligible, here)
            if not candidates:
                if age > VIEW_USED_UP_REFRESH_S:
                    self._view.refresh_soon()
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
            chosen.append((to_queue.task_id, agent_id, rank))
            if rank >= waiting_rank:
                self._probe, probing = (to_queue.task_id, now), False
        return view.slots, chosen

    def _waiting_and_probing(self, now: float) -> tuple[int, bool]:
        """The rank from which tasks are refused for a task waiting ahead (past the least
        urgent when none is known to), and whether a probe may be chosen now."""
        if self._waiting_rank is None:
            return len(_PRIORITY_RANK), False
        probing = self._probe is None or now - self._probe[1] > PROBE_TIMEOUT_S
        return self._waiting_rank, probing

    def take_replies(self, slots: AgentSlots | None, chosen: Chosen, submits: list[Any]) -> bool:
        """Record the assignments made at submit from ``slots``, from the replies of the
        submits of their tasks; True when one was refused (its task waits in line: a pass
        must follow)."""
        refused = False
        for (task_id, agent_id, rank), raw in zip(chosen, submits, strict=True):
            probe = self._probe is not None and self._probe[0] == task_id
            if probe:
                self._probe = None
            detail: Any
            if isinstance(raw, Exception):
                verdict, detail = "error", raw
                refused = True
            elif (reply := SubmitReply.assignment(raw)) is None:
                # a repeated request_id, or over quota: no new task
                verdict, detail = "task_gone", "not created"
            elif reply.ok:
                self._assignments.record(task_id, agent_id, reply, way="submit")
                if probe:  # nothing waits ahead of its priority any more
                    self._waiting_rank = None
                continue
            else:
                verdict, detail = reply.verdict, reply.detail
                refused = True
                if verdict == "not_first":
                    self._tasks_wait_ahead(rank)
            if slots is not None:  # that table still counts the slot as taken
                slots.not_assigned(agent_id, verdict, detail)
        return refused

    def _tasks_wait_ahead(self, rank: int) -> None:
        """A submit's assignment at ``rank`` was refused for a task waiting ahead."""
        if self._waiting_rank is None or rank < self._waiting_rank:
            self._waiting_rank = rank
