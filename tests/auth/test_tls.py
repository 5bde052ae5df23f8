"""TLS and mutual TLS on the gRPC port (tls.py), with real handshakes: who gets in,
and certificate rotation with the files replaced under a running node."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent_harness import ScriptedAgent, submit_request
from aitbc.coordinator.v1 import task_pb2_grpc
from tls_support import Pki, health_check, health_over

StartNode = Callable[..., Awaitable[Any]]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.create(tmp_path / "pki")


async def test_tls_node_serves_a_client_that_trusts_its_ca(start_node: StartNode, pki: Pki):
    node = await start_node(**pki.node_settings())
    assert await health_over(node.port, pki.channel_credentials()) == "SERVING"


async def test_plaintext_client_to_a_tls_port_fails(start_node: StartNode, pki: Pki):
    node = await start_node(**pki.node_settings())
    assert await health_over(node.port, None) == "UNAVAILABLE"


async def test_client_that_does_not_trust_the_ca_fails(
    start_node: StartNode, pki: Pki, tmp_path: Path
):
    node = await start_node(**pki.node_settings())
    stranger = Pki.create(tmp_path / "stranger")
    code, details = await health_check(node.port, stranger.channel_credentials())
    # The client is told why (the server's side only reaches gRPC core's INFO log).
    assert code == "UNAVAILABLE"
    assert "CERTIFICATE_VERIFY_FAILED" in details and "local issuer" in details


async def test_expired_server_certificate_fails(start_node: StartNode, tmp_path: Path):
    expired = Pki.create(tmp_path / "expired", expired=True)
    node = await start_node(**expired.node_settings())
    code, details = await health_check(node.port, expired.channel_credentials())
    assert code == "UNAVAILABLE"
    assert "certificate has expired" in details


async def test_mtls_refuses_a_client_without_a_certificate(start_node: StartNode, pki: Pki):
    node = await start_node(**pki.node_settings(client_ca=True))
    assert node.coordinator.settings.client_certs_required
    assert await health_over(node.port, pki.channel_credentials()) == "UNAVAILABLE"


async def test_mtls_refuses_a_certificate_from_another_ca(
    start_node: StartNode, pki: Pki, tmp_path: Path
):
    node = await start_node(**pki.node_settings(client_ca=True))
    other = Pki.create(tmp_path / "other")
    # Trusts the node's CA, but presents a certificate the node's client CA did not sign.
    cert, key = other.client("intruder", "operator")
    credentials = grpc.ssl_channel_credentials(
        pki.ca_file.read_bytes(), key.read_bytes(), cert.read_bytes()
    )
    assert await health_over(node.port, credentials) == "UNAVAILABLE"


async def test_mtls_accepts_a_certificate_from_the_client_ca(start_node: StartNode, pki: Pki):
    node = await start_node(**pki.node_settings(client_ca=True))
    client = pki.client("agent-1", "agent")
    assert await health_over(node.port, pki.channel_credentials(client)) == "SERVING"


def replace_files(target: Pki, source: Pki) -> None:
    """Swap ``target``'s server files for ``source``'s the way a renewal does: write aside,
    then rename over (each file atomically, one after the other)."""
    for src, dst in (
        (source.cert_file, target.cert_file),
        (source.key_file, target.key_file),
        (source.ca_file, target.ca_file),
    ):
        aside = dst.with_suffix(".new")
        shutil.copyfile(src, aside)
        os.replace(aside, dst)


async def test_rotation_keeps_open_streams_and_new_handshakes_use_the_new_certificate(
    start_node: StartNode, pki: Pki, tmp_path: Path
):
    node = await start_node(**pki.node_settings())
    old_channel = grpc.aio.secure_channel(f"localhost:{node.port}", pki.channel_credentials())
    agent = await ScriptedAgent(old_channel, "rotating-agent").start()
    try:
        renewed = Pki.create(tmp_path / "renewed")
        replace_files(pki, renewed)

        # A new handshake is made with the new certificate: a client trusting only the new
        # CA gets in.
        assert await health_over(node.port, renewed.channel_credentials()) == "SERVING"

        # The stream opened before the rotation still carries assignments.
        new_channel = grpc.aio.secure_channel(
            f"localhost:{node.port}", renewed.channel_credentials()
        )
        async with new_channel:
            tasks = task_pb2_grpc.TaskServiceStub(new_channel)
            submitted = await tasks.SubmitTask(submit_request(task_type="after-rotation"))
            assignment = await agent.next_assignment()
            assert assignment.task_id == submitted.task.task_id
            assert not agent.stream_closed.is_set()
    finally:
        await agent.stop()
        await old_channel.close()


async def test_old_ca_no_longer_verifies_after_rotation(
    start_node: StartNode, pki: Pki, tmp_path: Path
):
    node = await start_node(**pki.node_settings())
    old_trust = pki.channel_credentials()
    assert await health_over(node.port, old_trust) == "SERVING"
    replace_files(pki, Pki.create(tmp_path / "renewed"))
    assert await health_over(node.port, old_trust) == "UNAVAILABLE"


async def test_half_written_files_keep_the_old_certificate_until_both_are_in_place(
    start_node: StartNode, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    node = await start_node(**pki.node_settings())
    old_trust = pki.channel_credentials()
    renewed = Pki.create(tmp_path / "renewed")
    caplog.set_level("WARNING", logger="coordinator.tls")

    # The new certificate is there, its key not yet: the pair does not match.
    shutil.copyfile(renewed.cert_file, pki.cert_file)
    assert await health_over(node.port, old_trust) == "SERVING"
    assert await health_over(node.port, old_trust) == "SERVING"
    refusals = [r for r in caplog.records if "cannot be used yet" in r.message]
    assert len(refusals) == 1, "logged once per change, not once per handshake"
    assert "does not belong to the certificate" in refusals[0].message
    # A truncated key file: still the old pair.
    pki.key_file.write_bytes(renewed.key_file.read_bytes()[:40])
    assert await health_over(node.port, old_trust) == "SERVING"

    shutil.copyfile(renewed.key_file, pki.key_file)
    assert await health_over(node.port, renewed.channel_credentials()) == "SERVING"
    assert await health_over(node.port, old_trust) == "UNAVAILABLE"


async def test_a_rotated_client_ca_refuses_certificates_of_the_old_one(
    start_node: StartNode, pki: Pki, tmp_path: Path
):
    node = await start_node(**pki.node_settings(client_ca=True))
    old_client = pki.client("agent-1", "agent")
    assert await health_over(node.port, pki.channel_credentials(old_client)) == "SERVING"

    renewed = Pki.create(tmp_path / "renewed")
    replace_files(pki, renewed)
    new_client = renewed.client("agent-1", "agent")
    old_cert_new_trust = grpc.ssl_channel_credentials(
        renewed.ca_file.read_bytes(), old_client[1].read_bytes(), old_client[0].read_bytes()
    )
    assert await health_over(node.port, old_cert_new_trust) == "UNAVAILABLE"
    assert await health_over(node.port, renewed.channel_credentials(new_client)) == "SERVING"


async def test_many_handshakes_after_a_rotation_reload_once(
    start_node: StartNode, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    node = await start_node(**pki.node_settings())
    renewed = Pki.create(tmp_path / "renewed")
    replace_files(pki, renewed)
    caplog.set_level("INFO", logger="coordinator.tls")
    results = await asyncio.gather(
        *(health_over(node.port, renewed.channel_credentials()) for _ in range(5))
    )
    assert results == ["SERVING"] * 5
    reloads = [r for r in caplog.records if "new handshakes use the new certificate" in r.message]
    assert len(reloads) == 1
