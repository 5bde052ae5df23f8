"""Honouring a cancellation that Python 3.11 lost on the way.

On Python 3.11 ``asyncio.wait_for`` drops a cancellation that arrives just as what it waits
for completes, and redis-py sends every command through it. gRPC cancels a stream handler
once, when its client goes away; if that one request vanishes inside a Redis call, the
handler would run on for a client that is gone. The request is still counted on the task,
so long-running handlers call ``raise_if_cancelled`` after their awaits.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Raise CancelledError if the current task was asked to stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
