"""Process-level behaviour of a coordinator node: graceful shutdown on SIGTERM/SIGINT,
idempotent ``Coordinator.stop``, refusing a port that is taken, configuration errors and the
``--env-file`` option, and starting while Redis is down.

Nodes run as real ``python -m coordinator serve`` subprocesses (``spawn_node``) against the
session's real redis-server, except the ``Coordinator.stop`` test, which runs in process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aitbc.coordinator.v1 import agent_pb2, agent_pb2_grpc
from coordinator.server import SERVICE_NAMES
from support import REPO, RedisServer, free_port, wait_until

HEALTH_NAMES = ("", *SERVICE_NAMES)


# --------------------------------------------------------------------------- helpers


def register(address: str, agent_id: str = "agent-1", timeout_s: float = 5.0):
    """RegisterAgent over a fresh channel; returns the response (raises grpc.RpcError)."""
    with grpc.insecure_channel(address) as channel:
        return agent_pb2_grpc.AgentServiceStub(channel).RegisterAgent(
            agent_pb2.RegisterAgentRequest(
                agent_id=agent_id, agent_type="worker", capabilities=["text-generation"]
            ),
            timeout=timeout_s,
        )


def rpc_error(call) -> grpc.RpcError:
    """The grpc.RpcError that ``call()`` raises (fails the test if it succeeds)."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


class HealthWatch:
    """A ``grpc.health.v1.Health/Watch`` stream read by a background thread."""

    def __init__(self, address: str, service: str = "") -> None:
        self._channel = grpc.insecure_channel(address)
        self._call = health_pb2_grpc.HealthStub(self._channel).Watch(
            health_pb2.HealthCheckRequest(service=service)
        )
        self._statuses: queue.Queue[str] = queue.Queue()
        self.ended = threading.Event()
        self.end_code: grpc.StatusCode | None = None
        self._thread = threading.Thread(target=self._read, name="health-watch", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for reply in self._call:
                self._statuses.put(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
        except grpc.RpcError as exc:
            self.end_code = exc.code()
        finally:
            self.ended.set()

    def next_status(self, timeout_s: float = 5.0) -> str:
        try:
            return self._statuses.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(
                f"no health status on the Watch stream within {timeout_s} s"
            ) from None

    def close(self) -> None:
        self._call.cancel()
        self._channel.close()
        self._thread.join(timeout=5)


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without coordinator settings, plus ``overrides``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COORDINATOR_", "REDIS_URL", "NODE_ID"))
    }
    return {**env, "PYTHONUNBUFFERED": "1", **overrides}


# --------------------------------------------------------------------------- signals


def test_sigterm_drains_watch_sees_not_serving_new_calls_refused_exit_0(spawn_node):
    grace_s = 4.0
    node = spawn_node(env={"COORDINATOR_SHUTDOWN_GRACE_S": str(grace_s)})
    node.wait_serving()
    assert register(node.address).created

    watch = HealthWatch(node.address)
    try:
        assert watch.next_status() == "SERVING"

        node.signal(signal.SIGTERM)
        exit_deadline = time.monotonic() + grace_s + 5
        assert watch.next_status() == "NOT_SERVING"

        # The open Watch stream keeps the server in its grace period: new calls must be
        # refused meanwhile (UNAVAILABLE, so clients retry elsewhere), while the process is
        # still alive. A call racing with the very start of the shutdown may still be served
        # or CANCELLED by gRPC; anything else fails at once.
        def refused() -> bool:
            try:
                register(node.address, "agent-after-sigterm", timeout_s=2.0)
            except grpc.RpcError as exc:
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), exc
                return exc.code() == grpc.StatusCode.UNAVAILABLE
            return False

        wait_until(refused, timeout_s=grace_s / 2, interval_s=0.05, what="new calls refused")
        error = rpc_error(lambda: register(node.address, "agent-later", timeout_s=2.0))
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert node.process.poll() is None, "the node exited before its grace period ended"
        assert not watch.ended.is_set(), "the Watch stream ended before the grace period did"

        # Exit 0 within grace + 5 s of the signal; at the end of the grace period the server
        # cancels the still-open Watch stream.
        assert node.wait(timeout_s=max(0.1, exit_deadline - time.monotonic())) == 0, node.logs()
        assert watch.ended.wait(timeout=5), "the Watch stream outlived the server"
    finally:
        watch.close()

    logs = node.logs()
    assert "signal received: shutting down" in logs
    assert "draining: health NOT_SERVING, new calls refused" in logs
    assert "coordinator stopped" in logs
    assert "Traceback" not in logs


def test_call_in_flight_at_sigterm_completes_within_the_grace_period(spawn_node, redis_server):
    grace_s = 5.0
    node = spawn_node(
        env={
            "COORDINATOR_SHUTDOWN_GRACE_S": str(grace_s),
            "COORDINATOR_REDIS_TIMEOUT_S": "3",
            "COORDINATOR_HEALTH_CHECK_INTERVAL_S": "0.5",
        }
    )
    node.wait_serving()
    admin = redis.Redis(port=redis_server.port, decode_responses=True)
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            outcome["created"] = register(node.address, "agent-in-flight", timeout_s=10).created
        except grpc.RpcError as exc:
            outcome["error"] = exc

    # Holding Redis writes keeps RegisterAgent's script waiting inside the server until we
    # unpause; PING (the health check) is not a write and still answers. The pause lapses by
    # itself after 10 s should the test die before unpausing.
    admin.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
    caller = threading.Thread(target=call)
    try:
        caller.start()
        wait_until(
            lambda: any(
                c["name"].startswith("aitbc-coordinator:")
                and c["cmd"] == "evalsha"
                and "b" in c["flags"]
                for c in admin.client_list()
            ),
            timeout_s=5,
            what="RegisterAgent blocked in Redis",
        )
        node.signal(signal.SIGTERM)
        wait_until(lambda: "draining" in node.logs(), timeout_s=5, what="the node draining")
        assert not outcome, "the call finished before Redis was unpaused"
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
    caller.join(timeout=15)
    assert outcome == {"created": True}
    assert node.wait(timeout_s=grace_s + 5) == 0, node.logs()
    logs = node.logs()
    assert (
        logs.index("draining") < logs.index("agent registered") < logs.index("coordinator stopped")
    )


def test_sigint_exits_0_after_draining(spawn_node):
    node = spawn_node()
    node.wait_serving()
    node.signal(signal.SIGINT)
    assert node.wait(timeout_s=3 + 5) == 0, node.logs()
    logs = node.logs()
    assert "draining" in logs
    assert "coordinator stopped" in logs
    assert "KeyboardInterrupt" not in logs


# --------------------------------------------------------------------------- Coordinator.stop


async def test_stop_twice_concurrently_is_idempotent_and_second_waits_for_first(start_node, caplog):
    caplog.set_level(logging.INFO, logger="coordinator.server")
    node = await start_node(shutdown_grace_s=1.0)
    # An open Watch stream makes the first stop() last its whole grace period.
    watch = node.health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (
        await asyncio.wait_for(watch.read(), 5)
    ).status == health_pb2.HealthCheckResponse.SERVING

    first = asyncio.create_task(node.coordinator.stop())
    reply = await asyncio.wait_for(watch.read(), 5)
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING  # first is draining now
    assert not first.done()

    second = asyncio.create_task(node.coordinator.stop())
    await asyncio.wait_for(second, 10)
    assert first.done(), "the second stop() returned while the first was still draining"
    await first  # and the first did not fail

    # Two more calls at once, after everything stopped: they return at once, without error.
    await asyncio.wait_for(asyncio.gather(node.coordinator.stop(), node.coordinator.stop(0)), 2)
    watch.cancel()

    stopped = [r for r in caplog.records if r.getMessage() == "coordinator stopped"]
    draining = [r for r in caplog.records if r.getMessage().startswith("draining")]
    assert len(stopped) == 1, "the shutdown sequence ran more than once"
    assert len(draining) == 1, "the shutdown sequence ran more than once"

    # The server really is stopped: a fresh channel cannot reach it.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# --------------------------------------------------------------------------- port taken


def test_second_node_on_a_taken_port_exits_1_with_a_clear_message(spawn_node):
    first = spawn_node(env={"NODE_ID": "first"})
    first.wait_serving()
    second = spawn_node(env={"NODE_ID": "second", "COORDINATOR_PORT": str(first.port)})

    rc = second.wait(timeout_s=20)
    logs = second.logs()
    assert rc == 1, logs
    assert f"cannot serve on 127.0.0.1:{first.port}" in logs, logs
    assert "Traceback" not in logs, logs

    # The port was not shared (grpc.so_reuseport=0): the first node answers every call.
    assert first.process.poll() is None
    for i in range(5):
        assert register(first.address, f"agent-{i}").created
    assert first.health() == "SERVING"


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("env", "env_file_text", "named"),
    [
        ({"COORDINATOR_PORT": "abc"}, None, "COORDINATOR_PORT"),
        (
            {"COORDINATOR_HEARTBEAT_INTERVAL_S": "10", "COORDINATOR_LIVENESS_TIMEOUT_S": "1"},
            None,
            "COORDINATOR_LIVENESS_TIMEOUT_S",
        ),
        ({"REDIS_URL": "http://127.0.0.1:1/1"}, None, "REDIS_URL"),
        ({}, "COORDINATOR_SHUTDOWN_GRACE_S=-1\n", "COORDINATOR_SHUTDOWN_GRACE_S"),
        ({}, "", "--env-file"),  # "" here: the file named by --env-file does not exist
    ],
    ids=[
        "port-abc",
        "liveness-not-above-heartbeat",
        "redis-url",
        "bad-value-in-env-file",
        "missing-env-file",
    ],
)
def test_configuration_error_exits_2_naming_the_variable(
    redis_url, tmp_path, env, env_file_text, named
):
    args = [sys.executable, "-m", "coordinator", "serve"]
    if env_file_text is not None:
        env_file = tmp_path / "coordinator.env"
        if env_file_text:
            env_file.write_text(env_file_text)
        args += ["--env-file", str(env_file)]
    full_env = clean_env(
        **{
            "REDIS_URL": redis_url,
            "COORDINATOR_HOST": "127.0.0.1",
            "COORDINATOR_PORT": str(free_port()),
            **env,
        }
    )
    result = subprocess.run(
        args, env=full_env, cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "configuration error" in result.stderr
    assert named in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("env", "expected_node_id", "expected_interval_s"),
    [
        ({}, "file-node", 4),
        ({"NODE_ID": "env-node", "COORDINATOR_HEARTBEAT_INTERVAL_S": "6"}, "env-node", 6),
    ],
    ids=["file-honoured", "environment-wins"],
)
def test_env_file_is_honoured_and_environment_wins(
    spawn_node, tmp_path, env, expected_node_id, expected_interval_s
):
    env_file = tmp_path / "coordinator.env"
    env_file.write_text("NODE_ID=file-node\nCOORDINATOR_HEARTBEAT_INTERVAL_S=4\n")
    node = spawn_node(env=env, args=("--env-file", str(env_file)))
    node.wait_serving()

    reply = register(node.address)
    assert reply.heartbeat_interval.ToTimedelta().total_seconds() == expected_interval_s
    logs = node.logs()
    # Every log line carries the node id.
    assert f"node_id={expected_node_id}" in logs, logs
    if expected_node_id != "file-node":
        assert "node_id=file-node" not in logs


# --------------------------------------------------------------------------- Redis down at start


def test_starts_without_redis_then_serves_once_redis_appears(spawn_node):
    redis_port = free_port()
    node = spawn_node(env={"REDIS_URL": f"redis://127.0.0.1:{redis_port}/1"})

    def up_but_not_serving() -> bool:
        if node.process.poll() is not None:
            raise AssertionError(f"the node exited without Redis:\n{node.logs()}")
        return node.health() == "NOT_SERVING"

    wait_until(up_but_not_serving, timeout_s=20, interval_s=0.1, what="health NOT_SERVING")
    for name in HEALTH_NAMES:
        assert node.health(name) == "NOT_SERVING", name

    error = rpc_error(lambda: register(node.address))
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    assert "Redis" in error.details()
    with grpc.insecure_channel(node.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        error = rpc_error(
            lambda: stub.GetAgent(agent_pb2.GetAgentRequest(agent_id="agent-1"), timeout=5)
        )
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        error = rpc_error(lambda: stub.DiscoverAgents(agent_pb2.DiscoverAgentsRequest(), timeout=5))
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error

    late_redis = RedisServer()
    late_redis.port = redis_port  # the address the node was told to use
    try:
        late_redis.start()
        wait_until(
            lambda: all(node.health(name) == "SERVING" for name in HEALTH_NAMES),
            timeout_s=5,
            interval_s=0.1,
            what="health SERVING within 5 s of Redis starting",
        )
        assert register(node.address).created
        client = redis.Redis(port=redis_port, db=1, decode_responses=True)
        try:
            assert client.sismember("agents:all", "agent-1")
        finally:
            client.close()
    finally:
        late_redis.close()
    assert "Redis is unreachable" in node.logs()


async def test_a_burst_beyond_the_redis_pool_queues_instead_of_failing(start_node, redis_client):
    """More concurrent calls than pooled Redis connections wait for a free one."""
    node = await start_node(redis_max_connections=4)
    replies = await asyncio.gather(
        *(
            node.agents.RegisterAgent(
                agent_pb2.RegisterAgentRequest(agent_id=f"burst-{i}", agent_type="worker")
            )
            for i in range(300)
        )
    )
    assert all(reply.created for reply in replies)
    assert await redis_client.scard("agents:all") == 300
    assert node.coordinator.health.serving


async def test_messages_over_the_configured_size_are_refused(start_node):
    node = await start_node(max_message_bytes=64 * 1024)
    small = agent_pb2.RegisterAgentRequest(agent_id="small", agent_type="worker")
    assert (await node.agents.RegisterAgent(small)).created
    big = agent_pb2.RegisterAgentRequest(
        agent_id="big", agent_type="worker", metadata={f"k{i}": "x" * 1000 for i in range(70)}
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await node.agents.RegisterAgent(big)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_burst_the_node_cannot_take_at_once_is_queued_not_cancelled(spawn_node):
    """gRPC core holds calls until the node takes them, and by default cancels them in
    silence (CANCELLED, logged nowhere) beyond 1,000 waiting per method. A node that was
    stalled under a burst serves every call late instead of dropping some."""
    node = spawn_node()
    node.wait_serving()
    burst = 2500
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        await channel.channel_ready()
        node.signal(signal.SIGSTOP)  # the burst arrives while the node cannot take it
        try:
            calls = [
                asyncio.ensure_future(
                    stub.GetAgent(agent_pb2.GetAgentRequest(agent_id=f"ghost-{i}"), timeout=60)
                )
                for i in range(burst)
            ]
            await asyncio.sleep(1.0)
        finally:
            node.signal(signal.SIGCONT)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    codes: dict[str, int] = {}
    for outcome in outcomes:
        assert isinstance(outcome, grpc.aio.AioRpcError), outcome
        codes[outcome.code().name] = codes.get(outcome.code().name, 0) + 1
    assert codes == {"NOT_FOUND": burst}
