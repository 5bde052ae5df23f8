"""Redis's clock, which every node shares: liveness, leases and deadlines are measured by
it, never by a node's own clock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def epoch_ms(redis_time: Sequence[Any]) -> int:
    """Epoch milliseconds from a Redis TIME reply (seconds, microseconds)."""
    seconds, micros = redis_time
    return int(seconds) * 1000 + int(micros) // 1000
