"""A node's view: a copy of the latest snapshot it read, with the assignments it made and
the slots its reports freed since, which tasks are assigned at submit from
(``coordinator.dispatch.at_submit``). A pass's own snapshot never changes under it: the
view is a copy with slot counts of its own."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence

from coordinator.agents.records import AgentRecord
from coordinator.dispatch.slots import AgentSlots, Snapshot, balancer_state

log = logging.getLogger(__name__)


class NodeView:
    """The view, and its refresh in the background."""

    def __init__(self) -> None:
        self.current: Snapshot | None = None
        """The latest snapshot read that had tasks waiting (the others read no agent), or
        read for a view: what tasks are assigned at submit from."""
        self._read_view: Callable[[], Awaitable[object]] | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._stopping = False

    def refresh_with(self, read_view: Callable[[], Awaitable[object]]) -> None:
        """How to read a view: a snapshot of the agents only, which ``adopt`` takes."""
        self._read_view = read_view

    def adopt(self, snapshot: Snapshot, agents: dict[str, AgentRecord], raw_state: str) -> None:
        """Make a copy of ``snapshot`` the view, with its own slots and balancer state:
        submits and reports change the view's all the time, and must not change a snapshot
        under a pass (one taken with no free slot read no task; a slot freed in it later
        made its pass look for them). Which agents fit a class depends on the agents
        alone, which the copy shares: so does the snapshot's ``eligible``."""
        self.current = dataclasses.replace(
            snapshot, slots=AgentSlots(agents), state=balancer_state(raw_state)
        )

    def slots_freed(self, agent_ids: Sequence[str]) -> None:
        """This node took reports that ended attempts of these agents: their slots are free
        in the view too. (A report that Redis took before the view's snapshot was read is
        counted twice: the assignment script then refuses the slot, and a pass follows.)"""
        if self.current is not None:
            for agent_id in agent_ids:
                self.current.slots.give_back_slot(agent_id)

    def taken_by_pass(self, slots: AgentSlots, agent_id: str) -> None:
        """A pass assigned a task to ``agent_id`` from ``slots``: its slot is taken in the
        view too (the view is the pass's snapshot's copy, or a later one; a later one that
        already counts the assignment counts it twice until it is read again: a submit then
        chooses another agent, or its task waits for a pass)."""
        view = self.current
        if view is not None and view.slots is not slots:
            view.slots.take_slot(agent_id)

    def refresh_soon(self) -> None:
        """Read the view again in the background, unless that is under way already."""
        if self._refreshing is None and not self._stopping and self._read_view is not None:
            self._refreshing = asyncio.create_task(self._refresh(), name="view refresh")

    async def _refresh(self) -> None:
        """Read a snapshot of the agents (no tasks: a view needs none) and make it the view.
        Submits sent before it are counted in it; one sent meanwhile may find a slot it took
        free again in the new view, and its script then refuses the agent: a pass follows."""
        assert self._read_view is not None
        try:
            await self._read_view()
        except Exception as exc:  # a submit finding the view too old takes a pass's way
            log.debug("view not refreshed: %r", exc)
        finally:
            self._refreshing = None

    def resume(self) -> None:
        """Refresh again when asked (after ``stop``)."""
        self._stopping = False

    async def stop(self) -> None:
        """Cancel a refresh under way; refresh no more until ``resume``."""
        self._stopping = True
        refreshing = self._refreshing
        if refreshing is not None:
            refreshing.cancel()
            await asyncio.gather(refreshing, return_exceptions=True)
