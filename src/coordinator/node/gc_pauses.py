"""Keeping the garbage collector's pauses short in a node holding thousands of streams.

Each open stream keeps a few hundred objects that the cycle collector tracks (the call, its
tasks, queues, frames). CPython's full collection examines every tracked object, and runs
each time the objects that survived into the oldest generation grow by a quarter: with
10,000 agents connected a full collection took 300-450 ms, and a burst of assignments (one
task to each agent) triggered several, each stopping the node.

So after each full collection its survivors are frozen (``gc.freeze``): the next ones
examine only what was allocated since, a few milliseconds. Frozen objects that die are
still freed by reference counting; only garbage in reference cycles waits for the next
thorough collection: once every ``THOROUGH_EVERY_S``, a full collection first thaws the
frozen objects (``gc.unfreeze``) and examines everything.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

THOROUGH_EVERY_S = 300.0
"""The longest between two full collections that examine every object (and free cycles of
objects that died while frozen)."""


class CollectorPolicy:
    """The callback of ``gc.callbacks`` that freezes after full collections and thaws
    before a thorough one; ``install`` and ``uninstall`` add and remove it."""

    def __init__(
        self,
        thorough_every_s: float = THOROUGH_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._thorough_every_s = thorough_every_s
        self._clock = clock
        self._last_thorough = clock()
        self.thorough_collections = 0
        """Full collections that examined every object (the frozen ones thawed first)."""

    def install(self) -> None:
        """Freeze what lives now (modules, the node's own objects) and follow every
        collection from here."""
        gc.freeze()
        gc.callbacks.append(self)

    def uninstall(self) -> None:
        """Stop following collections and thaw what was frozen."""
        if self in gc.callbacks:
            gc.callbacks.remove(self)
        gc.unfreeze()

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            if self._clock() - self._last_thorough >= self._thorough_every_s:
                # The collection about to run merges the thawed objects into the one it
                # examines: this one is thorough.
                gc.unfreeze()
                self._last_thorough = self._clock()
                self.thorough_collections += 1
            return
        gc.freeze()
