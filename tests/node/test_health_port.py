"""COORDINATOR_HEALTH_PORT: a plaintext port with grpc.health.v1 and nothing else, whose
statuses are the API port's (NOT_SERVING while the node drains)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aitbc.coordinator.v1 import agent_pb2, agent_pb2_grpc
from coordinator.config import ConfigError, load_settings
from coordinator.server import SERVICE_NAMES

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_the_health_port_serves_health_only_and_follows_the_node(start_node):
    node = await start_node(health_port=0)
    port = node.coordinator.health_port
    assert port and port != node.port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", *SERVICE_NAMES):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == SERVING

        # Nothing but health: the coordinator's services are not there.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await agent_pb2_grpc.AgentServiceStub(channel).GetAgent(
                agent_pb2.GetAgentRequest(agent_id="a")
            )
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED

        await node.coordinator.stop(grace_s=0)
        # The probe saw the drain before the port closed.
        assert (await watch.read()).status == NOT_SERVING
    assert node.coordinator.health_port is None


async def test_no_health_port_unless_asked(node):
    assert node.coordinator.health_listener is None
    assert node.coordinator.health_port is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"COORDINATOR_HEALTH_PORT": "9001"}, "COORDINATOR_PORT"),
        (
            {
                "COORDINATOR_HEALTH_PORT": "9464",
                "COORDINATOR_METRICS_ENABLED": "true",
            },
            "COORDINATOR_METRICS_PORT",
        ),
        ({"COORDINATOR_HEALTH_PORT": "70000"}, "COORDINATOR_HEALTH_PORT"),
    ],
)
def test_a_clashing_or_bad_health_port_is_refused_naming_it(env, named):
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert "COORDINATOR_HEALTH_PORT" in str(caught.value)
    assert named in str(caught.value)
