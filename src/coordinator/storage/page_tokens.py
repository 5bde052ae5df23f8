"""Opaque page tokens for keyset paging (DiscoverAgents, ListTasks).

A token holds the sort key of the last item returned and a fingerprint of the filters, so
the next page starts right after that item even when items are added meanwhile, and a token
given with other filters is refused instead of silently returning a wrong page.

A token is ``base64url(JSON) "." base64url(HMAC-SHA256(key, JSON)[:16])``. Every field of a
token read back is checked (a finite number, an id of at most ``MAX_ID_CHARS``), and a
token that fails any check is INVALID_ARGUMENT naming ``page_token``: a client cannot steer
the Redis queries with a made-up position (NaN once made Redis fail, INTERNAL).

The key is the cluster's: every node must accept the tokens of every other. The first node
to start stores 32 random bytes in Redis (``keys.PAGE_TOKEN_KEY``, SET NX) and every node
reads them (``ClusterKey``) at start and every ``KEY_REFRESH_S``. Until its first read
succeeds a node signs with a key of its own process, and tokens signed with the previous key
stay valid after a change, so a key that changes (Redis lost its data, a node started while
Redis was down) only makes some clients start their listing again from the first page.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import secrets
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from coordinator.errors import InvalidArgument
from coordinator.periodic import Periodic
from coordinator.storage import keys

log = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 512
"""Longer than any token this module makes (an id of 256 characters and the signature)."""

MAX_ID_CHARS = 256
"""Longest id a token may hold (agent ids have at most 128 characters, task ids 32)."""

MAC_BYTES = 16

KEY_REFRESH_S = 30.0


def fingerprint(filters: Any) -> str:
    """A short digest of JSON-serialisable filters (sort lists before passing them)."""
    canonical = json.dumps(filters, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode(after: tuple[float, str], filters_fingerprint: str) -> str:
    """The token of a page that ended at ``after``."""
    payload = json.dumps({"f": filters_fingerprint, "k": after[0], "id": after[1]}).encode()
    return f"{_b64(payload)}.{_b64(_mac(_keys[0], payload))}"


def decode(token: str, filters_fingerprint: str) -> tuple[float, str] | None:
    """The sort key a page token continues after; None for the first page.

    InvalidArgument naming ``page_token`` when the token is malformed, was not signed by
    this cluster, holds a field out of bounds, or was made for other filters.
    """
    if not token:
        return None
    after = _verified(token, filters_fingerprint)
    if after is None:
        raise InvalidArgument.of(
            "page_token", "is not a next_page_token returned for these same filters"
        )
    return after


def _verified(token: str, filters_fingerprint: str) -> tuple[float, str] | None:
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        return None
    encoded_payload, encoded_mac = token.split(".")
    try:
        payload, mac = _unb64(encoded_payload), _unb64(encoded_mac)
    except (ValueError, binascii.Error):
        return None
    if not any(hmac.compare_digest(mac, _mac(key, payload)) for key in _keys):
        return None
    try:
        raw = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(raw, dict) or raw.get("f") != filters_fingerprint:
        return None
    sort_key, item_id = raw.get("k"), raw.get("id")
    if isinstance(sort_key, bool) or not isinstance(sort_key, (int, float)):
        return None
    if not math.isfinite(sort_key):
        return None
    if not isinstance(item_id, str) or not 0 < len(item_id) <= MAX_ID_CHARS:
        return None
    return float(sort_key), item_id


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:MAC_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_keys: tuple[bytes, ...] = (secrets.token_bytes(32),)
"""The key tokens are signed with, then the one before it (still accepted)."""


def use_key(key: bytes) -> None:
    """Sign with ``key`` from now on; tokens signed with the key before it stay valid."""
    global _keys
    if key != _keys[0]:
        _keys = (key, _keys[0])


class ClusterKey:
    """Keeps this process's signing key equal to the cluster's, read from Redis (see the
    module docstring)."""

    def __init__(self, redis: Redis, refresh_s: float = KEY_REFRESH_S) -> None:
        self._redis = redis
        self._loop = Periodic("page-token-key", refresh_s, self.refresh)
        self._first: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Read the key now (in the background: Redis may be down) and every refresh_s."""
        self._first = asyncio.create_task(self.refresh(), name="page-token-key-first")
        self._loop.start()

    async def stop(self) -> None:
        """Stop refreshing (idempotent)."""
        first, self._first = self._first, None
        if first is not None:
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
        await self._loop.stop()

    async def refresh(self) -> None:
        """Read the cluster's key, creating it when no node has yet."""
        try:
            await self._redis.set(keys.PAGE_TOKEN_KEY, secrets.token_hex(32), nx=True)
            stored = await self._redis.get(keys.PAGE_TOKEN_KEY)
        except (RedisError, OSError) as exc:
            log.warning("page-token key not read from Redis, tried again later: %s", exc)
            return
        if stored:
            use_key(stored.encode() if isinstance(stored, str) else stored)
