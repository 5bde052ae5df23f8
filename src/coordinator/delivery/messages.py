"""What travels to the node that holds an agent's assignment stream, and the assignment itself.

Lua scripts tell the node holding an agent's stream (``agents:connected`` names it) by a
PUBLISH on that node's channel (``keys.node_channel(node_id)``) of one JSON object. Its
``kind`` says which message it is; every message names its ``agent_id``:

- ``assign`` (``assign`` in ``lua/task_lib.lua``, run by assign_task and submit_task):
  task_id, attempt, fencing_token, task_type, task_data (the task's JSON
  text, kept exact), priority (its name), assigned_at_ms, lease_expires_at_ms,
  start_to_close_ms. The whole assignment rides along, so the node sends it unread.
- ``cancel`` (cancel_task, release_task): task_id, attempt, reason.
- ``replaced`` (connect_stream): session_id, of the stream a newer one replaced.
- ``deregistered`` (deregister_agent): nothing more.

An ``assign`` message also comes back in the reply of a script that assigned to an agent
whose stream this very node holds (the dispatcher's local delivery): the same JSON object.

``parse_node_message`` turns one such object into one of the typed messages here, once,
where it arrives; the streams never read the raw fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from coordinator.tasks.models import Priority, Task


@dataclass(frozen=True)
class Assignment:
    """One attempt of a task, as pushed to its agent."""

    task_id: str
    attempt: int
    fencing_token: str
    task_type: str
    task_data: dict[str, Any]
    priority: Priority
    assigned_at_ms: int
    lease_expires_at_ms: int | None
    start_to_close_s: float

    @classmethod
    def of(cls, task: Task) -> Assignment:
        """The assignment of a task's current attempt."""
        return cls(
            task_id=task.task_id,
            attempt=task.attempt,
            fencing_token=task.fencing_token,
            task_type=task.task_type,
            task_data=task.task_data,
            priority=task.priority,
            assigned_at_ms=task.attempts[-1].assigned_at_ms,
            lease_expires_at_ms=task.lease_expires_at_ms,
            start_to_close_s=task.start_to_close_s,
        )


@dataclass(frozen=True)
class AssignNotice:
    """``assign``: a task was assigned to the agent; the whole assignment rides along."""

    agent_id: str
    assignment: Assignment
    task_data_chars: int
    """Length of the task_data JSON text, which is what the session accounts for."""


@dataclass(frozen=True)
class CancelNotice:
    """``cancel``: an attempt the agent holds was cancelled or given back."""

    agent_id: str
    task_id: str
    attempt: int
    reason: str


@dataclass(frozen=True)
class StreamReplaced:
    """``replaced``: a newer stream of the agent opened; ``session_id`` names the old one."""

    agent_id: str
    session_id: str


@dataclass(frozen=True)
class AgentDeregistered:
    """``deregistered``: the agent is gone; its stream on this node ends."""

    agent_id: str


NodeMessage = AssignNotice | CancelNotice | StreamReplaced | AgentDeregistered


def parse_node_message(data: str | bytes) -> NodeMessage | None:
    """The message published on a node channel (JSON text); None for an unknown kind, which
    a newer node may send and this one has nothing to do with. A malformed message raises."""
    return node_message_from_fields(json.loads(data))


def node_message_from_fields(fields: dict[str, Any]) -> NodeMessage | None:
    """The message of one decoded JSON object (see the table above); None for an unknown
    kind. Raises KeyError or ValueError when a field its kind needs is missing or wrong."""
    kind = fields.get("kind")
    agent_id = fields.get("agent_id", "")
    if kind == "assign":
        task_data: str = fields["task_data"]
        return AssignNotice(agent_id, _assignment(fields, task_data), len(task_data))
    if kind == "cancel":
        return CancelNotice(
            agent_id, fields["task_id"], int(fields["attempt"]), fields.get("reason", "")
        )
    if kind == "replaced":
        return StreamReplaced(agent_id, fields.get("session_id", ""))
    if kind == "deregistered":
        return AgentDeregistered(agent_id)
    return None


def _assignment(fields: dict[str, Any], task_data: str) -> Assignment:
    return Assignment(
        task_id=fields["task_id"],
        attempt=int(fields["attempt"]),
        fencing_token=fields["fencing_token"],
        task_type=fields["task_type"],
        task_data=json.loads(task_data),
        priority=Priority[fields["priority"]],
        assigned_at_ms=int(fields["assigned_at_ms"]),
        lease_expires_at_ms=int(fields["lease_expires_at_ms"]),
        start_to_close_s=int(fields["start_to_close_ms"]) / 1000,
    )
