"""Shared fixtures: a real redis-server per session (flushed per test) and real coordinator
nodes on free ports, in-process or as subprocesses."""

from __future__ import annotations

import os

# gRPC core prints an INFO line for every GOAWAY when a test node stops: keep output readable.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2_grpc

from agent_harness import AgentPool, ScriptedAgent
from aitbc.coordinator.v1 import agent_pb2_grpc, task_pb2_grpc
from cluster_support import RedisCluster
from coordinator.agents.registry import AgentRegistry
from coordinator.config import Settings
from coordinator.server import Coordinator, create_server
from coordinator.storage import key_tags
from coordinator.storage.multiplex import MultiplexedConnection
from coordinator.storage.scripts import TaskScripts
from script_support import LIVENESS_MS
from support import CoordinatorProcess, RedisServer

TEST_DB = 1

CLUSTER_TAG = os.environ.get("COORDINATOR_TEST_REDIS_CLUSTER_TAG", "")
"""Set: the tests run in Redis Cluster mode, on the session's Redis Cluster, every key tagged
with this (tests/storage/test_cluster_task_suite.py runs a selection of modules so)."""


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole session (tests flush it)."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_cluster_session() -> Iterator[RedisCluster]:
    """One real Redis Cluster of three primaries for the session (started when first used)."""
    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def redis_cluster(redis_cluster_session: RedisCluster) -> Iterator[RedisCluster]:
    """The session's Redis Cluster, every primary flushed; the key names are untagged again
    at the end (a node of the test may have tagged them: ``key_tags``)."""
    for port in redis_cluster_session.ports:
        redis_cluster_session.client(port).flushall()
    yield redis_cluster_session
    key_tags.use_tag("")


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of the session Redis's test database, flushed before each test; in cluster mode
    (``CLUSTER_TAG``) the owner of the tag's slot in the session's flushed Redis Cluster."""
    if CLUSTER_TAG:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        key_tags.use_tag(CLUSTER_TAG)  # for the tests' own reads of keys before a node starts
        yield f"redis://127.0.0.1:{cluster.owner_of(key_tags.slot_of(CLUSTER_TAG))}/0"
        return
    yield _flushed_test_db(request.getfixturevalue("redis_server"))


def _flushed_test_db(redis_server: RedisServer) -> str:
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_server.url(TEST_DB))
    client.flushdb()
    client.close()
    return redis_server.url(TEST_DB)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A direct client on the test database, to check what the coordinator stored."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def multiplexed(redis_client: aioredis.Redis) -> AsyncIterator[MultiplexedConnection]:
    """The node's kind of shared connection for task scripts, on the test database."""
    connection = MultiplexedConnection.like(redis_client, timeout_s=2.0)
    yield connection
    await connection.aclose()


@pytest.fixture
def make_settings(redis_url: str) -> Callable[..., Settings]:
    """Settings for an in-process node on a free port, with fast timings; override any field."""

    def make(**overrides: Any) -> Settings:
        base = Settings(
            redis_url=redis_url,
            redis_url_explicit=True,
            host="127.0.0.1",
            port=0,
            node_id="test-node",
            heartbeat_interval_s=1.0,
            liveness_timeout_s=3.0,
            sweep_interval_s=0.2,
            health_check_interval_s=0.2,
            redis_timeout_s=0.5,
            shutdown_grace_s=1.0,
            task_timer_interval_s=0.1,
            redis_cluster_tag=CLUSTER_TAG,
        )
        return dataclasses.replace(base, **overrides)

    return make


@dataclasses.dataclass
class Node:
    """A running in-process node and stubs bound to it."""

    coordinator: Coordinator
    port: int
    channel: grpc.aio.Channel
    agents: agent_pb2_grpc.AgentServiceStub
    tasks: task_pb2_grpc.TaskServiceStub
    health: health_pb2_grpc.HealthStub


@pytest.fixture
async def start_node(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Awaitable[Node]]]:
    """Start in-process nodes (``await start_node(**settings_overrides)``); all stop at the end."""
    nodes: list[Node] = []

    async def start(**overrides: Any) -> Node:
        coordinator, port = await create_server(make_settings(**overrides))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        node = Node(
            coordinator=coordinator,
            port=port,
            channel=channel,
            agents=agent_pb2_grpc.AgentServiceStub(channel),
            tasks=task_pb2_grpc.TaskServiceStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
        )
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.channel.close()
        await node.coordinator.stop(grace_s=0)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own (not the session's), to stop and restart: outages."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
async def node(start_node: Callable[..., Awaitable[Node]]) -> Node:
    """One in-process node on the session Redis."""
    return await start_node()


@pytest.fixture
async def hold_stream() -> AsyncIterator[Callable[[Node, str], Awaitable[ScriptedAgent]]]:
    """``await hold_stream(node, agent_id)``: open the StreamAssignments of an agent that is
    already registered and keep it open (it sends no heartbeats of its own), so the agent's
    Heartbeat answers OK. ``await agent.stop()`` closes it early; all close at the end."""
    agents: list[ScriptedAgent] = []

    async def hold(node: Node, agent_id: str) -> ScriptedAgent:
        agent = ScriptedAgent(node.channel, agent_id)
        agents.append(agent)
        return await agent.start(register=False, heartbeat=False)

    yield hold
    for agent in agents:
        await agent.stop()


@pytest.fixture
async def pool(start_node: Callable[..., Awaitable[Node]]) -> AsyncIterator[AgentPool]:
    """Agents a test starts (``await pool.start(channel, agent_id)``), stopped before its nodes."""
    agents = AgentPool()
    yield agents
    await agents.stop_all()


@pytest.fixture
def spawn_node(redis_url: str) -> Iterator[Callable[..., CoordinatorProcess]]:
    """Start coordinator subprocesses (``spawn_node(env={...})``); all are killed at the end.

    REDIS_URL defaults to the session Redis; pass env to override anything."""
    processes: list[CoordinatorProcess] = []

    def spawn(env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> CoordinatorProcess:
        tag = {"COORDINATOR_REDIS_CLUSTER_TAG": CLUSTER_TAG} if CLUSTER_TAG else {}
        process = CoordinatorProcess({"REDIS_URL": redis_url, **tag, **(env or {})}, args)
        processes.append(process)
        return process

    yield spawn
    for process in processes:
        process.close()


@pytest.fixture
async def channel_to() -> AsyncIterator[Callable[[CoordinatorProcess], grpc.aio.Channel]]:
    """``channel_to(process)``: an aio channel to a node, closed at the end of the test."""
    channels: list[grpc.aio.Channel] = []

    def make(process: CoordinatorProcess) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(process.address)
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.close()


# The Lua scripts on their own (tests/tasks, tests/dispatch, tests/storage).


@pytest.fixture
def scripts(redis_client) -> TaskScripts:
    return TaskScripts(redis_client)


@pytest.fixture
def registry(redis_client) -> AgentRegistry:
    return AgentRegistry(redis_client, Settings(liveness_timeout_s=LIVENESS_MS / 1000))
