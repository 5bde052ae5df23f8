"""Redis connections that pack commands in C (hiredis) instead of redis-py's Python packer.

redis-py's asyncio connections always pack with Python, about 40 µs for a script call with
twenty arguments, paid for every submit, assignment and report; hiredis does the same in
about 5 µs and gives the same bytes. Arguments are checked as redis-py checks them: a bool
or None is an error, a float is sent as ``repr`` (hiredis would round it differently).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.exceptions import DataError


class HiredisPacking(AbstractConnection):
    """Mixed in before a redis-py connection class."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str) and " " in first:  # 'CONFIG GET', 'SCRIPT LOAD', ...
            args = (*first.split(), *args[1:])
        elif isinstance(first, bytes) and b" " in first:
            args = (*first.split(), *args[1:])
        return [pack_command(args)]


def pack_command(args: Sequence[Any]) -> bytes:
    """One command's RESP bytes, its arguments checked as redis-py checks them."""
    if not set(map(type, args)) <= _SENT_AS_IS:
        args = tuple(_checked(a) for a in args)
    packed: bytes = hiredis.pack_command(tuple(args))
    return packed


_SENT_AS_IS = {str, bytes, int}
"""Types hiredis packs exactly as redis-py would (bool, a subclass of int, is not one)."""


def _checked(value: Any) -> Any:
    if isinstance(value, str | bytes | int) and not isinstance(value, bool):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, memoryview):
        return value.tobytes()
    raise DataError(
        f"Invalid input of type: {type(value).__name__!r}. Convert to a bytes, string, int or float first."
    )


class PackedConnection(HiredisPacking, Connection):
    """TCP."""


class PackedSSLConnection(HiredisPacking, SSLConnection):
    """TLS (rediss://)."""


class PackedUnixDomainSocketConnection(HiredisPacking, UnixDomainSocketConnection):
    """Unix socket (unix://)."""


PACKED_CLASSES: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: PackedConnection,
    SSLConnection: PackedSSLConnection,
    UnixDomainSocketConnection: PackedUnixDomainSocketConnection,
}
"""The packing class for each connection class a Redis URL may choose."""
