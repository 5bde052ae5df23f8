"""Credential files that change while the node runs (a rotated key, a revoked token).

A ``WatchedFile`` re-reads its file when its identity (inode, size, modification time)
changes, and looks at most once per ``CHECK_INTERVAL_S``: a ``stat`` on every call would be
a system call on the hot path for a change that happens a few times a year.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from coordinator.config import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

CHECK_INTERVAL_S = 1.0
"""How stale a watched file's content may be: a revoked token stops working within this."""


class WatchedFile(Generic[T]):
    """The parsed content of a file, parsed again when the file changes.

    ``parse`` turns the file's text into the value and raises ValueError (naming the line)
    when it is invalid. At start the error propagates (the node does not start); later, a
    file that is invalid or missing keeps the previous value and is logged as an error once
    per change, so that a half-written file never locks every caller out.
    """

    def __init__(self, path: str, variable: str, parse: Callable[[str], T]) -> None:
        self.path = Path(path)
        self.variable = variable
        self._parse = parse
        self._identity = self._stat()
        try:
            self.value: T = parse(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{variable}: {path}: {_reason(exc)}") from None
        self._next_check = time.monotonic() + CHECK_INTERVAL_S

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def current(self) -> T:
        """The value, re-read first when the file changed since the last look."""
        now = time.monotonic()
        if now < self._next_check:
            return self.value
        self._next_check = now + CHECK_INTERVAL_S
        identity = self._stat()
        if identity == self._identity:
            return self.value
        self._identity = identity
        try:
            self.value = self._parse(self.path.read_text())
            log.info("%s: %s changed and was read again", self.variable, self.path)
        except (OSError, ValueError) as exc:
            exc_text = _reason(exc)
            log.error(
                "%s: %s changed but cannot be used (%s); keeping its previous content",
                self.variable,
                self.path,
                exc_text,
            )
        return self.value

    def force_check(self) -> None:
        """Look at the file on the next ``current()`` (tests, and callers that know)."""
        self._next_check = 0.0


def _reason(exc: BaseException) -> str:
    """Why a file could not be used, without its content."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)
