"""Two coordinator processes on one Redis are one registry.

Everything an agent does through one node is seen by the other (registration, discovery,
heartbeats, operator status, deregistration), liveness is computed the same on both, and the
liveness sweep is gated by one Redis lock, so one node at a time sweeps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
import pytest
import redis

from aitbc.coordinator.v1 import agent_pb2, agent_pb2_grpc
from coordinator.storage import keys
from support import wait_until

ACTIVE = agent_pb2.AGENT_STATUS_ACTIVE
INACTIVE = agent_pb2.AGENT_STATUS_INACTIVE
MAINTENANCE = agent_pb2.AGENT_STATUS_MAINTENANCE


@pytest.fixture
def stub_for() -> Iterator:
    """``stub_for(node)``: an AgentService stub on a channel closed at the end of the test."""
    with contextlib.ExitStack() as stack:

        def make(node) -> agent_pb2_grpc.AgentServiceStub:
            channel = stack.enter_context(grpc.insecure_channel(node.address))
            return agent_pb2_grpc.AgentServiceStub(channel)

        yield make


@pytest.fixture
def hold_stream() -> Iterator:
    """``hold_stream(stub, agent_id)``: open the agent's StreamAssignments through ``stub``
    and keep it open until the end of the test (heartbeats need it); returns StreamReady."""
    calls: list = []

    def hold(stub, agent_id: str) -> agent_pb2.StreamReady:
        call = stub.StreamAssignments(
            agent_pb2.StreamAssignmentsRequest(agent_id=agent_id), timeout=60
        )
        calls.append(call)
        first = next(call)
        assert first.WhichOneof("event") == "ready", first
        return first.ready

    yield hold
    for call in calls:
        call.cancel()


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def discover_ids(stub, **filters) -> list[str]:
    reply = stub.DiscoverAgents(agent_pb2.DiscoverAgentsRequest(**filters), timeout=5)
    return [agent.agent_id for agent in reply.agents]


def not_found(call) -> bool:
    try:
        call()
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
        return True
    return False


def test_one_registry_through_two_nodes(spawn_node, stub_for, hold_stream):
    node_a = spawn_node(env={"NODE_ID": "node-a"})
    node_b = spawn_node(env={"NODE_ID": "node-b"})
    node_a.wait_serving()
    node_b.wait_serving()
    a, b = stub_for(node_a), stub_for(node_b)

    # Register on A, read and discover on B.
    created = a.RegisterAgent(
        agent_pb2.RegisterAgentRequest(
            agent_id="agent-1",
            agent_type="worker",
            capabilities=["text-generation", "gpu"],
            labels={"zone": "eu-1"},
        ),
        timeout=5,
    )
    assert created.created
    b.RegisterAgent(
        agent_pb2.RegisterAgentRequest(
            agent_id="agent-2",
            agent_type="worker",
            capabilities=["embedding"],
            labels={"zone": "us-1"},
        ),
        timeout=5,
    )
    seen = b.GetAgent(agent_pb2.GetAgentRequest(agent_id="agent-1"), timeout=5).agent
    assert seen.agent_type == "worker"
    assert sorted(seen.capabilities) == ["gpu", "text-generation"]
    assert dict(seen.labels) == {"zone": "eu-1"}
    assert seen.status == ACTIVE
    assert seen.registered_at == created.agent.registered_at

    assert discover_ids(b, capabilities=["text-generation"]) == ["agent-1"]
    assert discover_ids(b, labels={"zone": "eu-1"}) == ["agent-1"]
    assert discover_ids(a, capabilities=["embedding"]) == ["agent-2"]
    assert discover_ids(a, labels={"zone": "us-1"}) == ["agent-2"]
    assert discover_ids(b, labels={"zone": "eu-1"}, capabilities=["embedding"]) == []

    # The agent's stream is on A; a heartbeat through B finds it and is seen on A.
    assert hold_stream(a, "agent-1").node_id == "node-a"
    beat = b.Heartbeat(
        agent_pb2.HeartbeatRequest(agent_id="agent-1", load_metrics={"cpu": 0.5}), timeout=5
    )
    assert beat.status == ACTIVE
    seen = a.GetAgent(agent_pb2.GetAgentRequest(agent_id="agent-1"), timeout=5).agent
    assert dict(seen.load_metrics) == {"cpu": 0.5}
    assert (
        seen.last_heartbeat_at.ToMilliseconds() >= created.agent.last_heartbeat_at.ToMilliseconds()
    )

    # An operator drains the agent through B: A sees it, and a heartbeat through A keeps it.
    b.UpdateAgentStatus(
        agent_pb2.UpdateAgentStatusRequest(
            agent_id="agent-1", status=MAINTENANCE, reason="kernel upgrade"
        ),
        timeout=5,
    )
    seen = a.GetAgent(agent_pb2.GetAgentRequest(agent_id="agent-1"), timeout=5).agent
    assert (seen.status, seen.status_reason) == (MAINTENANCE, "kernel upgrade")
    beat = a.Heartbeat(agent_pb2.HeartbeatRequest(agent_id="agent-1", status=ACTIVE), timeout=5)
    assert beat.status == MAINTENANCE
    for stub in (a, b):
        assert (
            stub.GetAgent(agent_pb2.GetAgentRequest(agent_id="agent-1"), timeout=5).agent.status
            == MAINTENANCE
        )
    assert discover_ids(a, capabilities=["text-generation"]) == []  # ACTIVE only by default
    assert discover_ids(a, capabilities=["text-generation"], statuses=[MAINTENANCE]) == ["agent-1"]

    # Deregistered through B: gone on A.
    assert b.DeregisterAgent(
        agent_pb2.DeregisterAgentRequest(agent_id="agent-1"), timeout=5
    ).existed
    assert not_found(lambda: a.GetAgent(agent_pb2.GetAgentRequest(agent_id="agent-1"), timeout=5))
    assert not_found(lambda: a.Heartbeat(agent_pb2.HeartbeatRequest(agent_id="agent-1"), timeout=5))
    assert discover_ids(a, capabilities=["text-generation"], statuses=[ACTIVE, MAINTENANCE]) == []
    assert discover_ids(a, labels={"zone": "us-1"}) == ["agent-2"]  # the other agent is untouched


def test_silent_agent_goes_inactive_on_both_nodes_and_one_node_sweeps(
    spawn_node, stub_for, sync_redis, hold_stream
):
    # A foreign holder owns the sweep lock first: while it does, no node may sweep.
    sync_redis.set(keys.LIVENESS_SWEEP_LOCK, "test-holder", px=60_000)
    timing = {
        "COORDINATOR_HEARTBEAT_INTERVAL_S": "0.5",
        "COORDINATOR_LIVENESS_TIMEOUT_S": "1.5",
        "COORDINATOR_SWEEP_INTERVAL_S": "0.2",
    }
    node_a = spawn_node(env={"NODE_ID": "node-a", **timing})
    node_b = spawn_node(env={"NODE_ID": "node-b", **timing})
    node_a.wait_serving()
    node_b.wait_serving()
    a, b = stub_for(node_a), stub_for(node_b)

    for agent_id in ("silent", "lively"):
        a.RegisterAgent(
            agent_pb2.RegisterAgentRequest(agent_id=agent_id, agent_type="worker"), timeout=5
        )
    assert sync_redis.smembers(keys.AGENTS_ACTIVE) == {"silent", "lively"}
    hold_stream(a, "lively")

    def status_on(stub, agent_id: str) -> int:
        return stub.GetAgent(agent_pb2.GetAgentRequest(agent_id=agent_id), timeout=5).agent.status

    def silent_inactive_everywhere() -> bool:
        b.Heartbeat(agent_pb2.HeartbeatRequest(agent_id="lively"), timeout=5)
        return all(status_on(stub, "silent") == INACTIVE for stub in (a, b))

    wait_until(silent_inactive_everywhere, timeout_s=10, interval_s=0.1, what="silent INACTIVE")
    for stub in (a, b):
        assert status_on(stub, "lively") == ACTIVE
        assert discover_ids(stub) == ["lively"]
        assert discover_ids(stub, statuses=[INACTIVE]) == ["silent"]
    # Liveness is computed at read time; the index is left alone while the lock is not theirs.
    assert sync_redis.get(keys.LIVENESS_SWEEP_LOCK) == "test-holder"
    assert "silent" in sync_redis.smembers(keys.AGENTS_ACTIVE)

    # Release the lock: one node takes it and sweeps the silent agent out of agents:active.
    sync_redis.delete(keys.LIVENESS_SWEEP_LOCK)

    def swept() -> bool:
        b.Heartbeat(agent_pb2.HeartbeatRequest(agent_id="lively"), timeout=5)
        return "silent" not in sync_redis.smembers(keys.AGENTS_ACTIVE)

    wait_until(swept, timeout_s=5, interval_s=0.1, what="silent out of agents:active")
    assert "lively" in sync_redis.smembers(keys.AGENTS_ACTIVE)

    # The lock only ever holds one node's id, for at most one sweep interval.
    samples: list[tuple[str, int]] = []

    def sample_lock() -> bool:
        holder = sync_redis.get(keys.LIVENESS_SWEEP_LOCK)
        ttl_ms = sync_redis.pttl(keys.LIVENESS_SWEEP_LOCK)
        if holder is not None:
            samples.append((holder, ttl_ms))
        return len(samples) >= 20

    wait_until(sample_lock, timeout_s=10, interval_s=0.01, what="20 samples of the lock")
    assert {holder for holder, _ in samples} <= {"node-a", "node-b"}, samples
    # -2: the lock expired between GET and PTTL; -1 (no expiry) would be a bug.
    assert all(ttl_ms <= 200 and ttl_ms != -1 for _, ttl_ms in samples), samples

    # Exactly one node swept the agent (the sweep takes it out of the set once).
    def sweep_log_lines() -> list[str]:
        return [
            line
            for node in (node_a, node_b)
            for line in node.logs().splitlines()
            if "agent missed its heartbeats" in line and "agent_id=silent" in line
        ]

    wait_until(sweep_log_lines, timeout_s=5, what="the sweep's log line")
    assert len(sweep_log_lines()) == 1, sweep_log_lines()

    # A heartbeat (with the agent's stream open) brings the agent back, on both nodes and in
    # agents:active.
    hold_stream(b, "silent")
    assert a.Heartbeat(agent_pb2.HeartbeatRequest(agent_id="silent"), timeout=5).status == ACTIVE
    assert status_on(b, "silent") == ACTIVE
    assert "silent" in sync_redis.smembers(keys.AGENTS_ACTIVE)
