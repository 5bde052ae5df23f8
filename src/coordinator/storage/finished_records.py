"""The compact form of a finished task's hash, and reading it back.

A task hash holds about 30 fields, some of them JSON over 64 bytes (``transitions``,
``attempts``, ``requirements``), so Redis keeps it as a hashtable: about 2.8 KB for a no-op
task. The reaper rewrites a finished task (``lua/compact_finished_tasks.lua``, with
``lua/finished_lib.lua``) as ``state`` and the rest packed into one string, cut into pieces
``p1``, ``p2``, ... of at most 64 bytes, so that with Redis' default
``hash-max-listpack-value`` (64) and ``hash-max-listpack-entries`` (128) the hash stays a
listpack (a packed record too long for that is one field ``p1``). A hash with a ``p1``
field is in the compact form; any other is a task as every script writes it.

The packed string is ``created_at_ms``, byte 30, then one entry per field, each ended by
byte 30: ``{code}{value}``, ``code`` one letter of ``FIELD_CODES`` (or ``*{name}=`` for a
field without one). ``task_id`` is left out (it is in the key), and so is a field of
``DEFAULTS`` holding its default. A value longer than ``PLAIN_BYTES`` (a large task_data or
result: the user's data), or one holding a byte below 32, stays a field of its own beside
the pieces. Only the fields of ``FREE_TEXT`` and fields
without a code are searched for such bytes: the others are JSON written by ``json.dumps``
or Redis' cjson (which escape every byte below 32), numbers, or names that the API
validates. The entries are then shortened by a dictionary, three passes over the whole
text in Lua's string library: the JSON keys of ``KEY_TOKENS`` (with their quotes and
colon), then the JSON strings of ``VALUE_TOKENS`` (with their quotes), each becoming the
byte of its place in ``FRAGMENTS`` (1 to 29), then the first eight digits of
``created_at_ms`` (the stamp), byte 31, so that timestamps near the task's creation take
six bytes. Byte 0 and one character stand for longer pieces: the code of a field of
``REFERENCED``, that field's value where the JSON of the others repeats it (the agent's id
and the fencing token, JSON strings, replaced in the pass over strings; two times, numbers
after their key's byte, replaced after the stamp), or a digit, a piece of ``ESCAPED_TEXT``
once shortened (the usual start of the transitions, of the requirements, ...). No other
byte 0 is in the text (it is below 32), and a referenced value (letters, digits, ``.:_-``
and the stamp byte) holds no piece of another. Reading expands byte 0 first, with the
referenced values as the text holds them, then replaces each byte below 32 by what it
stands for, in one pass, which gives back the text exactly: what a pass replaced never
holds a byte of an earlier pass. Records packed before byte 0 was used read the same.

This module is the one home of these tables: ``coordinator.storage.scripts`` gives them to
the task scripts (``lua_tables``), and ``expand`` is the Python reader.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from coordinator.storage.lua_source import lua_string

PACKED_PREFIX = "p"
"""The packed record's pieces are the fields ``p1``, ``p2``, ... in order."""

PIECE_BYTES = 64
"""Redis' default ``hash-max-listpack-value``: a longer value makes the hash a hashtable."""

MAX_PIECES = 100
"""Below Redis' default ``hash-max-listpack-entries`` (128), with ``state`` beside them."""

PLAIN_BYTES = 1024
"""A longer value stays a field of its own (not worth shortening, and the user's data)."""

END_BYTE = 30
"""Ends ``created_at_ms`` and each entry of the packed string."""

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

FREE_TEXT = ("routing_key", "submitted_by")
"""The fields with a code whose values the API does not restrict to printable characters."""

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
    "submitted",
    "acknowledged by agent",
    "completed by agent",
    "complete",
)
"""JSON strings of the same: ``"{value}"`` becomes one byte."""

STAMP_BYTE = 31

ESCAPE_BYTE = 0

REFERENCED: dict[str, bool] = {
    "agent_id": True,
    "fencing_token": True,
    "assigned_at_ms": False,
    "updated_at_ms": False,
}
"""Fields whose value the transitions and attempts repeat, in the order the packing refers
to them, and whether a reference stands for a JSON string (quoted) or a number. Only a
value of at least ``MIN_REFERENCED`` characters of ``[A-Za-z0-9._:-]`` and the stamp byte
is referred to (agent ids, tokens and times are)."""

MIN_REFERENCED = 3

ESCAPED_TEXT: tuple[str, ...] = (
    '[{"state":"PENDING","agent_id":"","attempt":0,"reason":"submitted","at_ms":',
    '"assigned by node ',
    '"services":[],"labels":{},"agent_id":"","min_health_score":0.0,"preferred_capabilities":[]}',
    '{"agent_type":"","capabilities":',
    '},{"state":"ASSIGNED","agent_id":',
    '},{"state":"COMPLETED","agent_id":',
    '},{"state":"RUNNING","agent_id":',
)
"""JSON that most tasks' transitions and requirements hold (cjson's order of a transition's
keys, ``json.dumps``' of the requirements); byte 0 and the digit of its place stand for
each, once shortened like the rest (``shortened``)."""

FRAGMENTS: tuple[str, ...] = (
    *(f'"{key}":' for key in KEY_TOKENS),
    *(f'"{value}"' for value in VALUE_TOKENS),
)
"""What bytes 1, 2, ... stand for, in that order (byte 31: the stamp)."""

assert len(FRAGMENTS) < END_BYTE, "one byte per fragment; 30 ends entries, 31 is the stamp"

_CODE_NAMES = {code: name for name, code in FIELD_CODES.items()}
_PIECE = re.compile(rf"{PACKED_PREFIX}[1-9][0-9]*")
_SHORTENED = re.compile("[\x01-\x1d\x1f]")
_ESCAPES = re.compile("\x00(.)", re.DOTALL)
_BY_BYTE = {chr(i): fragment for i, fragment in enumerate(FRAGMENTS, start=1)}
_END = chr(END_BYTE)


def shortened(text: str) -> str:
    """``text`` as the packing's passes shorten it, but the stamp: the JSON keys of
    ``KEY_TOKENS``, then the strings of ``VALUE_TOKENS``, as their bytes."""
    byte_of = {fragment: chr(i) for i, fragment in enumerate(FRAGMENTS, start=1)}
    text = re.sub(r'"[A-Za-z0-9_]+":', lambda m: byte_of.get(m[0], m[0]), text)
    return re.sub(r'"[^"]*"', lambda m: byte_of.get(m[0], m[0]), text)


_ESCAPED_BY_DIGIT = {str(i): shortened(text) for i, text in enumerate(ESCAPED_TEXT)}
_TRANSITION_START = re.compile("},{\x01(.),\x02")
"""How a transition after the first starts, shortened: its state's byte is the group."""
assert len(ESCAPED_TEXT) <= 10 and not set(FIELD_CODES.values()) & set(_ESCAPED_BY_DIGIT)


def is_compact(record: dict[str, str]) -> bool:
    """Whether a task hash read with HGETALL is in the compact form."""
    return f"{PACKED_PREFIX}1" in record


def expand(record: dict[str, str], task_id: str) -> dict[str, str]:
    """The task hash, whichever its form: the compact form gives back every field that the
    hash held before it was packed."""
    if not is_compact(record):
        return record
    pieces = sorted((int(k[1:]), v) for k, v in record.items() if _PIECE.fullmatch(k))
    created, text = "".join(v for _, v in pieces).split(_END, 1)
    if chr(ESCAPE_BYTE) in text:
        text = _ESCAPES.sub(_escapes(text), text)
    by_byte = {**_BY_BYTE, chr(STAMP_BYTE): created[:STAMP_DIGITS]}
    text = _SHORTENED.sub(lambda m: by_byte[m[0]], text)
    fields = dict(DEFAULTS)
    for entry in text.split(_END)[:-1]:
        if entry[0] == "*":
            name, value = entry[1:].split("=", 1)
            fields[name] = value
        else:
            fields[_CODE_NAMES[entry[0]]] = entry[1:]
    for name, value in record.items():
        if name != "state" and not _PIECE.fullmatch(name):
            fields[name] = value  # kept as it was
    fields["created_at_ms"] = created
    fields["task_id"] = task_id
    fields["state"] = record["state"]
    return fields


def _escapes(text: str) -> Callable[[re.Match[str]], str]:
    """What byte 0 and each character stand for in one record's packed entries."""
    by_char = dict(_ESCAPED_BY_DIGIT)
    for entry in text.split(_END)[:-1]:
        name = _CODE_NAMES.get(entry[:1], "")
        if name in REFERENCED:
            by_char[entry[0]] = f'"{entry[1:]}"' if REFERENCED[name] else entry[1:]
    return lambda m: by_char[m[1]]


def lua_tables() -> str:
    """The tables of this module as Lua, for the task scripts (finished_lib.lua): two
    functions, ``packing_constants()`` and ``unpacking_constants()``, each building its
    tables when first called (most script calls neither pack nor read a finished task), from
    literals: no loop or string work in Lua."""
    tokens = {f'"{t}":': t for t in KEY_TOKENS} | {f'"{t}"': t for t in VALUE_TOKENS}
    byte_of = {fragment: chr(i) for i, fragment in enumerate(FRAGMENTS, start=1)}
    key_bytes = {t: byte_of[f'"{t}":'] for t in KEY_TOKENS}
    value_bytes = {t: byte_of[f'"{t}"'] for t in VALUE_TOKENS}
    assert len(tokens) == len(FRAGMENTS)
    free_text = ", ".join(f"{name} = true" for name in FREE_TEXT)
    piece_names = ", ".join(lua_string(f"{PACKED_PREFIX}{i}") for i in range(1, 17))
    packing_escapes, unpacking_escapes = _escape_tables()
    return "\n".join(
        (
            "local function packing_constants()",
            "  return {",
            f"    field_codes = {_lua_table(FIELD_CODES)},",
            f"    defaults = {_lua_table(DEFAULTS)},",
            f"    free_text = {{{free_text}}},",
            f"    key_bytes = {_lua_table(key_bytes)},",
            f"    value_bytes = {_lua_table(value_bytes)},",
            f"    piece_bytes = {PIECE_BYTES}, max_pieces = {MAX_PIECES},",
            f"    plain_bytes = {PLAIN_BYTES}, stamp_digits = {STAMP_DIGITS},",
            f"    piece_names = {{{piece_names}}},",
            *packing_escapes,
            "  }",
            "end",
            "local function unpacking_constants()",
            "  return {",
            f"    code_names = {_lua_table(_CODE_NAMES)},",
            f"    field_codes = {_lua_table(FIELD_CODES)},",
            f"    defaults = {_lua_table(DEFAULTS)},",
            f"    by_byte = {_lua_table({b: f for f, b in byte_of.items()})},",
            f"    stamp_digits = {STAMP_DIGITS},",
            *unpacking_escapes,
            "  }",
            "end",
        )
    )


def _escape_tables() -> tuple[list[str], list[str]]:
    """The Lua table fields of byte 0 (``REFERENCED``, ``ESCAPED_TEXT``), for packing and for
    unpacking."""
    escape = chr(ESCAPE_BYTE)
    string_references = ", ".join(
        f"{{{lua_string(name)}, {lua_string(FIELD_CODES[name])}}}"
        for name, quoted in REFERENCED.items()
        if quoted
    )
    number_references = ", ".join(
        lua_string(FIELD_CODES[name]) for name, quoted in REFERENCED.items() if not quoted
    )
    quoted_by_code = {FIELD_CODES[name]: quoted for name, quoted in REFERENCED.items()}
    referenced = ", ".join(
        f"[{lua_string(c)}] = {str(q).lower()}" for c, q in quoted_by_code.items()
    )
    starts: dict[str, str] = {}
    pieces = []
    for digit, text in _ESCAPED_BY_DIGIT.items():
        match = _TRANSITION_START.fullmatch(text)
        if match:  # one pass finds them all
            starts[match[1]] = escape + digit
        else:
            pieces.append(f"{{{lua_string(text)}, {lua_string(escape + digit)}}}")
    packing = [
        f"    string_references = {{{string_references}}},",
        f"    number_references = {{{number_references}}}, min_referenced = {MIN_REFERENCED},",
        f"    escaped = {{{', '.join(pieces)}}}, transition_starts = {_lua_table(starts)},",
    ]
    unpacking = [
        f"    referenced = {{{referenced}}},",
        f"    escaped = {_lua_table(_ESCAPED_BY_DIGIT)},",
    ]
    return packing, unpacking


def _lua_table(pairs: dict[str, str]) -> str:
    return "{" + ", ".join(f"[{lua_string(k)}] = {lua_string(v)}" for k, v in pairs.items()) + "}"
