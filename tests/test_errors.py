"""The bounds every error message goes through (errors.echo, InvalidArgument's caps)."""

from __future__ import annotations

from coordinator import errors
from coordinator.errors import FieldViolation, InvalidArgument, echo


def test_echo_quotes_short_values_whole_and_cuts_long_ones():
    assert echo("robot") == "'robot'"
    assert echo("y" * 64) == repr("y" * 64)
    assert echo("y" * 5000) == repr("y" * 64) + "..."
    assert echo("\u00fc\n") == "'\\xfc\\n'"  # ASCII: grpc-message would percent-encode it
    assert echo("\u00fc" * 100) == "'" + "\\xfc" * 16 + "'..."  # escapes count


def test_invalid_argument_reports_twenty_violations_and_how_many_more():
    error = InvalidArgument([FieldViolation(f"f{i}", "bad") for i in range(1000)])

    assert [v.field for v in error.violations] == [f"f{i}" for i in range(20)] + [""]
    assert error.violations[-1].description == "and 980 more violations"
    assert str(error).endswith("f19: bad; and 980 more violations")


def test_invalid_argument_stays_within_its_character_budget():
    long = [FieldViolation("f" * 10_000, "d" * 10_000) for _ in range(30)]

    error = InvalidArgument(long)

    kept = error.violations[:-1]
    assert sum(len(v.field) + len(v.description) for v in kept) <= errors.MAX_VIOLATION_CHARS
    assert len(str(error)) <= errors.MAX_MESSAGE_CHARS
    assert error.violations[-1].description == f"and {30 - len(kept)} more violations"
