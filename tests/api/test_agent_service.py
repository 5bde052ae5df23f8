"""AgentService over real gRPC on a real Redis: registration, heartbeats, status, removal,
and every validation error with its status code and field."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from agent_harness import ScriptedAgent
from aitbc.coordinator.v1 import agent_pb2
from coordinator.storage import keys

ACTIVE = agent_pb2.AGENT_STATUS_ACTIVE
BUSY = agent_pb2.AGENT_STATUS_BUSY
MAINTENANCE = agent_pb2.AGENT_STATUS_MAINTENANCE
ERROR = agent_pb2.AGENT_STATUS_ERROR
INACTIVE = agent_pb2.AGENT_STATUS_INACTIVE


def registration(**fields):
    return agent_pb2.RegisterAgentRequest(
        **{"agent_id": "agent-1", "agent_type": "worker", **fields}
    )


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The google.rpc.BadRequest field violations carried in the rich status details."""
    details = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert details, "INVALID_ARGUMENT must carry google.rpc.Status details"
    status = status_pb2.Status.FromString(details)
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return {v.field: v.description for v in bad_request.field_violations}


async def test_register_creates_the_record_and_every_index(node, redis_client):
    reply = await node.agents.RegisterAgent(
        registration(
            capabilities=["gpu", "llm", "gpu"],
            services=["inference"],
            labels={"zone": "eu-1", "chain": "c7"},
            endpoints={"http": "http://10.0.0.5:8080"},
            metadata={"version": "1.2"},
            max_concurrency=4,
            weight=2.5,
        )
    )
    assert reply.created
    agent = reply.agent
    assert list(agent.capabilities) == ["gpu", "llm"]  # duplicates removed, order kept
    assert agent.status == ACTIVE and agent.health_score == 1.0
    assert agent.max_concurrency == 4 and agent.weight == 2.5
    assert agent.registered_at == agent.last_heartbeat_at
    assert reply.heartbeat_interval.ToSeconds() == 1 and reply.liveness_timeout.ToSeconds() == 3

    record = await redis_client.hgetall("agent:agent-1")
    assert record["agent_type"] == "worker" and record["status"] == "ACTIVE"
    for key in [
        "agents:all",
        "agents:active",
        "agents:type:worker",
        "agents:capability:gpu",
        "agents:capability:llm",
        "agents:service:inference",
        "agents:label:zone=eu-1",
        "agents:label:chain=c7",
    ]:
        assert await redis_client.sismember(key, "agent-1"), key
    assert await redis_client.zscore("agents:heartbeats", "agent-1") is not None


async def test_defaults_for_slots_and_weight(node):
    agent = (await node.agents.RegisterAgent(registration())).agent
    assert agent.max_concurrency == 1 and agent.weight == 1.0


async def test_reregistration_replaces_indexes_and_keeps_registered_at(node, redis_client):
    first = await node.agents.RegisterAgent(
        registration(capabilities=["gpu", "llm"], services=["a"], labels={"zone": "eu"})
    )
    second = await node.agents.RegisterAgent(
        registration(agent_type="inference", capabilities=["llm"], labels={"zone": "us"})
    )
    assert not second.created
    assert second.agent.registered_at == first.agent.registered_at
    assert list(second.agent.capabilities) == ["llm"]
    assert not await redis_client.sismember("agents:capability:gpu", "agent-1")
    assert not await redis_client.sismember("agents:service:a", "agent-1")
    assert not await redis_client.sismember("agents:label:zone=eu", "agent-1")
    assert not await redis_client.sismember("agents:type:worker", "agent-1")
    assert await redis_client.sismember("agents:label:zone=us", "agent-1")
    assert await redis_client.sismember("agents:type:inference", "agent-1")
    # Index sets that became empty are gone: nothing stale is left behind.
    assert not await redis_client.exists("agents:capability:gpu", "agents:service:a")


async def test_get_agent_and_not_found(node):
    await node.agents.RegisterAgent(registration(labels={"island": "7"}))
    agent = (await node.agents.GetAgent(agent_pb2.GetAgentRequest(agent_id="agent-1"))).agent
    assert agent.labels["island"] == "7"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await node.agents.GetAgent(agent_pb2.GetAgentRequest(agent_id="ghost"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "ghost" in caught.value.details()


async def test_heartbeat_refreshes_liveness_metrics_and_status(node, redis_client, hold_stream):
    registered = (await node.agents.RegisterAgent(registration(max_concurrency=2))).agent
    await hold_stream(node, "agent-1")
    reply = await node.agents.Heartbeat(
        agent_pb2.HeartbeatRequest(agent_id="agent-1", load_metrics={"cpu": 0.5}, status=BUSY)
    )
    assert reply.status == BUSY
    assert reply.health_score == 0.375  # busy 0.5 x (1 - 0.5 x cpu 0.5)
    agent = (await node.agents.GetAgent(agent_pb2.GetAgentRequest(agent_id="agent-1"))).agent
    assert agent.load_metrics == {"cpu": 0.5}
    assert agent.last_heartbeat_at.ToMilliseconds() >= registered.last_heartbeat_at.ToMilliseconds()
    assert await redis_client.sismember("agents:status:busy", "agent-1")
    assert not await redis_client.sismember("agents:active", "agent-1")

    # No metrics and no status: both are kept.
    reply = await node.agents.Heartbeat(agent_pb2.HeartbeatRequest(agent_id="agent-1"))
    assert reply.status == BUSY
    back = await node.agents.Heartbeat(
        agent_pb2.HeartbeatRequest(agent_id="agent-1", status=ACTIVE)
    )
    assert back.status == ACTIVE
    assert await redis_client.sismember("agents:active", "agent-1")


async def test_heartbeat_of_unknown_agent_is_not_found(node):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await node.agents.Heartbeat(agent_pb2.HeartbeatRequest(agent_id="ghost"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "register" in caught.value.details()


@pytest.mark.parametrize("operator_status", [MAINTENANCE, ERROR])
async def test_operator_status_survives_heartbeats_and_reregistration(
    node, redis_client, hold_stream, operator_status
):
    await node.agents.RegisterAgent(registration())
    await hold_stream(node, "agent-1")
    updated = await node.agents.UpdateAgentStatus(
        agent_pb2.UpdateAgentStatusRequest(
            agent_id="agent-1", status=operator_status, reason="kernel upgrade"
        )
    )
    assert updated.agent.status == operator_status
    assert updated.agent.status_reason == "kernel upgrade"
    assert updated.agent.health_score == 0.0

    for reported in (ACTIVE, BUSY, agent_pb2.AGENT_STATUS_UNSPECIFIED):
        reply = await node.agents.Heartbeat(
            agent_pb2.HeartbeatRequest(agent_id="agent-1", status=reported)
        )
        assert reply.status == operator_status
    again = await node.agents.RegisterAgent(registration())
    assert again.agent.status == operator_status
    assert not await redis_client.sismember("agents:active", "agent-1")

    reactivated = await node.agents.UpdateAgentStatus(
        agent_pb2.UpdateAgentStatusRequest(agent_id="agent-1", status=ACTIVE)
    )
    assert reactivated.agent.status == ACTIVE
    assert await redis_client.sismember("agents:active", "agent-1")
    assert not await redis_client.smembers("agents:status:maintenance")
    assert not await redis_client.smembers("agents:status:error")


async def test_update_status_replaces_load_metrics(node, hold_stream):
    await node.agents.RegisterAgent(registration())
    await hold_stream(node, "agent-1")
    await node.agents.Heartbeat(
        agent_pb2.HeartbeatRequest(agent_id="agent-1", load_metrics={"cpu": 0.9, "queue": 3})
    )
    updated = await node.agents.UpdateAgentStatus(
        agent_pb2.UpdateAgentStatusRequest(
            agent_id="agent-1", status=ACTIVE, load_metrics={"memory": 0.2}
        )
    )
    assert updated.agent.load_metrics == {"memory": pytest.approx(0.2)}


async def test_deregister_removes_every_trace_and_is_idempotent(node, redis_client):
    await node.agents.RegisterAgent(
        registration(capabilities=["gpu"], services=["s"], labels={"zone": "eu"})
    )
    await node.agents.UpdateAgentStatus(
        agent_pb2.UpdateAgentStatusRequest(agent_id="agent-1", status=MAINTENANCE)
    )
    first = await node.agents.DeregisterAgent(agent_pb2.DeregisterAgentRequest(agent_id="agent-1"))
    assert first.existed
    assert await redis_client.keys("agent*") == []  # no record, no index entry, nothing
    second = await node.agents.DeregisterAgent(agent_pb2.DeregisterAgentRequest(agent_id="agent-1"))
    assert not second.existed


async def test_agent_type_allow_list_wildcard(start_node):
    open_node = await start_node(agent_types=("*",))
    reply = await open_node.agents.RegisterAgent(registration(agent_type="quantum-annealer"))
    assert reply.agent.agent_type == "quantum-annealer"


INVALID_REGISTRATIONS = [
    ({"agent_id": ""}, "agent_id"),
    ({"agent_id": "has space"}, "agent_id"),
    ({"agent_id": "x" * 129}, "agent_id"),
    ({"agent_type": ""}, "agent_type"),
    ({"agent_type": "Worker"}, "agent_type"),
    ({"agent_type": "plumber"}, "agent_type"),
    ({"capabilities": [f"c{i}" for i in range(65)]}, "capabilities"),
    ({"capabilities": ["ok", "bad cap"]}, "capabilities[1]"),
    ({"services": ["-leading-dash"]}, "services[0]"),
    ({"labels": {"a=b": "x"}}, "labels['a=b']"),
    ({"labels": {"zone": "v" * 257}}, "labels['zone']"),
    ({"labels": {f"k{i}": "v" for i in range(65)}}, "labels"),
    ({"endpoints": {f"e{i}": "x" for i in range(17)}}, "endpoints"),
    ({"metadata": {"notes": "n" * 4097}}, "metadata['notes']"),
    ({"max_concurrency": 1025}, "max_concurrency"),
    ({"weight": -1.0}, "weight"),
    ({"weight": float("nan")}, "weight"),
    ({"weight": 1001.0}, "weight"),
]


@pytest.mark.parametrize(("fields", "field"), INVALID_REGISTRATIONS)
async def test_invalid_registration_is_invalid_argument_naming_the_field(
    node, redis_client, fields, field
):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await node.agents.RegisterAgent(registration(**fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)
    assert field in caught.value.details()
    assert await redis_client.keys("agent*") == []  # nothing was written


async def test_every_violation_is_reported_at_once(node):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await node.agents.RegisterAgent(
            registration(agent_id="", agent_type="nope", max_concurrency=5000)
        )
    assert set(field_violations(caught.value)) == {"agent_id", "agent_type", "max_concurrency"}


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (agent_pb2.HeartbeatRequest(agent_id="agent-1", status=MAINTENANCE), "status"),
        (
            agent_pb2.HeartbeatRequest(agent_id="agent-1", load_metrics={"cpu": 1.5}),
            "load_metrics['cpu']",
        ),
        (
            agent_pb2.HeartbeatRequest(agent_id="agent-1", load_metrics={"x": float("inf")}),
            "load_metrics['x']",
        ),
        (agent_pb2.HeartbeatRequest(agent_id=""), "agent_id"),
    ],
)
async def test_invalid_heartbeat(node, request_, field):
    await node.agents.RegisterAgent(registration())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await node.agents.Heartbeat(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (agent_pb2.UpdateAgentStatusRequest(agent_id="agent-1"), "status"),
        (agent_pb2.UpdateAgentStatusRequest(agent_id="agent-1", status=INACTIVE), "status"),
        (
            agent_pb2.UpdateAgentStatusRequest(agent_id="agent-1", status=ACTIVE, reason="r" * 300),
            "reason",
        ),
    ],
)
async def test_invalid_status_update(node, request_, field):
    await node.agents.RegisterAgent(registration())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await node.agents.UpdateAgentStatus(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)


async def test_status_update_of_unknown_agent_is_not_found(node):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await node.agents.UpdateAgentStatus(
            agent_pb2.UpdateAgentStatusRequest(agent_id="ghost", status=MAINTENANCE)
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_invalid_ids_on_get_and_deregister(node):
    for call, request_ in [
        (node.agents.GetAgent, agent_pb2.GetAgentRequest(agent_id="bad id")),
        (node.agents.DeregisterAgent, agent_pb2.DeregisterAgentRequest(agent_id="")),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request_)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "agent_id" in field_violations(caught.value)


async def heartbeat_code(node, agent_id: str = "agent-1") -> grpc.StatusCode:
    try:
        await node.agents.Heartbeat(agent_pb2.HeartbeatRequest(agent_id=agent_id))
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def wait_for(predicate, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_heartbeat_needs_an_open_stream_on_a_live_node(node, redis_client, hold_stream):
    await node.agents.RegisterAgent(registration())
    # Pretend the last heartbeat is old, to see the refused heartbeat still refresh it.
    await redis_client.zadd(keys.AGENTS_HEARTBEATS, {"agent-1": 1})
    await redis_client.hset(keys.agent("agent-1"), "last_heartbeat_at_ms", 1)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await node.agents.Heartbeat(
            agent_pb2.HeartbeatRequest(agent_id="agent-1", load_metrics={"cpu": 0.25})
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "agent_id" in caught.value.details() and "StreamAssignments" in caught.value.details()
    assert await redis_client.zscore(keys.AGENTS_HEARTBEATS, "agent-1") > 1  # still recorded
    agent = (await node.agents.GetAgent(agent_pb2.GetAgentRequest(agent_id="agent-1"))).agent
    assert agent.last_heartbeat_at.ToMilliseconds() > 1
    assert agent.load_metrics == {"cpu": 0.25}

    stream = await hold_stream(node, "agent-1")
    assert await heartbeat_code(node) == grpc.StatusCode.OK

    await stream.stop()

    async def disconnected() -> bool:
        return not await redis_client.hexists(keys.AGENTS_CONNECTED, "agent-1")

    await wait_for(disconnected)
    assert await heartbeat_code(node) == grpc.StatusCode.FAILED_PRECONDITION

    # The stream is open, but on a node that no longer shows it is alive (its health check
    # stopped and its presence key is gone, as after a crash): no work can reach the agent.
    await hold_stream(node, "agent-1")
    assert await heartbeat_code(node) == grpc.StatusCode.OK
    await node.coordinator.health.stop()
    await redis_client.delete(keys.node_presence("test-node"))
    assert await redis_client.hexists(keys.AGENTS_CONNECTED, "agent-1")
    assert await heartbeat_code(node) == grpc.StatusCode.FAILED_PRECONDITION


async def test_stream_assignments_of_an_unregistered_agent_is_not_found(node, redis_client):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in node.agents.StreamAssignments(
            agent_pb2.StreamAssignmentsRequest(agent_id="ghost")
        ):
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "agent_id" in caught.value.details() and "ghost" in caught.value.details()
    assert not await redis_client.exists(keys.AGENTS_CONNECTED)


@pytest.mark.parametrize("agent_id", ["", "has space", "x" * 129])
async def test_stream_assignments_with_a_bad_agent_id_is_invalid_argument(node, agent_id):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in node.agents.StreamAssignments(
            agent_pb2.StreamAssignmentsRequest(agent_id=agent_id)
        ):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "agent_id" in field_violations(caught.value)


async def test_stream_assignments_starts_with_ready(node, redis_client):
    await node.agents.RegisterAgent(registration())
    call = node.agents.StreamAssignments(agent_pb2.StreamAssignmentsRequest(agent_id="agent-1"))
    try:
        first = await asyncio.wait_for(call.read(), 5)
        assert first.WhichOneof("event") == "ready"
        assert first.ready.node_id == "test-node"
        assert first.ready.heartbeat_interval.ToSeconds() == 1  # the node's heartbeat interval
        connection = await redis_client.hget(keys.AGENTS_CONNECTED, "agent-1")
        assert connection.startswith("test-node ")
        assert await redis_client.hget(keys.agent("agent-1"), "node_id") == "test-node"
    finally:
        call.cancel()


async def test_a_second_stream_for_the_same_agent_aborts_the_first(node, redis_client):
    await node.agents.RegisterAgent(registration())
    first = await ScriptedAgent(node.channel, "agent-1").start(register=False, heartbeat=False)
    first_connection = await redis_client.hget(keys.AGENTS_CONNECTED, "agent-1")
    second = await ScriptedAgent(node.channel, "agent-1").start(register=False, heartbeat=False)
    try:

        async def first_ended() -> bool:
            return first.stream_error is not None

        await wait_for(first_ended)
        assert first.stream_error.code() == grpc.StatusCode.ABORTED
        assert "agent_id" in first.stream_error.details()
        assert "replaced" in first.stream_error.details()
        # The newer stream is the agent's stream, and stays so once the first has closed.
        await asyncio.sleep(0.1)
        connection = await redis_client.hget(keys.AGENTS_CONNECTED, "agent-1")
        assert connection != first_connection and connection.startswith("test-node ")
        assert second.stream_error is None
        assert await heartbeat_code(node) == grpc.StatusCode.OK
    finally:
        await first.stop()
        await second.stop()


async def test_a_stream_on_another_node_aborts_the_first(start_node, redis_client):
    node_a = await start_node(node_id="node-a")
    node_b = await start_node(node_id="node-b")
    await node_a.agents.RegisterAgent(registration())
    first = await ScriptedAgent(node_a.channel, "agent-1").start(register=False, heartbeat=False)
    second = await ScriptedAgent(node_b.channel, "agent-1").start(register=False, heartbeat=False)
    try:

        async def first_ended() -> bool:
            return first.stream_error is not None

        await wait_for(first_ended)
        assert first.stream_error.code() == grpc.StatusCode.ABORTED
        await asyncio.sleep(0.1)
        assert (await redis_client.hget(keys.AGENTS_CONNECTED, "agent-1")).startswith("node-b ")
        assert second.stream_error is None
        assert await heartbeat_code(node_a) == grpc.StatusCode.OK
    finally:
        await first.stop()
        await second.stop()


async def test_deregistering_an_agent_ends_its_stream(start_node, redis_client):
    node_a = await start_node(node_id="node-a")
    node_b = await start_node(node_id="node-b")
    await node_a.agents.RegisterAgent(registration())
    agent = await ScriptedAgent(node_a.channel, "agent-1").start(register=False, heartbeat=False)
    try:
        await node_b.agents.DeregisterAgent(agent_pb2.DeregisterAgentRequest(agent_id="agent-1"))

        async def ended() -> bool:
            return agent.stream_error is not None

        await wait_for(ended)
        assert agent.stream_error.code() == grpc.StatusCode.NOT_FOUND
        assert "deregistered" in agent.stream_error.details()
        assert not await redis_client.hexists(keys.AGENTS_CONNECTED, "agent-1")
    finally:
        await agent.stop()
