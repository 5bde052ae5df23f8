"""The coordinator's one root exception and its kinds.

Domain code raises these; ``coordinator.api.error_mapping`` turns them into gRPC status codes
in one place. Each kind names the client's mistake precisely enough to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass


class CoordinatorError(Exception):
    """Root of every error the coordinator raises on purpose."""


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request: ``field`` is its path, for example ``labels['zone']``."""

    field: str
    description: str


class InvalidArgument(CoordinatorError):
    """The request is malformed; ``violations`` names every offending field."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))

    @classmethod
    def of(cls, field: str, description: str) -> InvalidArgument:
        """An error about a single field."""
        return cls([FieldViolation(field, description)])


class NotFound(CoordinatorError):
    """The named resource does not exist."""


class AlreadyExists(CoordinatorError):
    """The resource to create exists already."""


class FailedPrecondition(CoordinatorError):
    """The request is valid but the resource's state does not allow it."""


class Aborted(CoordinatorError):
    """The call lost to a concurrent one (a newer assignment stream replaced this one)."""


class ResourceExhausted(CoordinatorError):
    """The node is at a limit for this kind of call; the client may retry after
    ``retry_after_s`` (told in google.rpc.RetryInfo)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(CoordinatorError):
    """A dependency (Redis) cannot be reached; the client may retry."""
