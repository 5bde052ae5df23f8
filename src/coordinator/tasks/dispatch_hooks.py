"""What the task store tells the dispatcher, as one small interface: ``DispatchHooks``.

The store queues tasks and takes reports; matching them to agents is the dispatcher's
(``coordinator.dispatch``), which implements this interface. Defined here, on the task side,
so that ``coordinator.tasks`` never imports ``coordinator.dispatch``: the composition root
(``coordinator.server``) hands the dispatcher to the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from coordinator.tasks.calls import SubmitPlan, TaskToQueue


class DispatchHooks(Protocol):
    """The dispatcher as the task store sees it (``Dispatcher`` implements it)."""

    def request(self) -> None:
        """Ask for a pass soon: a task joined a queue or a slot came free through this node
        (cheap; many requests coalesce into one pass)."""

    def plan_submit(self, tasks_to_queue: Sequence[TaskToQueue]) -> SubmitPlan | None:
        """What rides in the round trip that queues ``tasks_to_queue``: the agents to assign
        them to at once, and the calls that start a pass; None when nothing does (the store
        then calls ``request``)."""

    def slots_freed(self, agent_ids: Sequence[str]) -> None:
        """Reports taken through this node ended attempts of these agents: their slots are
        free."""


class NoDispatch:
    """Hooks that do nothing: a store with no dispatcher on its node (tests, tools)."""

    def request(self) -> None:
        """Nothing to ask."""

    def plan_submit(self, tasks_to_queue: Sequence[TaskToQueue]) -> SubmitPlan | None:
        """Nothing rides: every task is queued."""
        return None

    def slots_freed(self, agent_ids: Sequence[str]) -> None:
        """No view to update."""
