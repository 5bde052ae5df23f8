"""Errors of the SDK. All derive from the coordinator's one root, ``CoordinatorError``."""

from __future__ import annotations

from typing import Any

import grpc

from coordinator.errors import CoordinatorError
from coordinator.tasks.models import Task, TaskError


class PermanentError(CoordinatorError):
    """Raised by a task handler: the task failed and another attempt would fail too, so it
    is FAILED at once instead of retried. Any other exception is retried (``max_attempts``)."""

    def __init__(
        self, message: str, *, error_type: str = "", details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.error_type = error_type or type(self).__name__
        self.details = details or {}


class RpcError(CoordinatorError):
    """A call the coordinator refused (or could not serve in time); ``code`` is its gRPC status
    code, ``message`` its details (they name the offending field)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class UndecodableReply(RpcError):
    """The coordinator answered about task ``task_id``, but its reply could not be decoded
    here (python protobuf refuses data nested deeper than 100 levels, as a task's data or
    result can be). The call itself took effect: a cancel did cancel. ``code`` is INTERNAL,
    as gRPC reports a reply it cannot parse."""

    def __init__(self, task_id: str = "") -> None:
        super().__init__(
            grpc.StatusCode.INTERNAL,
            (f"task {task_id}: " if task_id else "")
            + "the coordinator's reply could not be decoded by this client "
            "(its data, result or error details nest deeper than python protobuf parses)",
        )
        self.task_id = task_id


class TaskNotCompleted(CoordinatorError):
    """``Client.wait``: the task ended without a result; ``task`` is its final record."""

    def __init__(self, task: Task, message: str) -> None:
        super().__init__(message)
        self.task = task


class TaskFailed(TaskNotCompleted):
    """The task is FAILED: it failed permanently or ran out of attempts; ``error`` says why."""

    @property
    def error(self) -> TaskError | None:
        """The task's last error."""
        return self.task.error


class TaskCancelled(TaskNotCompleted):
    """The task was CANCELLED (CancelTask or a queue purge)."""


class TaskExpired(TaskNotCompleted):
    """The task EXPIRED: no agent took it within its schedule-to-start timeout."""
