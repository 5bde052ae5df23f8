"""The coordinator's one root exception and its kinds.

Domain code raises these; ``coordinator.api.error_mapping`` turns them into gRPC status codes
in one place. Each kind names the client's mistake precisely enough to fix it.

Errors are bounded, whatever the client sent: a value echoed back goes through ``echo`` (at
most ``MAX_ECHO_CHARS`` characters, ASCII), and an ``InvalidArgument`` reports at most
``MAX_VIOLATIONS`` violations within ``MAX_VIOLATION_CHARS`` characters, then "and N more".
gRPC sends the message and the BadRequest details in the trailers, which clients refuse above
8 KiB: with these bounds every error fits with room to spare.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_ECHO_CHARS = 64
"""Most characters of a client's value quoted in an error (then an ellipsis)."""

MAX_VIOLATIONS = 20
"""Most field violations one InvalidArgument reports (then "and N more")."""

MAX_VIOLATION_CHARS = 1536
"""Most characters of the violations one InvalidArgument reports, fields and descriptions
together. The trailers carry them twice (grpc-message and the BadRequest in
grpc-status-details-bin, base64): about 5.5 KiB at most, under the 8 KiB clients accept."""

MAX_MESSAGE_CHARS = MAX_VIOLATION_CHARS + 64
"""Most characters of any error's message (an InvalidArgument's, with its "and N more")."""


def echo(value: object) -> str:
    """``value`` quoted for an error message: its ASCII repr (escapes count), cut to at most
    ``MAX_ECHO_CHARS`` characters between the quotes, followed by an ellipsis when cut."""
    text = str(value)
    kept = min(len(text), MAX_ECHO_CHARS)
    while len(ascii(text[:kept])) > MAX_ECHO_CHARS + 2:  # escapes of non-ASCII are longer
        kept -= 1
    return ascii(text[:kept]) + ("..." if kept < len(text) else "")


def bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` as ASCII (non-ASCII escaped, as grpc-message would percent-encode it three
    times over) and at most ``limit`` characters, the cut marked by an ellipsis."""
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class CoordinatorError(Exception):
    """Root of every error the coordinator raises on purpose."""


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request: ``field`` is its path, for example ``labels['zone']``."""

    field: str
    description: str


class InvalidArgument(CoordinatorError):
    """The request is malformed; ``violations`` names the offending fields: every one, up to
    ``MAX_VIOLATIONS`` within ``MAX_VIOLATION_CHARS`` characters, then one entry (field
    ``""``) saying how many more there are."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = _capped(violations)
        super().__init__("; ".join(_text(v) for v in self.violations))

    @classmethod
    def of(cls, field: str, description: str) -> InvalidArgument:
        """An error about a single field."""
        return cls([FieldViolation(field, description)])


def _text(violation: FieldViolation) -> str:
    if not violation.field:
        return violation.description
    return f"{violation.field}: {violation.description}"


def _capped(violations: list[FieldViolation]) -> list[FieldViolation]:
    kept: list[FieldViolation] = []
    budget = MAX_VIOLATION_CHARS
    for violation in violations:
        if len(kept) == MAX_VIOLATIONS:
            break
        field = bounded(violation.field, 256)
        description = bounded(violation.description, 512)
        cost = len(field) + len(description)
        if cost > budget and kept:
            break
        budget -= cost
        kept.append(FieldViolation(field, description))
    left = len(violations) - len(kept)
    if left:
        kept.append(FieldViolation("", f"and {left} more violation{'s' if left > 1 else ''}"))
    return kept


class UndecodableRequest(InvalidArgument):
    """The request's bytes are not a message of the method's request type."""

    MESSAGE = "request could not be decoded"

    def __init__(self) -> None:
        CoordinatorError.__init__(self, self.MESSAGE)
        self.violations = []


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


class Unauthenticated(CoordinatorError):
    """The call carries no credential, or one that failed a check; the message says which
    check, never the credential itself."""


class PermissionDenied(CoordinatorError):
    """The caller is authenticated but its grant does not allow this call or target; the
    message names the permission."""


class Unavailable(CoordinatorError):
    """A dependency (Redis) cannot be reached; the client may retry."""
