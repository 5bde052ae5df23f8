"""The static token file, in the spirit of Kubernetes' ``--token-auth-file``.

One token per line, CSV, ``#`` comments and blank lines ignored::

    sha256:<hex of sha256(token)>,<principal>,<roles ;-separated>,<agent patterns ;-separated>

Only the hashes are stored: the file leaks no usable token. A bearer token is hashed and
looked up (a dictionary lookup on a hash: no timing leaks the token). The file is read
again when it changes (``files.WatchedFile``), so adding or revoking a token needs no
restart.
"""

from __future__ import annotations

import hashlib
import re

from coordinator.auth import grants
from coordinator.auth.files import WatchedFile
from coordinator.auth.principal import Principal
from coordinator.errors import Unauthenticated

VARIABLE = "COORDINATOR_AUTH_TOKEN_FILE"

_HASH = re.compile(r"^sha256:([0-9a-f]{64})$")


def token_hash(token: str) -> str:
    """The hex SHA-256 of a token, as the file stores it."""
    return hashlib.sha256(token.encode()).hexdigest()


def file_line(token: str, principal: str, roles: str, agents: str = "") -> str:
    """The token file's line granting ``token`` (for the ``token --static`` command)."""
    return f"sha256:{token_hash(token)},{principal},{roles},{agents}"


def parse(text: str) -> dict[str, Principal]:
    """The principals of a token file's text by token hash; ValueError naming the line."""
    table: dict[str, Principal] = {}
    for number, line in grants.content_lines(text):
        try:
            fields = [field.strip() for field in line.split(",")]
            if len(fields) != 4:
                raise ValueError(
                    "expected 4 comma-separated fields: sha256:<hex>,principal,roles,agent patterns"
                )
            match = _HASH.match(fields[0].lower())
            if match is None:
                raise ValueError("the first field must be sha256: and 64 hex digits")
            if match.group(1) in table:
                raise ValueError("the same token hash appears twice")
            table[match.group(1)] = grants.principal_of(
                fields[1],
                grants.parse_roles(fields[2]),
                grants.parse_patterns(fields[3]),
                "token",
            )
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
    return table


class StaticTokens:
    """Principals of the static tokens of one file."""

    def __init__(self, path: str) -> None:
        self._file = WatchedFile(path, VARIABLE, parse)

    def principal(self, token: str) -> Principal:
        """The principal of ``token``; Unauthenticated when the file does not list it."""
        principal = self._file.current().get(token_hash(token))
        if principal is None:
            raise Unauthenticated(
                "unknown static token: its hash is not in COORDINATOR_AUTH_TOKEN_FILE"
            )
        return principal

    def force_check(self) -> None:
        """Look at the file again on the next call."""
        self._file.force_check()
