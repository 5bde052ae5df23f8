"""One node, several processes (coordinator/node/workers.py): COORDINATOR_WORKERS=2 runs two
worker processes on one gRPC port, the parent restarts a killed worker, drains them all on
SIGTERM, stops when a worker cannot start, and a separate node still cannot take the port.

Real ``python -m coordinator serve`` processes against the session's real redis-server.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aitbc.coordinator.v1 import agent_pb2, agent_pb2_grpc
from coordinator.config import ConfigError, load_settings
from support import free_port, wait_until

WORKERS_2 = {"NODE_ID": "wn", "COORDINATOR_WORKERS": "2"}


def wait_workers_serving(node) -> None:
    """Until the parent says every worker serves (health answers as soon as one does)."""
    node.wait_serving()
    wait_until(lambda: "serving with 2 workers" in node.logs(), 20, what="both workers")


def worker_pids(parent_pid: int) -> dict[int, int]:
    """The parent's worker processes: worker index -> pid (from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # exited meanwhile
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == parent_pid and b"--worker" in argv:
            found[int(argv[argv.index(b"--worker") + 1])] = int(entry.name)
    return found


def stream_node_id(address: str, agent_id: str) -> str:
    """Register ``agent_id`` and open its StreamAssignments over a fresh connection; the
    node_id of the StreamReady event (which worker took the connection)."""
    with grpc.insecure_channel(address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        stub.RegisterAgent(
            agent_pb2.RegisterAgentRequest(agent_id=agent_id, agent_type="worker"), timeout=5
        )
        stream = stub.StreamAssignments(
            agent_pb2.StreamAssignmentsRequest(agent_id=agent_id), timeout=5
        )
        first = next(stream)
        stream.cancel()
    assert first.WhichOneof("event") == "ready", first
    return first.ready.node_id


def node_ids_seen(address: str, want: set[str], prefix: str) -> set[str]:
    """Node ids of up to 40 fresh connections, stopping once all of ``want`` were seen.
    The kernel spreads connections over SO_REUSEPORT sockets by a hash of their addresses:
    40 connections all landing on one of two workers has a chance of 2 in 10^12."""
    seen: set[str] = set()
    for i in range(40):
        seen.add(stream_node_id(address, f"{prefix}-{i}"))
        if want <= seen:
            break
    return seen


def test_two_workers_share_the_port_and_each_takes_calls(spawn_node):
    health_port = free_port()
    node = spawn_node(env={**WORKERS_2, "COORDINATOR_HEALTH_PORT": str(health_port)})
    wait_workers_serving(node)

    assert node_ids_seen(node.address, {"wn-w0", "wn-w1"}, "spread") == {"wn-w0", "wn-w1"}
    assert sorted(worker_pids(node.process.pid)) == [0, 1]
    # The health-only port is shared by the workers too.
    with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_killed_worker_is_restarted_and_the_port_keeps_answering(spawn_node):
    node = spawn_node(env=WORKERS_2)
    wait_workers_serving(node)
    before = worker_pids(node.process.pid)
    os.kill(before[0], signal.SIGKILL)

    # The other worker answers while worker 0 is down and being restarted. A connection the
    # kernel queued on the killed worker's listener, until the process is torn down, is
    # reset (SO_REUSEPORT hands nothing over), so a client may see UNAVAILABLE while the
    # listener goes: like any gRPC client, the probe reconnects (at most twice more, 50 ms
    # apart; CI once saw two probes in a row land on the dying listener).
    def answered() -> bool:
        for attempt in range(3):
            if attempt:
                time.sleep(0.05)
            if node.health() == "SERVING":
                return True
        return False

    deadline = time.monotonic() + 20
    after = before
    while after.get(0) in (None, before[0]) and time.monotonic() < deadline:
        assert answered(), node.logs()
        time.sleep(0.1)
        after = worker_pids(node.process.pid)
    assert after[0] != before[0] and after[1] == before[1], (before, after)
    wait_until(lambda: node.logs().count("coordinator serving on") == 3, 20, what="worker 0 again")
    assert f"worker 0 (pid {before[0]}) exited with code -9; restarting" in node.logs()
    assert node_ids_seen(node.address, {"wn-w0", "wn-w1"}, "again") == {"wn-w0", "wn-w1"}


def test_sigterm_drains_every_worker_and_the_node_exits_0(spawn_node):
    node = spawn_node(env=WORKERS_2)  # COORDINATOR_SHUTDOWN_GRACE_S=3 (support.py)
    wait_workers_serving(node)
    pids = worker_pids(node.process.pid)
    assert len(pids) == 2

    node.signal(signal.SIGTERM)
    assert node.wait(timeout_s=3 + 10) == 0, node.logs()
    logs = node.logs()
    for worker in ("wn-w0", "wn-w1"):
        assert f"coordinator stopped node_id={worker}" in logs, logs
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid)
    assert "Traceback" not in logs, logs


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "gone"


@pytest.mark.parametrize("second_workers", ["1", "2"])
def test_a_separate_node_cannot_take_the_port_of_a_multi_worker_node(spawn_node, second_workers):
    first = spawn_node(env=WORKERS_2)
    wait_workers_serving(first)
    second = spawn_node(
        env={
            "NODE_ID": "second",
            "COORDINATOR_WORKERS": second_workers,
            "COORDINATOR_PORT": str(first.port),
        }
    )
    assert second.wait(timeout_s=20) == 1, second.logs()
    assert f"cannot serve on 127.0.0.1:{first.port}" in second.logs(), second.logs()
    assert "Traceback" not in second.logs()
    assert not worker_pids(second.process.pid)
    # Every connection still lands on the first node's workers.
    assert node_ids_seen(first.address, {"wn-w0", "wn-w1"}, "first") == {"wn-w0", "wn-w1"}


def test_a_multi_worker_node_cannot_take_the_port_of_a_single_node(spawn_node):
    first = spawn_node(env={"NODE_ID": "single", "COORDINATOR_WORKERS": "1"})
    first.wait_serving()
    second = spawn_node(env={**WORKERS_2, "COORDINATOR_PORT": str(first.port)})
    assert second.wait(timeout_s=20) == 1, second.logs()
    assert f"cannot serve on 127.0.0.1:{first.port}" in second.logs(), second.logs()
    assert "coordinator serving" not in second.logs()


def test_a_worker_that_cannot_start_stops_the_node_with_its_message(spawn_node):
    # Worker 1 serves metrics on the metrics port + 1, which something else holds.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics_port = taken.getsockname()[1] - 1
        node = spawn_node(
            env={
                **WORKERS_2,
                "COORDINATOR_METRICS_ENABLED": "true",
                "COORDINATOR_METRICS_PORT": str(metrics_port),
            }
        )
        code = node.wait(timeout_s=30)
    logs = node.logs()
    assert code == 1, logs
    assert f"cannot bind the metrics port 127.0.0.1:{metrics_port + 1}" in logs, logs
    # Worker 1 (or worker 0 too, if something else happened to hold the port below).
    assert re.search(r"worker [01] exited with code 1 before it served; stopping the node", logs)
    assert "restarting" not in logs, logs


def test_workers_setting_is_checked():
    base = {"COORDINATOR_HOST": "127.0.0.1"}
    assert load_settings({**base, "COORDINATOR_WORKERS": "3"}).workers == 3
    assert load_settings(base).workers == len(os.sched_getaffinity(0))
    with pytest.raises(ConfigError, match="COORDINATOR_WORKERS"):
        load_settings({**base, "COORDINATOR_WORKERS": "0"})
    clash = {
        **base,
        "COORDINATOR_WORKERS": "4",
        "COORDINATOR_METRICS_ENABLED": "true",
        "COORDINATOR_METRICS_PORT": "9000",
        "COORDINATOR_PORT": "9003",
    }
    with pytest.raises(ConfigError, match="COORDINATOR_METRICS_PORT: workers serve metrics on"):
        load_settings(clash)
    assert load_settings({**clash, "COORDINATOR_PORT": "9004"}).metrics_port == 9000


def holder_of(address: str, agent_id: str) -> str:
    """The node id that holds the agent's StreamAssignments ("" when none does or the agent
    has not registered yet)."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = agent_pb2_grpc.AgentServiceStub(channel).GetAgent(
                agent_pb2.GetAgentRequest(agent_id=agent_id), timeout=5
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return ""
            raise
    return reply.agent.node_id


def test_an_sdk_agent_whose_worker_is_killed_reconnects_and_runs_tasks(spawn_node):
    node = spawn_node(env=WORKERS_2)
    wait_workers_serving(node)
    agent = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "agent", "--address", node.address, "--id", "sdk"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        holder = wait_until(lambda: holder_of(node.address, "sdk") or None, 20, what="stream")
        worker = int(holder.rsplit("-w", 1)[1])
        pid = worker_pids(node.process.pid)[worker]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: f"(pid {pid}) exited with code -9" in node.logs(), 10, what="exit")

        # The agent's SDK reconnects (to the other worker, or the restarted one) and gets work.
        submit = [sys.executable, "-m", "coordinator", "submit", "--address", node.address]
        done = subprocess.run(
            [*submit, "--type", "echo", "--data", '{"x": 1}', "--wait", "--timeout", "30"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, (done.stdout, done.stderr, node.logs())
        assert holder_of(node.address, "sdk") in ("wn-w0", "wn-w1")
    finally:
        agent.terminate()
        agent.wait(timeout=20)


def test_a_worker_whose_supervisor_is_gone_exits_at_once():
    """A supervisor killed while its worker was still importing sent no death signal: the
    worker finds another parent and exits instead of serving on as an orphan."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    started = time.monotonic()
    worker = subprocess.run(
        [
            *(sys.executable, "-m", "coordinator", "serve"),
            *("--worker", "0", "--ready-fd", "1", "--supervisor-pid", str(gone.pid)),
        ],
        env={**os.environ, "COORDINATOR_PORT": "0", "REDIS_URL": "redis://127.0.0.1:1/1"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert worker.returncode == 1
    assert f"its supervisor (pid {gone.pid}) is gone" in worker.stderr
    assert time.monotonic() - started < 10
