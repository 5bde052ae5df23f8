"""Reflection serves our descriptors with their comments (source_code_info), and the stock
descriptors for health and reflection."""

from __future__ import annotations

from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


async def ask(node, **request):
    stub = reflection_pb2_grpc.ServerReflectionStub(node.channel)
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**request)]))
    replies = [reply async for reply in call]
    assert len(replies) == 1
    return replies[0]


def files(reply) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    protos = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in reply.file_descriptor_response.file_descriptor_proto
    ]
    return {p.name: p for p in protos}


async def test_lists_every_service(node):
    reply = await ask(node, list_services="")
    assert {s.name for s in reply.list_services_response.service} == {
        "aitbc.coordinator.v1.AgentService",
        "aitbc.coordinator.v1.TaskService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_symbol_lookup_returns_the_file_with_comments_and_its_dependencies(node):
    found = files(await ask(node, file_containing_symbol="aitbc.coordinator.v1.AgentService"))
    agent_file = found["aitbc/coordinator/v1/agent.proto"]
    comments = " ".join(loc.leading_comments for loc in agent_file.source_code_info.location)
    assert "The agent's open stream is its presence" in comments
    assert {"aitbc/coordinator/v1/task.proto", "google/protobuf/timestamp.proto"} <= set(found)


async def test_file_lookup_and_fallback_for_stock_services(node):
    found = files(await ask(node, file_by_filename="aitbc/coordinator/v1/task.proto"))
    assert found["aitbc/coordinator/v1/task.proto"].source_code_info.location
    health = files(await ask(node, file_containing_symbol="grpc.health.v1.Health"))
    assert "grpc_health/v1/health.proto" in health  # the name grpcio-health-checking uses
    missing = await ask(node, file_containing_symbol="no.such.Symbol")
    assert missing.HasField("error_response")


async def test_every_method_resolves_for_describe(node):
    for symbol in (
        "aitbc.coordinator.v1.AgentService.Heartbeat",
        "aitbc.coordinator.v1.TaskService.WatchTask",
        "aitbc.coordinator.v1.Agent.health_score",
        "aitbc.coordinator.v1.TaskPriority",
        "grpc.health.v1.Health.Check",
    ):
        reply = await ask(node, file_containing_symbol=symbol)
        assert not reply.HasField("error_response"), symbol
