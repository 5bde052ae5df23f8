"""The collector of a request's problems, shared by every validation module.

Validation reports every problem of a request at once, each with the path of its field;
the API layer turns the resulting ``InvalidArgument`` into one INVALID_ARGUMENT status.
"""

from __future__ import annotations

from coordinator.errors import FieldViolation, InvalidArgument


class Violations:
    """Collects every problem of a request, then raises them all at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        """Record that ``field`` (its path in the request) is wrong, and how."""
        self.items.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        """Raise InvalidArgument with every recorded problem, if there is any."""
        if self.items:
            raise InvalidArgument(self.items)
