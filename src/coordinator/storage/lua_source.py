"""How a named script's Lua source is put together from its file and the helper files.

Redis runs a script's whole text on every call: each ``local function`` of a helper file
makes a closure and each table of constants a table, every call, used or not, and all of it
is garbage the next moment. So a script is sent with only the helpers it reaches (its own
file's names, then theirs, to a fixed point), and with its key names written in as string
literals (``K.queue`` becomes ``'tasks:queue:'``), not read from a table built each call.
On the task scripts' hot path this is several microseconds of Redis a call (the
assignment script: about 23 to 17 on an idle Redis).

The helper files keep one layout, which ``definitions`` checks: at the top level, only
comments, blank lines, ``local function name(...)`` ... up to a line that is ``end``
alone, and ``local NAME = ...`` (a table may run over lines, up to its closing brace). The
comments just above a definition go with it. A helper dropped is one whose name appears
nowhere in the code kept (comments aside), so keeping too much is the only way to be wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_FUNCTION = re.compile(r"local function ([A-Za-z_]\w*)\s*\(")
_VALUE = re.compile(r"local ([A-Za-z_]\w*)\s*=")
_COMMENT = re.compile(r"--[^\n]*")
_NAME = re.compile(r"[A-Za-z_]\w*")
_KEY = re.compile(r"\bK\.([A-Za-z_]\w*)")


@dataclass(frozen=True, slots=True)
class Definition:
    """One top-level definition of a helper file: the name it defines, and its text with
    the comments just above it."""

    name: str
    text: str


def definitions(helper: str, file_name: str) -> list[Definition]:
    """The top-level definitions of one helper file, in order; ValueError if the file
    strays from the layout (the module's docstring)."""
    lines = helper.split("\n")
    found: list[Definition] = []
    pending: list[str] = []  # comments and blank lines, waiting for the next definition
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("--"):
            pending.append(line)
            i += 1
            continue
        if function := _FUNCTION.match(line):
            end = lines.index("end", i + 1)
            name = function.group(1)
        elif value := _VALUE.match(line):
            end = i
            while _open_brackets("\n".join(lines[i : end + 1])) > 0:
                end += 1
                if end == len(lines):
                    raise ValueError(f"{file_name}: the table of line {i + 1} never closes")
            name = value.group(1)
        else:
            raise ValueError(f"{file_name}:{i + 1}: not a top-level definition: {line[:60]!r}")
        found.append(Definition(name, "\n".join([*pending, *lines[i : end + 1]])))
        pending = []
        i = end + 1
    return found


def _open_brackets(text: str) -> int:
    code = _COMMENT.sub("", text)
    return code.count("{") - code.count("}") + code.count("(") - code.count(")")


def names_used(code: str) -> set[str]:
    """Every name in Lua code outside its comments (and inside strings: too many is safe)."""
    return set(_NAME.findall(_COMMENT.sub("", code)))


ENTRIES_LOOP = """
local replies = {}
local at = 1
while at <= #ARGV do
  local count = tonumber(ARGV[at])
  local ok, reply = pcall(one_entry, {unpack(ARGV, at + 1, at + count)})
  if not ok then  -- as the call alone would have answered: an error, the entries before kept
    reply = type(reply) == 'table' and reply or redis.error_reply(tostring(reply))
  elseif reply == nil then
    reply = false  -- a nil reply, and no hole in the list
  end
  replies[#replies + 1] = reply
  at = at + count + 1
end
return replies"""
"""The end of a script's entries form (``assembled(..., entries=True)``): its ARGV is
entries, each its count of arguments then the arguments of one call of the script; it runs
the script's own file once per entry, in order, and answers the list of their replies."""


def assembled(
    body: str,
    helpers: Iterable[tuple[str, str]],
    keys: Mapping[str, str],
    *,
    entries: bool = False,
) -> str:
    """A script's source: the definitions of ``helpers`` (file name, text; in that order)
    that ``body`` reaches, then ``body``; every ``K.<name>`` written as the literal of
    ``keys[name]``. With ``entries``, its entries form: ``body`` becomes the function
    ``one_entry(ARGV)``, which ``ENTRIES_LOOP`` calls for each entry, so that many calls
    of one script share one run's fixed cost (the definitions, Redis' setting up a call).
    No entry may use KEYS (the form is for calls that have none)."""
    every = [d for file_name, text in helpers for d in definitions(text, file_name)]
    wanted = names_used(body)
    kept = [False] * len(every)
    grew = True
    while grew:
        grew = False
        for i, definition in enumerate(every):
            if not kept[i] and definition.name in wanted:
                kept[i] = True
                wanted |= names_used(definition.text)
                grew = True
    parts = [d.text for d, keep in zip(every, kept, strict=True) if keep]
    if entries:
        body = f"local function one_entry(ARGV)\n{body}\nend\n{ENTRIES_LOOP}"
    return _with_key_literals("\n".join([*parts, body]), keys)


def _with_key_literals(code: str, keys: Mapping[str, str]) -> str:
    def literal(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in keys:
            raise KeyError(f"K.{name}: no such key name")
        return lua_string(keys[name])

    written = _KEY.sub(literal, code)
    if re.search(r"\bK\b", _without_strings(_COMMENT.sub("", written))):
        raise ValueError("K is used otherwise than as K.<name>")
    return written


def _without_strings(code: str) -> str:
    return re.sub(r"'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"", "''", code)


def lua_string(value: str) -> str:
    """``value`` as a Lua string literal (bytes below 32 as decimal escapes)."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return "'" + "".join(c if ord(c) >= 32 else f"\\{ord(c):03d}" for c in escaped) + "'"
