"""The Python SDK: ``Agent`` runs task handlers, ``Client`` submits and follows tasks.

Nothing here exposes protobuf types: tasks are ``coordinator.tasks.models.Task`` objects and
task data and results are plain dicts. Both take ``tls=TlsOptions(...)`` and ``token=`` or
``token_file=`` (a bearer token sent with every call).
"""

from coordinator.sdk.agent import Agent
from coordinator.sdk.backoff import Backoff
from coordinator.sdk.client import Client, NewTask, SubmitResult
from coordinator.sdk.context import TaskContext
from coordinator.sdk.credentials import TlsOptions
from coordinator.sdk.errors import (
    PermanentError,
    RpcError,
    TaskCancelled,
    TaskExpired,
    TaskFailed,
    TaskNotCompleted,
    UndecodableReply,
)
from coordinator.sdk.runner import Handler
from coordinator.tasks.models import Priority, Requirements, RetryPolicy, Task, TaskError, TaskState

__all__ = [
    "Agent",
    "Backoff",
    "Client",
    "Handler",
    "NewTask",
    "PermanentError",
    "Priority",
    "Requirements",
    "RetryPolicy",
    "RpcError",
    "SubmitResult",
    "Task",
    "TaskCancelled",
    "TaskContext",
    "TaskError",
    "TaskExpired",
    "TaskFailed",
    "TaskNotCompleted",
    "TaskState",
    "TlsOptions",
    "UndecodableReply",
]
