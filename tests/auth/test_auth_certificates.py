"""Client certificates name the principal: a real mutual-TLS port (trustme certificates)
on a real node, the authentication interceptor reading grpc's auth context.

The TLS settings and their port belong to the TLS change; here the node's gRPC server gets
one extra mutual-TLS port before it starts, and its authenticator the certificate reader
that ``Settings.client_certs_required`` turns on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
import pytest
import trustme
from auth_support import STATIC_TOKENS, Keys, bearer

from aitbc.coordinator.v1 import agent_pb2, agent_pb2_grpc, task_pb2, task_pb2_grpc
from coordinator.auth.certificates import CertificatePrincipals
from coordinator.config import Settings
from coordinator.server import Coordinator


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def mtls_port(
    make_settings: Callable[..., Settings], keys: Keys, ca: trustme.CA
) -> AsyncIterator[int]:
    settings = make_settings(auth_token_file=str(keys.token_file))
    node = Coordinator(settings)
    assert node.authenticator is not None
    node.authenticator.certificates = CertificatePrincipals(None)
    server_cert = ca.issue_cert("localhost")
    credentials = grpc.ssl_server_credentials(
        [(server_cert.private_key_pem.bytes(), server_cert.cert_chain_pems[0].bytes())],
        root_certificates=ca.cert_pem.bytes(),
        require_client_auth=True,
    )
    port = node.server.add_secure_port("127.0.0.1:0", credentials)
    await node.start()
    yield port
    await node.stop(grace_s=0)


def channel(port: int, ca: trustme.CA, client: trustme.LeafCert | None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem.bytes(),
        private_key=client.private_key_pem.bytes() if client else None,
        certificate_chain=client.cert_chain_pems[0].bytes() if client else None,
    )
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}",
        credentials,
        options=[("grpc.ssl_target_name_override", "localhost")],
    )


async def test_the_certificate_names_the_agent_it_may_act_as(
    mtls_port: int, ca: trustme.CA
) -> None:
    cert = ca.issue_cert("agent-7", organization_name="agent")
    async with channel(mtls_port, ca, cert) as ch:
        agents = agent_pb2_grpc.AgentServiceStub(ch)
        reply = await agents.RegisterAgent(
            agent_pb2.RegisterAgentRequest(agent_id="agent-7", agent_type="worker")
        )
        assert reply.created
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await agents.RegisterAgent(
                agent_pb2.RegisterAgentRequest(agent_id="agent-8", agent_type="worker")
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as stats:
            await task_pb2_grpc.TaskServiceStub(ch).GetStats(task_pb2.GetStatsRequest())
        assert stats.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "principal 'agent-7' lacks permission cluster.read" in (stats.value.details() or "")


async def test_a_bearer_token_wins_over_the_certificate(
    mtls_port: int, ca: trustme.CA, keys: Keys
) -> None:
    cert = ca.issue_cert("agent-7", organization_name="agent")
    async with channel(mtls_port, ca, cert) as ch:
        tasks = task_pb2_grpc.TaskServiceStub(ch)
        reader = bearer(STATIC_TOKENS["static-reader"][0])
        # The certificate alone (role agent) lacks cluster.read: the token is what answers.
        await tasks.GetStats(task_pb2.GetStatsRequest(), metadata=reader)


async def test_no_client_certificate_fails_the_handshake(mtls_port: int, ca: trustme.CA) -> None:
    async with channel(mtls_port, ca, None) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await task_pb2_grpc.TaskServiceStub(ch).GetStats(task_pb2.GetStatsRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_certificate_from_another_ca_fails_the_handshake(
    mtls_port: int, ca: trustme.CA
) -> None:
    stranger = trustme.CA().issue_cert("agent-7", organization_name="operator")
    async with channel(mtls_port, ca, stranger) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await task_pb2_grpc.TaskServiceStub(ch).GetStats(task_pb2.GetStatsRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_an_operator_certificate(mtls_port: int, ca: trustme.CA) -> None:
    cert = ca.issue_cert("ops.example", organization_name="operator")
    async with channel(mtls_port, ca, cert) as ch:
        reply = await task_pb2_grpc.TaskServiceStub(ch).PurgeQueue(
            task_pb2.PurgeQueueRequest(priority=task_pb2.TASK_PRIORITY_NORMAL)
        )
        assert reply.cancelled_count == 0
