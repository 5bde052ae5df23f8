"""Capped, jittered exponential backoff between reconnects and retried calls."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double (by ``multiplier``) up to ``max_s``, each drawn from the upper half
    of its range ("equal jitter"): many agents that lost the same node do not come back in
    lockstep, and no delay is ever close to zero, so a dead address is not hammered."""

    def __init__(self, initial_s: float = 0.1, max_s: float = 5.0, multiplier: float = 2.0) -> None:
        if initial_s <= 0 or max_s < initial_s or multiplier < 1:
            raise ValueError("backoff needs 0 < initial_s <= max_s and multiplier >= 1")
        self.initial_s = initial_s
        self.max_s = max_s
        self.multiplier = multiplier
        self.failures = 0

    def next_delay_s(self) -> float:
        """The wait before the next try; each call counts one more failure."""
        ceiling = min(self.max_s, self.initial_s * self.multiplier**self.failures)
        self.failures += 1
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def reset(self) -> None:
        """A try succeeded: the next failure waits ``initial_s`` again."""
        self.failures = 0
