"""The compact form of a finished task's hash, and reading it back.

A task hash holds about 30 fields, some of them JSON over 64 bytes (``transitions``,
``attempts``, ``requirements``), so Redis keeps it as a hashtable: about 2.8 KB for a no-op
task. When a task reaches a final state, ``lua/finished_lib.lua`` rewrites its hash as
``state`` and the rest packed into one string, cut into pieces ``p1``, ``p2``, ... of at
most 64 bytes, so that with Redis' default ``hash-max-listpack-value`` (64) and
``hash-max-listpack-entries`` (128) the hash stays a listpack (a packed record too long for
that is one field ``p1``). A hash with a ``p1`` field is in the compact form; any other is a
task as every script writes it (and as the scripts before this form left finished tasks).

The packed string is a series of entries ``{code}{length}:{value}``: ``code`` is one letter
of ``FIELD_CODES`` (or ``*{name}=`` for a field without one), ``length`` the value's bytes
as stored. ``task_id`` is left out (it is in the key), and so is a field of ``DEFAULTS``
holding its default. Values are shortened by a dictionary: each fragment of ``FRAGMENTS``
becomes the control byte of its position (1 to 30): in a JSON value, the keys of
``KEY_TOKENS`` (with their quotes and colon) in one pass, then the strings of
``VALUE_TOKENS`` (with their quotes) in a second; in any value, the first eight digits of
``created_at_ms`` (the stamp) become byte 31, so that timestamps near the task's creation
take six bytes. The values are JSON or names and never hold such bytes; a value that does
is stored as it is, its entry marked with ``!``. Reading replaces each byte by what it
stands for, in one pass, which gives back every value exactly (what a pass replaced never
holds a byte of an earlier pass).

This module is the one home of these tables: ``coordinator.storage.scripts`` gives them to
the task scripts (``lua_tables``), and ``expand`` is the Python reader.
"""

from __future__ import annotations

import re

PACKED_PREFIX = "p"
"""The packed record's pieces are the fields ``p1``, ``p2``, ... in order."""

PIECE_BYTES = 64
"""Redis' default ``hash-max-listpack-value``: a longer value makes the hash a hashtable."""

MAX_PIECES = 100
"""Below Redis' default ``hash-max-listpack-entries`` (128), with ``state`` beside them."""

STAMP_DIGITS = 8
"""The leading digits of ``created_at_ms`` that byte 31 stands for (a 100-second range)."""

FIELD_CODES: dict[str, str] = {
    "task_type": "A",
    "task_data": "B",
    "requirements": "C",
    "max_attempts": "D",
    "start_to_close_ms": "E",
    "retry": "F",
    "strategy": "G",
    "routing_key": "H",
    "request_id": "I",
    "priority": "J",
    "class": "K",
    "schedule_to_start_ms": "L",
    "seq": "M",
    "attempt": "N",
    "agent_id": "O",
    "fencing_token": "P",
    "lease_expires_at_ms": "Q",
    "result": "R",
    "error": "S",
    "dead_lettered": "T",
    "attempts": "U",
    "transitions": "V",
    "created_at_ms": "W",
    "updated_at_ms": "X",
    "submitted_by": "Y",
    "queued_at_ms": "Z",
    "assigned_at_ms": "a",
    "avoid_agent_id": "b",
}
"""One letter per field the scripts write."""

DEFAULTS: dict[str, str] = {
    "task_data": "{}",
    "max_attempts": "3",
    "start_to_close_ms": "300000",
    "schedule_to_start_ms": "300000",
    "retry": '{"initial_ms": 1000, "max_ms": 60000, "multiplier": 2.0}',
    "strategy": "",
    "routing_key": "",
    "priority": "NORMAL",
    "lease_expires_at_ms": "",
    "result": "",
    "error": "",
    "dead_lettered": "0",
    "submitted_by": "",
}
"""Fields that ``lua/submit_task.lua`` always writes, with the value most tasks have: the
compact form leaves them out when they hold it (a task's submission defaults, in
``coordinator.tasks.models``; tests/storage/test_finished_records.py checks they agree)."""

KEY_TOKENS: tuple[str, ...] = (
    "state",
    "agent_id",
    "attempt",
    "reason",
    "at_ms",
    "assigned_at_ms",
    "started_at_ms",
    "ended_at_ms",
    "node_id",
    "token",
    "outcome",
    "reported",
    "error",
    "agent_type",
    "capabilities",
    "services",
    "labels",
    "min_health_score",
    "preferred_capabilities",
)
"""JSON keys of the transitions, attempts and requirements: ``"{key}":`` becomes one byte."""

VALUE_TOKENS: tuple[str, ...] = (
    "PENDING",
    "ASSIGNED",
    "RUNNING",
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "EXPIRED",
    "submitted",
    "acknowledged by agent",
    "completed by agent",
    "complete",
)
"""JSON strings of the same: ``"{value}"`` becomes one byte."""

STAMP_BYTE = 31

FRAGMENTS: tuple[str, ...] = (
    *(f'"{key}":' for key in KEY_TOKENS),
    *(f'"{value}"' for value in VALUE_TOKENS),
)
"""What bytes 1, 2, ... stand for, in that order (byte 31: the stamp)."""

assert len(FRAGMENTS) < STAMP_BYTE, "one byte per fragment, byte 31 for the stamp"

_CODE_NAMES = {code: name for name, code in FIELD_CODES.items()}
_ENTRY = re.compile(r"(!?)(?:\*([^=]*)=|([A-Za-z]))(\d+):")


def is_compact(record: dict[str, str]) -> bool:
    """Whether a task hash read with HGETALL is in the compact form."""
    return f"{PACKED_PREFIX}1" in record


def expand(record: dict[str, str], task_id: str) -> dict[str, str]:
    """The task hash, whichever its form: the compact form gives back every field that the
    hash held before it was packed."""
    if not is_compact(record):
        return record
    pieces = len(record) - 1  # besides state
    packed = "".join(record[f"{PACKED_PREFIX}{i}"] for i in range(1, pieces + 1))
    raw: list[tuple[str, str, bool]] = []
    text = packed.encode().decode("latin-1")  # one character per byte: lengths are bytes
    pos = 0
    while pos < len(text):
        match = _ENTRY.match(text, pos)
        if match is None:
            raise ValueError(f"task {task_id}: a packed record unreadable at byte {pos}")
        plain, other_name, code, length = match.groups()
        pos = match.end() + int(length)
        value = text[match.end() : pos].encode("latin-1").decode()
        raw.append((other_name or _CODE_NAMES[code], value, plain == "!"))
    fields = dict(DEFAULTS)
    stamp = next(v for name, v, _ in raw if name == "created_at_ms")[:STAMP_DIGITS]
    for name, value, plain in raw:
        fields[name] = value if plain or name == "created_at_ms" else _unshorten(value, stamp)
    fields["task_id"] = task_id
    fields["state"] = record["state"]
    return fields


_SHORTENED = re.compile("[\x01-\x1f]")


def _unshorten(value: str, stamp: str) -> str:
    return _SHORTENED.sub(lambda m: stamp if m[0] == _STAMP else _BY_BYTE[m[0]], value)


_STAMP = chr(STAMP_BYTE)
_BY_BYTE = {chr(i): fragment for i, fragment in enumerate(FRAGMENTS, start=1)}


def lua_tables() -> str:
    """The tables of this module as Lua locals, for the task scripts (finished_lib.lua)."""

    def string(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    codes = ", ".join(f"{name} = {string(code)}" for name, code in FIELD_CODES.items())
    defaults = ", ".join(f"{name} = {string(value)}" for name, value in DEFAULTS.items())
    key_tokens = ", ".join(string(t) for t in KEY_TOKENS)
    value_tokens = ", ".join(string(t) for t in VALUE_TOKENS)
    return "\n".join(
        (
            f"local PACKED_FIELD_CODES = {{{codes}}}",
            f"local PACKED_DEFAULTS = {{{defaults}}}",
            f"local PACKED_KEY_TOKENS = {{{key_tokens}}}",
            f"local PACKED_VALUE_TOKENS = {{{value_tokens}}}",
            f"local PACKED_PIECE_BYTES = {PIECE_BYTES}",
            f"local PACKED_MAX_PIECES = {MAX_PIECES}",
            f"local PACKED_STAMP_DIGITS = {STAMP_DIGITS}",
        )
    )
