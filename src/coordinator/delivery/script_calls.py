"""Typed calls of the stream scripts: each class owns one script's ARGV and reply, as
documented at the top of its ``lua/<name>.lua``. Like every task script they take no KEYS
(their keys come from the table ``K``, see ``coordinator.storage.scripts``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class _StreamCall:
    """The ARGV both stream scripts take: the agent, the node holding its stream, and the
    stream's session."""

    agent_id: str
    node_id: str
    session_id: str

    def args(self) -> list[Any]:
        """ARGV of the call."""
        return [self.agent_id, self.node_id, self.session_id]


@dataclass(frozen=True)
class ConnectStream(_StreamCall):
    """``lua/connect_stream.lua``: record that the agent's stream is open on ``node_id``
    (the node of a stream it replaces is told)."""

    def parse(self, reply: Any) -> bool:
        """Whether the stream was recorded: False when the agent is not registered."""
        return bool(reply)


@dataclass(frozen=True)
class DisconnectStream(_StreamCall):
    """``lua/disconnect_stream.lua``: record that the stream closed, unless a newer one
    replaced it."""

    def parse(self, reply: Any) -> bool:
        """Whether the stream was the agent's current one (and so is now recorded closed)."""
        return bool(reply)
