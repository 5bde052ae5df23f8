"""The assignment stream as the agent reads it: each StreamAssignmentsResponse, decoded from
its bytes, becomes a ``StreamEvent`` with the attempts it delivers (``AssignmentInfo``) and
those whose task could not be decoded (``UndecodableAssignment``, to be reported failed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf.struct_pb2 import Struct

from aitbc.coordinator.v1 import agent_pb2
from coordinator.sdk import shallow
from coordinator.sdk.decoding import struct_to_dict
from coordinator.tasks.models import Priority, TaskError
from coordinator.wire_values import duration_s, priority_from_proto


@dataclass(frozen=True)
class AssignmentInfo:
    """One attempt of a task pushed to this agent."""

    task_id: str
    attempt: int
    fencing_token: str
    task_type: str
    data: dict[str, Any]
    priority: Priority
    start_to_close_s: float

    @property
    def key(self) -> tuple[str, int]:
        """What identifies a delivery: a repeat of the same key is the same work."""
        return (self.task_id, self.attempt)


def assignment_from_proto(message: agent_pb2.Assignment) -> AssignmentInfo:
    """The domain form of an Assignment event."""
    return _assignment(message, struct_to_dict(message.task_data))


def _assignment(message: Any, data: dict[str, Any]) -> AssignmentInfo:
    """An AssignmentInfo from an Assignment or its shallow twin, with its data decoded."""
    return AssignmentInfo(
        task_id=message.task_id,
        attempt=message.attempt,
        fencing_token=message.fencing_token,
        task_type=message.task_type,
        data=data,
        priority=priority_from_proto(message.priority) or Priority.NORMAL,
        start_to_close_s=duration_s(message.start_to_close_timeout),
    )


UNDECODABLE_TYPE = "UndecodableAssignment"
"""The error type an agent reports for an assignment it could not decode."""
_REASON_CHARS = 200


@dataclass(frozen=True)
class UndecodableAssignment:
    """An assignment whose task could not be decoded (its data nests deeper than protobuf
    parses, or holds what a dict cannot): what identifies the attempt, to report it failed."""

    assignment: AssignmentInfo
    """The attempt, with empty data."""
    reason: str

    def error(self) -> TaskError:
        """The error to fail the task with: not retryable, as every agent would fail alike."""
        return TaskError(
            "the agent could not decode the task's task_data (nested deeper than the "
            f"protobuf parser's limit of 100 levels, or not JSON-like): {self.reason}",
            UNDECODABLE_TYPE,
            retryable=False,
        )


@dataclass(frozen=True)
class StreamEvent:
    """One message of the assignment stream, as the agent reads it."""

    kind: str | None
    """The event's oneof name ("ready", "assignment", ...), None when unknown or unreadable."""
    message: Any = None
    """The message (ready, cancel and draining events read their fields from it)."""
    assignments: list[AssignmentInfo] = field(default_factory=list)
    undecodable: list[UndecodableAssignment] = field(default_factory=list)
    error: str = ""
    """Why nothing at all could be read from the message (then kind is None)."""


def stream_event(raw: bytes) -> StreamEvent:
    """Decode one StreamAssignmentsResponse (its serialized bytes). Never raises: an
    assignment that cannot be decoded in full comes in ``undecodable``, as long as its ids
    can be read (``coordinator.sdk.shallow``); a message of which nothing can be read comes
    with ``error``."""
    try:
        message: Any = agent_pb2.StreamAssignmentsResponse.FromString(raw)
        decoded = True
    except Exception:  # DecodeError, in practice; whatever it is, try the shallow twin
        try:
            message = shallow.StreamAssignmentsResponse.FromString(raw)
        except Exception as exc:
            return StreamEvent(None, error=_bounded(exc))
        decoded = False
    kind = message.WhichOneof("event")
    if kind == "assignment":
        items = [message.assignment]
    elif kind == "assignments":
        items = list(message.assignments.assignments)
    else:
        return StreamEvent(kind, message)
    event = StreamEvent(kind, message)
    for item in items:
        try:
            data = struct_to_dict(item.task_data if decoded else Struct.FromString(item.task_data))
        except Exception as exc:  # any failure to decode one task must not affect the others
            event.undecodable.append(UndecodableAssignment(_assignment(item, {}), _bounded(exc)))
        else:
            event.assignments.append(_assignment(item, data))
    return event


def _bounded(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"
