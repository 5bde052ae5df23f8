"""The grant of a principal written in a credential file: ``roles`` and agent patterns.

Static token files and certificate grant files share the notation: roles and agent patterns
are ``;``-separated lists, patterns exact ids or shell-style (``gpu-*``).
"""

from __future__ import annotations

from coordinator.auth.principal import Principal, Role

MAX_PATTERNS = 256
"""Most agent patterns one grant may list."""


def parse_roles(text: str) -> frozenset[Role]:
    """The roles of a ``;``-separated list (at least one); ValueError naming a bad one."""
    names = [name for name in (part.strip() for part in text.split(";")) if name]
    if not names:
        raise ValueError("no role: list at least one of agent, client, reader, operator")
    return frozenset(Role.parse(name) for name in names)


def parse_patterns(text: str) -> tuple[str, ...]:
    """The agent patterns of a ``;``-separated list (may be empty)."""
    patterns = tuple(dict.fromkeys(p for p in (part.strip() for part in text.split(";")) if p))
    if len(patterns) > MAX_PATTERNS:
        raise ValueError(f"more than {MAX_PATTERNS} agent patterns")
    return patterns


def principal_of(
    name: str, roles: frozenset[Role], patterns: tuple[str, ...], source: str
) -> Principal:
    """A principal; ValueError when it is an agent that may act as no agent at all."""
    if not name:
        raise ValueError("the principal name is empty")
    if Role.AGENT in roles and not patterns:
        raise ValueError(f"principal {name!r} has role agent but no agent ids or patterns")
    return Principal(name=name, roles=roles, agent_patterns=patterns, source=source)


def parse_line(line: str, source: str) -> Principal:
    """``<principal>,<roles>,<agent patterns>`` (the grant file's line)."""
    fields = [field.strip() for field in line.split(",")]
    if len(fields) != 3:
        raise ValueError("expected 3 comma-separated fields: principal,roles,agent patterns")
    name, roles, patterns = fields
    return principal_of(name, parse_roles(roles), parse_patterns(patterns), source)


def content_lines(text: str) -> list[tuple[int, str]]:
    """The lines of a file that are neither blank nor ``#`` comments, with their numbers."""
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.strip().startswith("#")
    ]
