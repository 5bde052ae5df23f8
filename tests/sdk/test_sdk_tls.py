"""The SDK over TLS and mutual TLS, and its bearer token on every call (streams too)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from aitbc.coordinator.v1 import agent_pb2, task_pb2
from coordinator.sdk import Agent, Client, RpcError, TaskContext, TlsOptions, credentials
from coordinator.sdk.endpoints import Endpoints
from support import REPO
from tls_support import Pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.create(tmp_path / "pki")


def tls_address(node: Any) -> str:
    return f"localhost:{node.port}"


async def echo(task: TaskContext) -> dict[str, Any]:
    return dict(task.data)


async def test_agent_and_client_round_trip_over_mtls(start_node, pki, sdk_agents, make_client):
    # Client certificates alone (a node with required client certificates authenticates
    # those and refuses bearer tokens once authentication is built in).
    node = await start_node(**pki.node_settings(client_ca=True))
    agent_cert, agent_key = pki.client("tls-agent", "agent")
    client_cert, client_key = pki.client("tls-client", "client")
    await sdk_agents.start(
        tls_address(node),
        echo,
        "tls-agent",
        tls=TlsOptions(str(pki.ca_file), str(agent_cert), str(agent_key)),
    )
    client = make_client(
        tls_address(node), tls=TlsOptions(str(pki.ca_file), str(client_cert), str(client_key))
    )
    task = await client.submit("echo", {"over": "mtls"})
    assert await client.wait(task.task_id, timeout_s=20) == {"over": "mtls"}


async def test_agent_and_client_round_trip_over_tls_with_a_token(
    start_node, pki, sdk_agents, make_client
):
    # A node without authentication configured ignores the token; the TLS part is checked.
    node = await start_node(**pki.node_settings())
    await sdk_agents.start(
        tls_address(node), echo, "tls-agent", tls=TlsOptions(str(pki.ca_file)), token="agent-t"
    )
    client = make_client(tls_address(node), tls=TlsOptions(str(pki.ca_file)), token="client-t")
    task = await client.submit("echo", {"over": "tls"})
    assert await client.wait(task.task_id, timeout_s=20) == {"over": "tls"}


async def test_server_name_overrides_the_address_host(start_node, tmp_path, make_client):
    named = Pki.create(tmp_path / "named", names=("coordinator.test",))
    node = await start_node(**named.node_settings())
    plain_name = make_client(
        f"127.0.0.1:{node.port}", tls=TlsOptions(str(named.ca_file)), retry_timeout_s=0.5
    )
    with pytest.raises(RpcError) as caught:
        await plain_name.submit("echo", {})
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    overridden = make_client(
        f"127.0.0.1:{node.port}",
        tls=TlsOptions(str(named.ca_file), server_name="coordinator.test"),
    )
    assert (await overridden.submit("echo", {})).task_id


async def test_a_client_without_tls_cannot_use_a_tls_node(start_node, pki):
    node = await start_node(**pki.node_settings())
    async with Client(tls_address(node), retry_timeout_s=0.5, call_timeout_s=1) as client:
        with pytest.raises(RpcError) as caught:
            await client.submit("echo", {})
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


class MetadataRecorder(grpc.GenericRpcHandler):
    """A server that answers nothing (UNIMPLEMENTED) but records each call's metadata."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> None:
        metadata = {k: v for k, v in handler_call_details.invocation_metadata}  # type: ignore[attr-defined]
        self.calls.append((handler_call_details.method.rsplit("/", 1)[1], metadata))  # type: ignore[attr-defined]
        return None

    def tokens(self) -> dict[str, str]:
        return {method: metadata.get("authorization", "") for method, metadata in self.calls}


@pytest.fixture
async def recorder(pki: Pki) -> AsyncIterator[tuple[MetadataRecorder, int, int]]:
    """A recording server with a plaintext port and a TLS port."""
    handler = MetadataRecorder()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    plain = server.add_insecure_port("127.0.0.1:0")
    secure = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials([(pki.key_file.read_bytes(), pki.cert_file.read_bytes())]),
    )
    await server.start()
    yield handler, plain, secure
    await server.stop(0)


async def call_every_kind(endpoints: Endpoints) -> None:
    """One call of each kind the SDK makes: unary, server stream (typed and raw), client
    and bidirectional stream."""

    async def swallow(call: Any) -> None:
        try:
            if hasattr(call, "__aiter__"):
                async for _ in call:
                    pass
            else:
                await call
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNIMPLEMENTED

    await swallow(endpoints.agents().Heartbeat(agent_pb2.HeartbeatRequest(agent_id="a")))
    await swallow(endpoints.raw_assignment_stream()(agent_pb2.StreamAssignmentsRequest()))
    await swallow(endpoints.tasks().WatchTask(task_pb2.WatchTaskRequest(task_id="t")))
    stream = endpoints.tasks().StreamReportTasks()
    await swallow(stream)


EVERY_KIND = {"Heartbeat", "StreamAssignments", "WatchTask", "StreamReportTasks"}


async def test_token_is_sent_on_every_kind_of_call_over_tls(recorder, pki):
    handler, _, secure = recorder
    endpoints = Endpoints(
        f"localhost:{secure}", TlsOptions(str(pki.ca_file)), credentials.BearerToken("tok-1")
    )
    await call_every_kind(endpoints)
    await endpoints.close()
    assert handler.tokens() == {method: "Bearer tok-1" for method in EVERY_KIND}


async def test_token_is_sent_over_plaintext_to_loopback(recorder):
    handler, plain, _ = recorder
    endpoints = Endpoints(f"127.0.0.1:{plain}", None, credentials.BearerToken("tok-2"))
    await call_every_kind(endpoints)
    await endpoints.close()
    assert handler.tokens() == {method: "Bearer tok-2" for method in EVERY_KIND}


async def test_no_token_no_authorization_header(recorder):
    handler, plain, _ = recorder
    endpoints = Endpoints(f"127.0.0.1:{plain}")
    await call_every_kind(endpoints)
    await endpoints.close()
    assert handler.tokens() == {method: "" for method in EVERY_KIND}


async def test_sdk_agent_and_client_send_their_token(recorder, tmp_path, monkeypatch):
    handler, plain, _ = recorder
    monkeypatch.setattr(credentials, "TOKEN_RECHECK_S", 0.0)
    token_file = tmp_path / "agent.token"
    token_file.write_text("from-file-1\n")
    agent = Agent(
        "a-1",
        echo,
        addresses=f"127.0.0.1:{plain}",
        token_file=str(token_file),
        handle_signals=False,
    )
    with pytest.raises(RpcError):  # UNIMPLEMENTED is fatal to run()
        await asyncio.wait_for(agent.run(), 10)
    assert handler.calls[-1] == ("RegisterAgent", handler.calls[-1][1])
    assert handler.tokens()["RegisterAgent"] == "Bearer from-file-1"

    # A rotated token file is read again.
    token_file.write_text("from-file-2\n")
    async with Client(f"127.0.0.1:{plain}", token_file=str(token_file)) as client:
        with pytest.raises(RpcError):
            await client.submit("echo", {})
    assert handler.tokens()["SubmitTask"] == "Bearer from-file-2"


def test_token_is_not_sent_in_the_clear_across_a_network():
    with pytest.raises(ValueError, match="refusing to send a bearer token in the clear"):
        Client("10.1.2.3:9001", token="secret")
    with pytest.raises(ValueError, match=r"in the clear to coordinator\.internal:9001"):
        Agent("a", echo, addresses=["localhost:9001", "coordinator.internal:9001"], token="t")
    # Over TLS, or to loopback, it is allowed.
    Client("10.1.2.3:9001", token="secret", tls=TlsOptions())
    Client(["localhost:1", "127.0.0.1:2", "[::1]:3"], token="secret")


def test_bad_token_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="token: give token or token_file"):
        credentials.BearerToken("a", str(tmp_path / "f"))
    with pytest.raises(ValueError, match="cannot read"):
        Client("localhost:1", token_file=str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="the token is empty"):
        Client("localhost:1", token_file=str(empty))
    with pytest.raises(ValueError, match="without spaces"):
        Client("localhost:1", token="two words")
    with pytest.raises(ValueError, match="cert_file and key_file go together"):
        TlsOptions(cert_file="c.pem")
    with pytest.raises(ValueError, match="ca_file: cannot read"):
        Client("localhost:1", tls=TlsOptions(ca_file=str(tmp_path / "missing.pem")))


async def _python_m(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "coordinator",
        *args,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.timeout(90)
async def test_cli_commands_over_mtls(start_node, pki, sdk_agents, tmp_path):
    node = await start_node(**pki.node_settings(client_ca=True))
    agent_cert, agent_key = pki.client("cli-agent", "agent")
    await sdk_agents.start(
        tls_address(node),
        echo,
        "cli-agent",
        tls=TlsOptions(str(pki.ca_file), str(agent_cert), str(agent_key)),
    )
    client_cert, client_key = pki.client("cli-client", "client")
    flags = ["--ca-file", str(pki.ca_file), "--cert-file", str(client_cert)]
    flags += ["--key-file", str(client_key)]
    code, out, _ = await _python_m("health", "--address", tls_address(node), *flags)
    assert (code, out.strip()) == (0, "SERVING")
    # Without a client certificate the handshake fails.
    code, out, _ = await _python_m(
        "health", "--address", tls_address(node), "--ca-file", str(pki.ca_file)
    )
    assert (code, out.strip()) == (1, "UNAVAILABLE")

    # The same through the environment.
    env = {
        "AITBC_TLS_CA_FILE": str(pki.ca_file),
        "AITBC_TLS_CERT_FILE": str(client_cert),
        "AITBC_TLS_KEY_FILE": str(client_key),
    }
    code, out, err = await _python_m(
        "submit",
        "--address",
        tls_address(node),
        "--type",
        "echo",
        "--data",
        '{"cli": 1}',
        "--wait",
        "--timeout",
        "30",
        env=env,
    )
    assert code == 0, err
    assert out.strip().endswith('{"cli": 1}')

    # --token-file (AITBC_TOKEN_FILE) over TLS: a node without authentication ignores it.
    plain_tls = await start_node(**pki.node_settings())
    token_file = tmp_path / "client.token"
    token_file.write_text("cli-token\n")
    code, out, err = await _python_m(
        "submit",
        "--address",
        tls_address(plain_tls),
        "--type",
        "noop",
        "--ca-file",
        str(pki.ca_file),
        "--token-file",
        str(token_file),
    )
    assert code == 0, err
    assert out.startswith("submitted task ")
