"""``python -m coordinator token``: the JWTs it mints decode with the claims asked for, and
the static token's file line holds its hash."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from coordinator.tools import tokens
from support import REPO


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator", "token", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "hs256.secret"
    path.write_text("0123456789abcdef0123456789abcdef-shared\n")
    return path


def test_hs256_token_has_the_claims(secret_file: Path):
    before = int(time.time())
    result = run(
        "--subject",
        "gpu-fleet",
        "--role",
        "agent",
        "--agent",
        "gpu-*",
        "--agent",
        "cpu-1",
        "--ttl",
        "2h",
        "--secret-file",
        str(secret_file),
        "--issuer",
        "aitbc-ops",
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert "\n" not in token
    claims = jwt.decode(
        token,
        secret_file.read_text().strip().encode(),
        algorithms=["HS256"],
        audience="aitbc-coordinator",
        issuer="aitbc-ops",
    )
    assert claims["sub"] == "gpu-fleet"
    assert claims["roles"] == ["agent"]
    assert claims["agents"] == ["gpu-*", "cpu-1"]
    assert before <= claims["iat"] == claims["nbf"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == 7200
    # Signed with the secret: another one does not verify it.
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, b"x" * 40, algorithms=["HS256"], audience="aitbc-coordinator")


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_rs256_and_es256_tokens_verify_with_the_public_key(tmp_path: Path, kind: str):
    key = (
        rsa.generate_private_key(65537, 2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = tmp_path / "signing.pem"
    path.write_bytes(pem)
    result = run(
        "--subject",
        "ops-alice",
        "--role",
        "operator,reader",
        "--private-key",
        str(path),
        "--audience",
        "other-aud",
    )
    assert result.returncode == 0, result.stderr
    algorithm = "RS256" if kind == "rsa" else "ES256"
    assert jwt.get_unverified_header(result.stdout.strip())["alg"] == algorithm
    claims = jwt.decode(
        result.stdout.strip(), key.public_key(), algorithms=[algorithm], audience="other-aud"
    )
    assert (claims["sub"], claims["roles"], claims["agents"]) == (
        "ops-alice",
        ["operator", "reader"],
        [],
    )
    assert claims["exp"] - claims["iat"] == 86_400  # the default --ttl 24h


def test_static_token_prints_the_token_and_its_file_line():
    result = run("--static", "--subject", "gpu-fleet", "--role", "agent", "--agent", "gpu-*")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert len(token) >= 40
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert result.stderr.strip() == f"sha256:{digest},gpu-fleet,agent,gpu-*"
    again = run("--static", "--subject", "gpu-fleet", "--role", "agent", "--agent", "gpu-*")
    assert again.stdout.strip() != token


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--subject", "a", "--role", "agent"], "--agent: role agent needs"),
        (["--subject", "a", "--role", "wizard", "--static"], "--role: unknown role"),
        (["--subject", "a b", "--role", "client", "--static"], "--subject:"),
        (["--subject", "a", "--role", "client"], "give --secret-file"),
        (["--subject", "a", "--role", "client", "--ttl", "soon", "--secret-file", "S"], "--ttl"),
        (["--subject", "a", "--role", "client", "--secret-file", "/nonexistent"], "cannot read"),
    ],
)
def test_bad_arguments_exit_2_naming_the_flag(args, message, secret_file):
    args = [str(secret_file) if a == "S" else a for a in args]
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_short_hs256_secret_is_refused(tmp_path: Path):
    short = tmp_path / "short"
    short.write_text("too-short\n")
    result = run("--subject", "a", "--role", "client", "--secret-file", str(short))
    assert result.returncode == 2
    assert "at least 32 bytes" in result.stderr


def test_parse_ttl():
    assert tokens.parse_ttl("90") == 90
    assert tokens.parse_ttl("15m") == 900
    assert tokens.parse_ttl("7d") == 7 * 86_400
    for bad in ("0", "-1h", "1w", ""):
        with pytest.raises(ValueError):
            tokens.parse_ttl(bad)
