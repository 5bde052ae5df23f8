"""What a task handler receives: the task's input and a way to learn it was cancelled."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from coordinator.tasks.models import Priority


@dataclass
class TaskContext:
    """One attempt of one task, as given to the handler (``handler(task)``).

    ``data`` is the submitter's ``task_data``. A coroutine handler is cancelled outright when
    the task is cancelled (or its lease is lost, or the agent stops past its grace period); a
    plain-function handler runs in a thread and cannot be interrupted, so it should look at
    ``cancelled`` (or ``wait_cancelled``) now and then and return early when it is set.
    """

    task_id: str
    attempt: int
    task_type: str
    data: dict[str, Any]
    priority: Priority
    agent_id: str
    start_to_close_s: float
    cancel_reason: str = ""
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def cancelled(self) -> bool:
        """True once the attempt is cancelled: its result would be refused, stop working."""
        return self._cancelled.is_set()

    def wait_cancelled(self, timeout_s: float | None = None) -> bool:
        """Block (in a thread handler) up to ``timeout_s`` for a cancellation; True if it came.
        A cancellable replacement for ``time.sleep``."""
        return self._cancelled.wait(timeout_s)

    def cancel(self, reason: str) -> None:
        """Mark the attempt cancelled (called by the agent, thread-safe)."""
        if not self._cancelled.is_set():
            self.cancel_reason = reason
            self._cancelled.set()
