"""Credentials one by one: the static token file as it changes, the JWT cache and its
expiry, key rotation, issuer and claims, and the principals of client certificates."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import trustme
from auth_support import STATIC_TOKENS, Keys, bearer

from aitbc.coordinator.v1 import task_pb2
from coordinator.auth import files, jwt_tokens
from coordinator.auth.certificates import CertificatePrincipals
from coordinator.auth.principal import Role
from coordinator.auth.static_tokens import file_line
from coordinator.errors import Unauthenticated

STATS = task_pb2.GetStatsRequest()


async def code_of(node: Any, metadata: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await node.tasks.GetStats(STATS, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _write(path: str, text: str) -> None:
    Path(path).write_text(text)


def _read_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


@pytest.fixture
def quick_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credential files looked at every 0.1 s instead of every second."""
    monkeypatch.setattr(files, "CHECK_INTERVAL_S", 0.1)


async def test_the_token_file_is_read_again_when_it_changes(
    quick_files: None, auth_node: Any, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    reader_token = STATIC_TOKENS["static-reader"][0]
    assert (await code_of(auth_node, bearer(reader_token)))[0] == grpc.StatusCode.OK
    new_token = "tok-new-reader-987654321"
    assert (await code_of(auth_node, bearer(new_token)))[0] == grpc.StatusCode.UNAUTHENTICATED
    # Revoke the reader's token and issue another: no restart.
    keys.token_file.write_text(file_line(new_token, "new-reader", "reader") + "\n")
    await asyncio.sleep(0.3)
    assert (await code_of(auth_node, bearer(reader_token)))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert (await code_of(auth_node, bearer(new_token)))[0] == grpc.StatusCode.OK
    # A broken file keeps what was read last, and says why.
    keys.token_file.write_text("this is not a token line\n")
    await asyncio.sleep(0.3)
    assert (await code_of(auth_node, bearer(new_token)))[0] == grpc.StatusCode.OK
    assert any("COORDINATOR_AUTH_TOKEN_FILE" in r.getMessage() for r in caplog.records)


async def test_a_jwt_signature_is_verified_once_and_its_expiry_on_every_call(
    monkeypatch: pytest.MonkeyPatch, auth_node: Any, keys: Keys
) -> None:
    monkeypatch.setattr(jwt_tokens, "LEEWAY_S", 0.0)
    verified: list[str] = []
    real_decode = jwt.decode

    def counting_decode(token: str, *args: Any, **kwargs: Any) -> Any:
        verified.append(token)
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt_tokens.jwt, "decode", counting_decode)
    token = keys.mint("short-lived", ["reader"], ttl_s=2)
    for _ in range(5):
        assert (await code_of(auth_node, bearer(token)))[0] == grpc.StatusCode.OK
    assert len(verified) == 1
    await asyncio.sleep(2.5)
    code, message = await code_of(auth_node, bearer(token))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert message == "token expired"
    assert len(verified) == 1  # refused from the cache, without verifying again


async def test_a_rotated_secret_stops_the_old_tokens(
    quick_files: None, auth_node: Any, keys: Keys
) -> None:
    old = keys.mint("before-rotation", ["reader"])
    assert (await code_of(auth_node, bearer(old)))[0] == grpc.StatusCode.OK
    new_secret = "rotated-secret-" + "z" * 40
    _write(keys.secret_file, new_secret)
    await asyncio.sleep(0.3)
    code, message = await code_of(auth_node, bearer(old))
    assert (code, message) == (grpc.StatusCode.UNAUTHENTICATED, "token signature does not verify")
    fresh = keys.mint("after-rotation", ["reader"], key=new_secret)
    assert (await code_of(auth_node, bearer(fresh)))[0] == grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("claims", "says"),
    [
        ({"iss": None}, "token lacks the required claim iss"),
        ({"iss": "someone-else"}, "token issuer is not https://issuer.example"),
        ({"roles": []}, "token claim roles must be a non-empty list"),
        ({"roles": ["wizard"]}, "unknown role 'wizard'"),
        ({"roles": ["agent"]}, "has role agent but no agent ids"),
        ({"nbf": 4102444800}, "token not yet valid"),
        ({"exp": None}, "token lacks the required claim exp"),
    ],
)
async def test_claims_are_checked(
    start_auth_node: Any, keys: Keys, claims: dict[str, Any], says: str
) -> None:
    node = await start_auth_node(auth_jwt_issuer="https://issuer.example")
    payload: dict[str, Any] = {
        "sub": "someone",
        "roles": ["reader"],
        "aud": "aitbc-coordinator",
        "iss": "https://issuer.example",
        "exp": 4102444800,
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    token = jwt.encode(payload, "test-secret-" + "x" * 40, algorithm="HS256")
    code, message = await code_of(node, bearer(token))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert says in message


async def test_an_hs256_token_signed_with_the_public_key_is_refused(
    start_auth_node: Any, keys: Keys
) -> None:
    """The key-confusion attack: the RSA public key (which is public) used as an HMAC
    secret. Only the secret file's key verifies HS256."""
    node = await start_auth_node(auth_jwt_hs256_secret_file="")
    pem = _read_bytes(keys.public_keys_file)
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    body = jwt.utils.base64url_encode(
        b'{"sub":"x","roles":["operator"],"aud":"aitbc-coordinator","exp":4102444800}'
    )
    signature = jwt.utils.base64url_encode(
        hmac.new(pem, header + b"." + body, hashlib.sha256).digest()
    )
    token = (header + b"." + body + b"." + signature).decode()
    code, message = await code_of(node, bearer(token))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "HS256 is not accepted" in message


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _auth_context(cert: trustme.LeafCert) -> dict[str, list[bytes]]:
    return {"x509_pem_cert": [cert.cert_chain_pems[0].bytes()]}


def test_a_certificate_names_its_holder_and_its_o_gives_the_roles(ca: trustme.CA) -> None:
    cert = ca.issue_cert("agent-7.fleet.internal", organization_name="agent")
    principal = CertificatePrincipals(None).principal(_auth_context(cert))
    assert principal is not None
    assert principal.name == "agent-7.fleet.internal"
    assert principal.roles == frozenset({Role.AGENT})
    assert principal.may_act_as("agent-7.fleet.internal")
    assert not principal.may_act_as("agent-8.fleet.internal")


def test_the_grants_file_wins_over_the_certificates_o(ca: trustme.CA, tmp_path: Path) -> None:
    grants = tmp_path / "grants.csv"
    grants.write_text("# certificate grants\nbatch-runner,client;reader,\n")
    cert = ca.issue_cert("batch-runner", organization_name="operator")
    principal = CertificatePrincipals(str(grants)).principal(_auth_context(cert))
    assert principal is not None
    assert principal.roles == frozenset({Role.CLIENT, Role.READER})


def test_a_certificate_without_a_grant_is_refused(ca: trustme.CA) -> None:
    cert = ca.issue_cert("stranger", organization_name="ACME Corp")
    with pytest.raises(Unauthenticated, match="has no grant"):
        CertificatePrincipals(None).principal(_auth_context(cert))
    assert CertificatePrincipals(None).principal({}) is None


async def test_a_stream_is_authenticated_once_not_per_message(
    auth_node: Any, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    authenticator = auth_node.coordinator.authenticator
    calls: list[int] = []
    real = authenticator.authenticate

    def counting(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(authenticator, "authenticate", counting)
    messages = [
        task_pb2.StreamSubmitTasksRequest(tasks=[task_pb2.SubmitTaskRequest(task_type="t")])
        for _ in range(5)
    ]
    call = auth_node.tasks.StreamSubmitTasks(
        iter(messages), metadata=bearer(keys.mint("c", ["client"]))
    )
    replies = [reply async for reply in call]
    assert len(replies) == 5
    assert all(not r.results[0].HasField("error") for r in replies)
    assert len(calls) == 1
