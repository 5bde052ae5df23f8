"""``python -m coordinator token``: bearer tokens for a principal, its roles and agent ids.

Two kinds, matching what a node accepts (see the README's "Authentication"):

* a JWT signed with HS256 (``--secret-file``, the node's COORDINATOR_AUTH_JWT_HS256_SECRET_FILE)
  or RS256/ES256 (``--private-key``; the node holds the public key in
  COORDINATOR_AUTH_JWT_PUBLIC_KEYS_FILE), with claims ``sub``, ``roles``, ``agents``,
  ``aud``, ``iss``, ``iat``, ``nbf`` and ``exp``: printed on stdout;
* with ``--static``, a random token for the static token file: the token on stdout (what the
  caller sends), the file's line ``sha256:<hex>,<principal>,<roles>,<agent patterns>`` on
  stderr (what the node stores; the token itself is never stored).

Stdout carries only the token, so ``python -m coordinator token ... > agent.token`` makes a
token file for ``--token-file`` / ``AITBC_TOKEN_FILE``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from coordinator.auth.principal import Role

DEFAULT_AUDIENCE = "aitbc-coordinator"
MIN_HS256_SECRET_BYTES = 32
ALGORITHMS = ("HS256", "RS256", "ES256")
STATIC_TOKEN_BYTES = 32

_TTL = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}
_NAME = re.compile(r"^[^\s,;]{1,256}$")


@dataclass(frozen=True)
class Grant:
    """Who a token speaks for: the principal's name, its roles and the agent ids (or
    patterns) it may act as."""

    subject: str
    roles: tuple[Role, ...]
    agents: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not _NAME.match(self.subject):
            raise ValueError("--subject: 1 to 256 characters without spaces, ',' or ';'")
        if not self.roles:
            raise ValueError("--role: give at least one (agent, client, reader, operator)")
        for pattern in self.agents:
            if not _NAME.match(pattern):
                raise ValueError(f"--agent: {pattern!r}: no spaces, ',' or ';'")
        if Role.AGENT in self.roles and not self.agents:
            raise ValueError("--agent: role agent needs the agent ids (or patterns) it may use")


def parse_ttl(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``24h``, ``7d`` in seconds; ValueError otherwise."""
    match = _TTL.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise ValueError("--ttl: a positive duration such as 3600, 15m, 24h or 7d")
    return float(match.group(1)) * _TTL_UNITS[match.group(2)]


def mint_jwt(
    grant: Grant,
    *,
    key: bytes,
    algorithm: str,
    ttl_s: float,
    audience: str = DEFAULT_AUDIENCE,
    issuer: str | None = None,
    now: float | None = None,
) -> str:
    """A signed JWT for ``grant``, valid from now for ``ttl_s`` seconds."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"--algorithm: one of {', '.join(ALGORITHMS)}")
    signing_key: Any = key
    if algorithm == "HS256":
        if len(key) < MIN_HS256_SECRET_BYTES:
            raise ValueError(
                f"--secret-file: an HS256 secret has at least {MIN_HS256_SECRET_BYTES} bytes"
            )
    else:
        signing_key = _private_key(key, algorithm)
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": grant.subject,
        "roles": [role.value for role in grant.roles],
        "agents": list(grant.agents),
        "aud": audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + max(1, round(ttl_s)),
    }
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, signing_key, algorithm=algorithm)


def algorithm_of(pem: bytes) -> str:
    """RS256 for an RSA private key, ES256 for an EC one; ValueError otherwise."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ValueError("--private-key: not an unencrypted PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ES256"
    raise ValueError("--private-key: an RSA (RS256) or EC P-256 (ES256) key")


def _private_key(pem: bytes, algorithm: str) -> Any:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ValueError("--private-key: not an unencrypted PEM private key") from None
    if algorithm == "RS256" and not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("--private-key: RS256 needs an RSA key")
    if algorithm == "ES256" and not (
        isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    ):
        raise ValueError("--private-key: ES256 needs an EC P-256 key")
    return key


def static_token() -> str:
    """A new random bearer token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(STATIC_TOKEN_BYTES)


def token_file_line(token: str, grant: Grant) -> str:
    """The static token file's line for ``token``: only its SHA-256 is stored."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    roles = ";".join(role.value for role in grant.roles)
    return f"sha256:{digest},{grant.subject},{roles},{';'.join(grant.agents)}"


def grant_from(subject: str, roles: Sequence[str], agents: Sequence[str]) -> Grant:
    """A Grant from command-line values (roles may repeat or be comma-separated)."""
    parsed = []
    for text in roles:
        for part in text.split(","):
            if part.strip():
                try:
                    parsed.append(Role.parse(part))
                except ValueError as exc:
                    raise ValueError(f"--role: {exc}") from None
    return Grant(subject, tuple(dict.fromkeys(parsed)), tuple(dict.fromkeys(agents)))
