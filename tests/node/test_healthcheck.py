"""The health probe client (``python -m coordinator health``) against scripted responses
from grpcio-testing's channel, and once against a real node."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import grpc
import grpc_testing
import pytest
from grpc_health.v1 import health_pb2

from coordinator.__main__ import main
from coordinator.tools import healthcheck

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
CHECK = HEALTH.methods_by_name["Check"]


def probe_with(service, terminate):
    """Run ``healthcheck.check`` on a grpc_testing channel and answer its Check with ``terminate``."""
    channel = grpc_testing.channel([HEALTH], grpc_testing.strict_real_time())
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(healthcheck.check, channel, service, 5.0)
        _, request, rpc = channel.take_unary_unary(CHECK)
        assert request.service == service
        terminate(rpc)
        return future.result(timeout=5)


@pytest.mark.parametrize(
    ("status", "serving", "name"),
    [
        (health_pb2.HealthCheckResponse.SERVING, True, "SERVING"),
        (health_pb2.HealthCheckResponse.NOT_SERVING, False, "NOT_SERVING"),
        (health_pb2.HealthCheckResponse.SERVICE_UNKNOWN, False, "SERVICE_UNKNOWN"),
    ],
)
def test_reported_status(status, serving, name):
    result = probe_with(
        "svc",
        lambda rpc: rpc.terminate(
            health_pb2.HealthCheckResponse(status=status), (), grpc.StatusCode.OK, ""
        ),
    )
    assert result == healthcheck.HealthResult(serving=serving, status=name)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND])
def test_errors_are_not_serving_with_the_code(code):
    result = probe_with("", lambda rpc: rpc.terminate(None, (), code, "nope"))
    assert result == healthcheck.HealthResult(serving=False, status=code.name)


async def test_cli_against_a_real_node(node, capsys):
    address = f"127.0.0.1:{node.port}"
    # The CLI is blocking: run it off the event loop that serves the node.
    assert await asyncio.to_thread(main, ["health", "--address", address]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert await asyncio.to_thread(main, ["health", "--address", address, "--service", "nope"]) == 1
    assert capsys.readouterr().out.strip() == "NOT_FOUND"
