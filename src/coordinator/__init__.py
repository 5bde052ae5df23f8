"""AITBC Agent Coordinator: a gRPC service where agents register, are discovered and
receive work, with all state in Redis shared by every node."""

__version__ = "0.1.0"
