"""AITBC Agent Coordinator: a gRPC service where agents register, are discovered and
receive work, with all state in Redis shared by every node.

The Python SDK is re-exported here: ``from coordinator import Agent, Client``.
"""

from coordinator.sdk import (
    Agent,
    Client,
    PermanentError,
    Priority,
    Requirements,
    RpcError,
    Task,
    TaskCancelled,
    TaskContext,
    TaskExpired,
    TaskFailed,
    TaskState,
    TlsOptions,
)

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "Client",
    "PermanentError",
    "Priority",
    "Requirements",
    "RpcError",
    "Task",
    "TaskCancelled",
    "TaskContext",
    "TaskExpired",
    "TaskFailed",
    "TaskState",
    "TlsOptions",
    "__version__",
]
