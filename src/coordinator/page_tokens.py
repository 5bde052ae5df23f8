"""Opaque page tokens for keyset paging (DiscoverAgents, ListTasks).

A token holds the sort key of the last item returned and a fingerprint of the filters, so
the next page starts right after that item even when items are added meanwhile, and a token
given with other filters is refused instead of silently returning a wrong page.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from coordinator.errors import InvalidArgument


def fingerprint(filters: Any) -> str:
    """A short digest of JSON-serialisable filters (sort lists before passing them)."""
    canonical = json.dumps(filters, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode(after: tuple[float, str], filters_fingerprint: str) -> str:
    """The token of a page that ended at ``after``."""
    raw = json.dumps({"f": filters_fingerprint, "k": after[0], "id": after[1]}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str, filters_fingerprint: str) -> tuple[float, str] | None:
    """The sort key a page token continues after; None for the first page.

    InvalidArgument naming ``page_token`` when the token is malformed or was made for other
    filters.
    """
    if not token:
        return None
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if raw["f"] == filters_fingerprint:
            return (float(raw["k"]), str(raw["id"]))
    except (ValueError, KeyError, TypeError):
        pass
    raise InvalidArgument.of(
        "page_token", "is not a next_page_token returned for these same filters"
    )
