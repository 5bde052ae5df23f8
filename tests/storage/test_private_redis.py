"""The private redis-server of ``make run``: ``PrivateRedis`` itself (answers, persists its
data under the state folder, restarts with it, stops idempotently), and the end-to-end
``python -m coordinator serve --private-redis`` path when REDIS_URL is unset and nothing
answers on the default address.

A Redis answers on 127.0.0.1:6379 on developer machines and CI hosts, so the end-to-end test
runs the coordinator in a fresh network namespace (``unshare --net``, root only) where the
default address is empty, and probes it from inside that namespace with ``nsenter``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import redis

from coordinator.server import AGENT_SERVICE
from coordinator.storage import keys
from coordinator.storage.private_redis import PrivateRedis, redis_answers
from support import REPO, wait_until

GRACE_S = 3


def test_private_redis_answers_persists_across_restarts_and_stops_idempotently(tmp_path):
    state = tmp_path / "redis"
    private = PrivateRedis(state)
    try:
        url = private.start()
        assert url.startswith("redis://127.0.0.1:") and url.endswith("/1")
        assert redis_answers(url)
        client = redis.Redis.from_url(url, decode_responses=True)
        try:
            client.set("survives", "restart")
        finally:
            client.close()
        # Append-only persistence under the state folder (Redis 7 writes appendonlydir/).
        wait_until(lambda: list(state.rglob("appendonly*")), timeout_s=5, what="append-only file")
        assert (state / "redis.log").is_file()
    finally:
        private.stop()
    assert not redis_answers(url)
    private.stop()  # idempotent: nothing to stop, no error

    again = PrivateRedis(state)
    try:
        url_again = again.start()
        client = redis.Redis.from_url(url_again, decode_responses=True)
        try:
            assert client.get("survives") == "restart"
        finally:
            client.close()
    finally:
        again.stop()
        again.stop()
    assert not redis_answers(url_again)


def test_private_redis_is_not_used_when_redis_url_is_set(spawn_node, tmp_path):
    state = tmp_path / "state"
    node = spawn_node(args=("--private-redis", "--state-dir", str(state)))
    node.wait_serving()
    assert "private redis-server" not in node.logs()
    assert not state.exists()


# --------------------------------------------------------------------------- make run, end to end


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces, so split after the last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _require_network_namespaces() -> None:
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: cannot isolate the default Redis address")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    probe = subprocess.run(
        ["unshare", "--net", "sh", "-c", "ip link set lo up"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        pytest.skip(
            "cannot create a network namespace (unshare --net needs root or CAP_SYS_ADMIN): "
            + probe.stderr.strip()
        )


def test_make_run_starts_a_private_redis_when_nothing_answers(tmp_path):
    _require_network_namespaces()
    state = tmp_path / "state"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COORDINATOR_", "REDIS_URL", "NODE_ID"))
    }
    env.update({"PYTHONUNBUFFERED": "1", "COORDINATOR_SHUTDOWN_GRACE_S": str(GRACE_S)})
    # Exactly `make run`: default host and port. Without authentication the default host is
    # loopback (protected mode), so the node serves on 127.0.0.1:9001 in the new namespace.
    address = "127.0.0.1:9001"
    log_fd, log_name = tempfile.mkstemp(prefix="coordinator-netns-", suffix=".log")
    log_path = Path(log_name)
    coordinator = subprocess.Popen(
        [
            "unshare",
            "--net",
            "sh",
            "-c",
            'ip link set lo up && exec "$0" -m coordinator serve --private-redis --state-dir "$1"',
            sys.executable,
            str(state),
        ],
        env=env,
        cwd=REPO,
        stdout=log_fd,
        stderr=subprocess.STDOUT,
    )
    os.close(log_fd)
    redis_pids: list[int] = []

    def logs() -> str:
        return log_path.read_text(errors="replace")

    def in_namespace(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", f"--net=/proc/{coordinator.pid}/ns/net", *command],
            capture_output=True,
            text=True,
            timeout=30,
        )

    try:
        own_namespace = os.readlink("/proc/self/ns/net")

        def serving() -> bool:
            if coordinator.poll() is not None:
                raise AssertionError(f"the coordinator exited early:\n{logs()}")
            try:  # until unshare has run, the pid is still in our namespace: never probe that
                if os.readlink(f"/proc/{coordinator.pid}/ns/net") == own_namespace:
                    return False
            except OSError:
                return False
            probe = in_namespace(
                sys.executable, "-m", "coordinator", "health", "--address", address
            )
            return probe.returncode == 0 and probe.stdout.strip() == "SERVING"

        wait_until(
            serving, timeout_s=30, interval_s=0.2, what=f"SERVING on {address} in the namespace"
        )
        assert "started a private redis-server" in logs()
        assert "coordinator serving on 127.0.0.1:9001" in logs()  # not 0.0.0.0: no auth
        redis_pids = [pid for pid in _children(coordinator.pid) if _comm(pid) == "redis-server"]
        assert len(redis_pids) == 1, (_children(coordinator.pid), logs())
        assert (state / "redis" / "redis.log").is_file()

        # A real call through the private Redis, so it has something to persist.
        grpcurl = shutil.which("grpcurl", path=os.path.dirname(sys.executable))
        assert grpcurl, "grpcurl is not installed next to the interpreter"
        registered = in_namespace(
            grpcurl,
            "-plaintext",
            "-d",
            '{"agent_id": "netns-agent", "agent_type": "worker"}',
            address,
            f"{AGENT_SERVICE.full_name}/RegisterAgent",
        )
        assert registered.returncode == 0, (registered.stdout, registered.stderr)
        assert '"created": true' in registered.stdout

        coordinator.send_signal(signal.SIGTERM)
        assert coordinator.wait(timeout=GRACE_S + 5) == 0, logs()
        wait_until(
            lambda: not _alive(redis_pids[0]), timeout_s=10, what="private redis-server gone"
        )
        assert "private redis-server stopped" in logs()
        assert "coordinator stopped" in logs()
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
            coordinator.wait(timeout=10)
        for pid in redis_pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        log_path.unlink(missing_ok=True)

    # The agent survived in the state folder, as a later `make run` would find it.
    reopened = PrivateRedis(state / "redis")
    try:
        client = redis.Redis.from_url(reopened.start(), decode_responses=True)
        try:
            assert client.hget(keys.agent("netns-agent"), "agent_type") == "worker"
        finally:
            client.close()
    finally:
        reopened.stop()
