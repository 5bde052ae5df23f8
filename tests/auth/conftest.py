"""Credentials for the trust-boundary tests: real keys, real JWTs (PyJWT), a real static
token file, and nodes that require them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from auth_support import HS256_SECRET, STATIC_TOKENS, Keys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from coordinator.auth.static_tokens import file_line


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
