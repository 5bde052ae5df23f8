"""The dispatcher: assigns queued tasks to eligible agents with the balancing strategy.
This module is its loop and its public face; a pass is ``passes``, the turn ``turns``,
assignment at submit ``at_submit``, the node's view ``view``.

A pass walks the priorities from URGENT to LOW, and within one priority the tasks in their
place in line (FIFO), a whole requirements class skipped once no free agent fits it.

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

Each node queues the tasks it accepts in its own dispatch partition, and only the node
holding a partition's turn (``coordinator:lock:dispatch:{node_id}``) passes over it; a node
that wants a pass over a partition another node holds sets its 'wanted' flag, and the
holder keeps passing until that flag stays clear, so no request is lost, whichever node it
came from, without any pub/sub message (``turns``). While tasks wait in its own partition a
node leaves other live nodes' partitions to them, so nodes fed by their own clients pass at
the same time. The locks are an efficiency device, not a safety one: each assignment is one
script that re-checks the task and the agent, so two passes racing (a lock that expired
mid-pass), or a pass and an assignment at submit, can never assign a task twice or
overfill a slot.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis

from coordinator.agents.registry import AgentRegistry
from coordinator.config import Settings
from coordinator.dispatch.assignments import Assignments, LocalDelivery
from coordinator.dispatch.at_submit import SubmitAssigner
from coordinator.dispatch.passes import Passes
from coordinator.dispatch.turns import HandedTurn, Turns
from coordinator.dispatch.view import NodeView
from coordinator.node.metrics import NodeMetrics
from coordinator.storage.multiplex import MultiplexedConnection
from coordinator.storage.redis_errors import redis_unavailable
from coordinator.storage.scripts import PiggybackCalls, TaskScripts
from coordinator.tasks.calls import SubmitPlan, TaskToQueue
from coordinator.tasks.store import TaskStore

log = logging.getLogger(__name__)

STOP_WAIT_S = 2.0
"""How long stopping waits for a pass in progress before cancelling it."""


class Dispatcher:
    """Runs dispatch passes on wake-ups and on a short timer. The task store's
    ``DispatchHooks``: it asks for passes, plans submits and frees slots through it."""

    def __init__(
        self,
        redis: Redis,
        multiplexed: MultiplexedConnection,
        registry: AgentRegistry,
        store: TaskStore,
        settings: Settings,
        metrics: NodeMetrics | None = None,
        deliver: LocalDelivery | None = None,
        streams_here: Callable[[str], bool] | None = None,
    ) -> None:
        self._settings = settings
        scripts = self._scripts = TaskScripts(redis)
        self._available_built = False
        self._view = NodeView()
        self._assignments = Assignments(settings, metrics, deliver)
        self._turns = Turns(
            scripts, multiplexed, registry, store, self._view, settings.node_id, metrics
        )
        self._view.refresh_with(lambda: self._turns.snapshot("view"))
        self._passes = Passes(
            redis, multiplexed, scripts, self._assignments, self._view, streams_here
        )
        self._at_submit = SubmitAssigner(self._view, self._assignments, streams_here)
        self._wake = asyncio.Event()
        self._requests = 0
        """Requests so far: a pass serves those made before its snapshot was read."""
        self._passing = False
        self._handed: HandedTurn | None = None
        """A turn taken in a submit's round trip, for the loop to pass from."""
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def request(self) -> None:
        """Ask for a pass soon (cheap; many requests coalesce into one pass)."""
        self._requests += 1
        self._wake.set()

    def plan_submit(self, tasks_to_queue: Sequence[TaskToQueue]) -> SubmitPlan | None:
        """What rides in the round trip that queues ``tasks_to_queue``; None when nothing
        does (then ``request``).

        - An agent for each task whose agent this node can choose from its view (a strategy
          of ``at_submit.AT_SUBMIT_STRATEGIES``): ``lua/submit_task.lua`` assigns the task
          to it instead of queueing it, if no task waits ahead and the agent can still take
          it, and such a task needs no pass at all.
        - For the other tasks, or when an assignment is refused, a pass: when this node is
          not passing, the turn and the pass's snapshot ride after the submits (the pass
          then needs no round trip of its own before it assigns), otherwise a request.
        """
        if self._task is None or self._stopping.is_set():
            return None
        slots, chosen = self._at_submit.choose(tasks_to_queue)
        calls = []
        turn: tuple[str, int] | None = None
        if len(chosen) < len(tasks_to_queue) and not self._passing and self._handed is None:
            turn = (self._new_token(), self._requests)
            calls.append(self._turns.snapshot_call("begin", turn[0]))
        if not chosen and not calls:
            return None
        position = {to_queue.task_id: i for i, to_queue in enumerate(tasks_to_queue)}

        def take_replies(
            submits: list[Any], piggybacked: list[Any], after_the_submits: bool
        ) -> None:
            refused = self._at_submit.take_replies(
                slots, chosen, [submits[position[task_id]] for task_id, _, _ in chosen]
            )
            if turn is not None:
                (reply,) = piggybacked
                self._take_turn(*turn, reply, after_the_submits)
            elif refused or len(chosen) < len(tasks_to_queue):
                self.request()

        assignments = {task_id: self._assignments.to(agent_id) for task_id, agent_id, _ in chosen}
        return SubmitPlan(assignments, PiggybackCalls(calls, take_replies))

    def _new_token(self) -> str:
        """A token for the turns' locks: '{node_id}/{random}', so that a snapshot knows
        which nodes are passing now (and leaves their agents' free slots to them)."""
        return f"{self._settings.node_id}/{uuid.uuid4().hex}"

    def slots_freed(self, agent_ids: Sequence[str]) -> None:
        """This node took reports that ended attempts of these agents: their slots are free
        in the view too."""
        self._view.slots_freed(agent_ids)

    def _take_turn(self, token: str, requests: int, reply: Any, after_the_submits: bool) -> None:
        """The reply of the turn and snapshot that rode in a submit's round trip: hand the
        turn to the loop, which passes from that snapshot."""
        if isinstance(reply, Exception):
            self.request()  # the usual way, then
            return
        snapshot = self._turns.parse_snapshot(reply)
        if snapshot is None:  # nothing waited, or the holders of the turns saw the flags
            if not after_the_submits:  # the submits' tasks were not there yet
                self.request()
            return
        if self._stopping.is_set() or self._handed is not None:
            self._turns.release_soon(token, snapshot.partitions)
            self.request()
            return
        self._handed = HandedTurn(token, requests, snapshot)
        self._wake.set()
        if not after_the_submits:  # a submit ran after the snapshot: pass again after
            self.request()

    def start(self) -> None:
        """Begin dispatching in the background."""
        self._stopping.clear()
        self._view.resume()
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
            self._turns.release_soon(handed.token, handed.snapshot.partitions)
        await self._view.stop()
        await self._turns.wait_released()

    async def _build_available(self) -> None:
        """Build ``agents:available`` from the records if this Redis lacks it while agents
        have streams open (one from before it existed): once per node start, before its
        first pass."""
        if not self._available_built:
            built = await self._scripts.rebuild_available(args=[""])
            if built >= 0:
                log.info("built agents:available: %d agents available", built)
            self._available_built = True

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

    async def dispatch(self, handed: HandedTurn | None = None) -> int:
        """Make sure a pass runs after this call: here, or on the node holding the lock.
        With ``handed`` (a turn a submit took, see ``plan_submit``), pass from its snapshot.

        Returns the number of tasks this node assigned.
        """
        self._passing = True
        try:
            await self._build_available()
            return await self._take_turns(handed)
        finally:
            self._passing = False

    async def _take_turns(self, handed: HandedTurn | None) -> int:
        assigned = 0
        if handed is None:
            token, served = self._new_token(), self._requests
            # Asking for the turns and reading the snapshot are one step: the holder needs
            # the snapshot at once, and another node's request reads nothing.
            snapshot = await self._turns.snapshot("begin", token)
            if snapshot is None:
                return assigned  # nothing waits, or the holders will see the flags
        else:
            token, served, snapshot = handed.token, handed.requests, handed.snapshot
        holding = snapshot.partitions  # until handed back (also when stopping before a pass)
        try:
            while snapshot is not None and not self._stopping.is_set():
                in_pass = await self._passes.run(snapshot)
                assigned += in_pass
                slots = snapshot.slots
                if snapshot.more_agents and in_pass and (not slots.free or slots.blocked):
                    # It used up the least loaded agents it read, and there are more.
                    self._requests += 1
                if self._requests != served:  # asked on this node meanwhile: again at once
                    served = self._requests
                    self._wake.clear()
                    snapshot = await self._turns.snapshot("again", token, holding)
                else:  # again over the partitions other nodes asked for meanwhile, if any
                    holding = await self._turns.end(token, holding)
                    snapshot = None
                    if holding:
                        snapshot = await self._turns.snapshot("again", token, holding)
                holding = snapshot.partitions if snapshot is not None else ()
        finally:
            if holding:  # stopped or failed holding turns: free them for the others
                await self._turns.release(token, holding)
        return assigned

    async def dispatch_pass(self) -> int:
        """Assign what can be assigned now, without taking the turn; returns the number of
        assignments."""
        snapshot = await self._turns.snapshot()
        assert snapshot is not None
        return await self._passes.run(snapshot)
