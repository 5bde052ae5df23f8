"""Safe defaults: loopback without authentication (protected mode), health open to probes,
reflection for authenticated callers only, metrics on loopback or behind a bearer token."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from auth_support import Keys, bearer
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from coordinator.config import ConfigError, Settings, load_settings
from coordinator.server import Coordinator


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "10.1.2.3", "node-a.lan"])
def test_without_auth_a_non_loopback_host_is_refused(host: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"COORDINATOR_HOST": host})
    assert "COORDINATOR_HOST" in str(caught.value)
    assert "COORDINATOR_INSECURE" in str(caught.value)
    assert load_settings({"COORDINATOR_HOST": host, "COORDINATOR_INSECURE": "true"}).host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_without_auth_loopback_hosts_are_fine(host: str) -> None:
    assert load_settings({"COORDINATOR_HOST": host}).host == host


def test_default_host_is_loopback_without_auth_and_every_interface_with_it(keys: Keys) -> None:
    assert load_settings({}).host == "127.0.0.1"
    with_auth = load_settings({"COORDINATOR_AUTH_TOKEN_FILE": str(keys.token_file)})
    assert with_auth.auth_enabled
    assert with_auth.host == "0.0.0.0"
    explicit = {"COORDINATOR_AUTH_TOKEN_FILE": str(keys.token_file), "COORDINATOR_HOST": "::1"}
    assert load_settings(explicit).host == "::1"


def test_a_node_built_in_code_refuses_too() -> None:
    with pytest.raises(ConfigError, match="COORDINATOR_HOST"):
        Coordinator(Settings(host="0.0.0.0", port=0))


def test_metrics_beyond_loopback_need_a_token(tmp_path: Path) -> None:
    env = {"COORDINATOR_METRICS_ENABLED": "true", "COORDINATOR_METRICS_HOST": "0.0.0.0"}
    with pytest.raises(ConfigError, match="COORDINATOR_METRICS_HOST"):
        load_settings(env)
    token = tmp_path / "metrics.token"
    token.write_text("s3cret-metrics-token\n")
    assert load_settings({**env, "COORDINATOR_METRICS_TOKEN_FILE": str(token)}).metrics_host == (
        "0.0.0.0"
    )


@pytest.mark.parametrize(
    ("variable", "content", "says"),
    [
        ("COORDINATOR_AUTH_JWT_HS256_SECRET_FILE", "too-short", "at least 32 bytes"),
        ("COORDINATOR_AUTH_JWT_PUBLIC_KEYS_FILE", "not a pem", "no PEM public key"),
        ("COORDINATOR_AUTH_TOKEN_FILE", "sha256:abc,alice,operator,", "line 1"),
        ("COORDINATOR_AUTH_TOKEN_FILE", "sha256:" + "a" * 64 + ",bob,wizard,", "unknown role"),
        ("COORDINATOR_AUTH_TOKEN_FILE", "sha256:" + "a" * 64 + ",bob,agent,", "no agent ids"),
        ("COORDINATOR_AUTH_TOKEN_FILE", None, "No such file"),
    ],
)
def test_a_bad_credential_file_stops_the_node_naming_its_variable(
    tmp_path: Path, variable: str, content: str | None, says: str
) -> None:
    path = tmp_path / "credential"
    if content is not None:
        path.write_text(content)
    settings = load_settings({variable: str(path), "COORDINATOR_PORT": "0"})
    with pytest.raises(ConfigError) as caught:
        Coordinator(settings)
    assert str(caught.value).startswith(variable)
    assert says in str(caught.value)


async def test_health_is_open_without_credentials(auth_node: Any) -> None:
    reply = await auth_node.health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def _list_services(channel: grpc.aio.Channel, metadata: Any = ()) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=metadata
    )
    return {
        s.name for reply in [r async for r in call] for s in reply.list_services_response.service
    }


async def test_reflection_needs_a_credential_when_auth_is_on(auth_node: Any, keys: Keys) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _list_services(auth_node.channel)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Any role will do: reflection shows the API, not its data.
    services = await _list_services(auth_node.channel, bearer(keys.mint("a", ["client"])))
    assert "aitbc.coordinator.v1.TaskService" in services


async def test_reflection_can_be_opened(start_auth_node: Any) -> None:
    node = await start_auth_node(reflection="open")
    assert "aitbc.coordinator.v1.AgentService" in await _list_services(node.channel)


def _scrape(port: int, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_metrics_require_the_bearer_token_when_one_is_set(
    start_node: Any, tmp_path: Path
) -> None:
    token_file = tmp_path / "metrics.token"
    token_file.write_text("metrics-token-1\n")
    node = await start_node(
        metrics_enabled=True, metrics_port=0, metrics_token_file=str(token_file)
    )
    port = node.coordinator.metrics_port
    assert _scrape(port)[0] == 401
    assert _scrape(port, "wrong-token")[0] == 401
    status, body = _scrape(port, "metrics-token-1")
    assert status == 200
    assert "aitbc_coordinator_rpc_handled_total" in body


async def test_metrics_bind_the_metrics_host(start_node: Any) -> None:
    node = await start_node(metrics_enabled=True, metrics_port=0)
    assert node.coordinator.metrics.http_address()[0] == "127.0.0.1"
    assert _scrape(node.coordinator.metrics_port)[0] == 200


def test_serve_refuses_to_start_and_says_why(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COORDINATOR_", "REDIS_URL", "NODE_ID"))
    }
    env.update({"COORDINATOR_HOST": "0.0.0.0", "REDIS_URL": "redis://127.0.0.1:1/1"})
    refused = subprocess.run(
        [sys.executable, "-m", "coordinator", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "configuration error: COORDINATOR_HOST: 0.0.0.0 is not a loopback address" in (
        refused.stderr
    )
    env.update(
        {"COORDINATOR_HOST": "127.0.0.1", "COORDINATOR_AUTH_TOKEN_FILE": str(tmp_path / "none")}
    )
    missing = subprocess.run(
        [sys.executable, "-m", "coordinator", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2
    assert "configuration error: COORDINATOR_AUTH_TOKEN_FILE:" in missing.stderr
