"""Credentials for the trust-boundary tests: real keys, real JWTs (PyJWT), a real static
token file, and nodes that require them."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from coordinator.auth.static_tokens import file_line

AUDIENCE = "aitbc-coordinator"
HS256_SECRET = "test-secret-" + "x" * 40

STATIC_TOKENS = {
    "static-operator": ("tok-operator-0123456789", "operator", ""),
    "static-reader": ("tok-reader-0123456789", "reader", ""),
    "static-client": ("tok-client-0123456789", "client", ""),
    "static-agent": ("tok-agent-0123456789", "agent", "agent-own-*"),
}
"""principal -> (token, roles, agent patterns) of the static token file."""


@dataclass
class Keys:
    """The keys a test node trusts, and those it does not."""

    directory: Path
    rsa_private: Any
    ec_private: Any
    stranger_rsa_private: Any

    @property
    def secret_file(self) -> str:
        return str(self.directory / "hs256.secret")

    @property
    def public_keys_file(self) -> str:
        return str(self.directory / "public.pem")

    @property
    def token_file(self) -> Path:
        return self.directory / "tokens.csv"

    def mint(
        self,
        subject: str,
        roles: list[str],
        agents: list[str] | None = None,
        *,
        ttl_s: float = 3600,
        algorithm: str = "HS256",
        key: Any = None,
        audience: str | None = AUDIENCE,
        **claims: Any,
    ) -> str:
        """A JWT signed with the trusted key of ``algorithm`` (or ``key``)."""
        now = int(time.time())
        payload: dict[str, Any] = {"sub": subject, "roles": roles, "iat": now, "exp": now + ttl_s}
        if agents is not None:
            payload["agents"] = agents
        if audience is not None:
            payload["aud"] = audience
        payload.update(claims)
        if key is None:
            key = {
                "HS256": HS256_SECRET,
                "RS256": self.rsa_private,
                "ES256": self.ec_private,
            }[algorithm]
        return jwt.encode(payload, key, algorithm=algorithm)


def _pem(private_key: Any) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="session")
def _key_material() -> tuple[Any, Any, Any]:
    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP256R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


@pytest.fixture
def keys(tmp_path: Path, _key_material: tuple[Any, Any, Any]) -> Keys:
    rsa_private, ec_private, stranger = _key_material
    found = Keys(tmp_path, rsa_private, ec_private, stranger)
    Path(found.secret_file).write_text(HS256_SECRET + "\n")
    Path(found.public_keys_file).write_bytes(_pem(rsa_private) + _pem(ec_private))
    lines = ["# test tokens", ""] + [
        file_line(token, name, roles, agents)
        for name, (token, roles, agents) in STATIC_TOKENS.items()
    ]
    found.token_file.write_text("\n".join(lines) + "\n")
    return found


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token``."""
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
def start_auth_node(
    start_node: Callable[..., Awaitable[Any]], keys: Keys
) -> Callable[..., Awaitable[Any]]:
    """Start a node that requires a credential: JWTs (HS256, RS256, ES256) and static tokens."""

    async def start(**overrides: Any) -> Any:
        settings: dict[str, Any] = {
            "auth_jwt_hs256_secret_file": keys.secret_file,
            "auth_jwt_public_keys_file": keys.public_keys_file,
            "auth_token_file": str(keys.token_file),
        }
        settings.update(overrides)
        return await start_node(**settings)

    return start


@pytest.fixture
async def auth_node(start_auth_node: Callable[..., Awaitable[Any]]) -> Any:
    return await start_auth_node()
