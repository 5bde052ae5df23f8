"""A coroutine run every few seconds until stopped: a node's background loops (the Redis
health check, the liveness sweep)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``tick`` every ``interval_s`` in its own task; ``stop`` ends it for sure.

    Stopping sets a flag before cancelling: a library that turns the cancellation into an
    ordinary error (redis-py can, mid-command) cannot keep the loop alive, which would
    make shutdown wait for ever.
    """

    def __init__(self, name: str, interval_s: float, tick: Callable[[], Awaitable[object]]) -> None:
        self._name = name
        self._interval_s = interval_s
        self._tick = tick
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin ticking, first after one interval."""
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        """Stop ticking and wait for the loop to end (idempotent)."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), self._interval_s)
                return
            except TimeoutError:
                pass
            try:
                await self._tick()
            except Exception:  # a loop that dies silently would freeze what it maintains
                log.exception("%s failed", self._name)
