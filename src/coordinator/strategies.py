"""The load-balancing strategies by name: what a task or the cluster asks the dispatcher to
choose agents with (``coordinator.dispatch.balancing`` implements them). A word of the shared
vocabulary, like the errors: configuration, tasks, dispatch, the wire and the SDK all name it.
"""

from __future__ import annotations

import enum


class Strategy(enum.Enum):
    """Wire enum BALANCING_STRATEGY_<NAME> maps by name; config uses the lower-case name."""

    LEAST_CONNECTIONS = 1
    ROUND_ROBIN = 2
    WEIGHTED_ROUND_ROBIN = 3
    LEAST_RESPONSE_TIME = 4
    RESOURCE_BASED = 5
    CAPABILITY_BASED = 6
    PREDICTIVE = 7
    CONSISTENT_HASH = 8

    @classmethod
    def parse(cls, text: str) -> Strategy:
        """The strategy named ``text``, in any case ("least_connections", "LEAST_CONNECTIONS")."""
        try:
            return cls[text.upper()]
        except KeyError:
            valid = ", ".join(member.name.lower() for member in cls)
            raise ValueError(
                f"unknown balancing strategy {text!r}; expected one of: {valid}"
            ) from None
