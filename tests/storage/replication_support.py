"""Real replicated Redis for tests: a primary, replicas (``redis-server --replicaof``) and a
Sentinel set (``redis-server sentinel.conf --sentinel``), each a process on a free loopback
port that a test can SIGKILL."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import redis

from support import free_port, wait_until

MASTER_NAME = "mymaster"


class RedisProcess:
    """One redis-server (data node or sentinel) with its own folder; ``kill()`` is SIGKILL."""

    def __init__(self, args: Sequence[str] = (), sentinel_of: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="coordinator-test-replication-"))
        common = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        if sentinel_of is None:
            command = [binary, *common, "--save", "", "--appendonly", "no", *args]
        else:
            # Sentinel rewrites its config file (the state it learns): one file each.
            conf = self.dir / "sentinel.conf"
            conf.write_text(
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {sentinel_of} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 3000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            command = [binary, str(conf), "--sentinel", *common, *args]
        self.process = subprocess.Popen(
            [*command, "--logfile", str(self.dir / "redis.log")], stdout=subprocess.DEVNULL
        )
        wait_until(self._pings, 10, what=f"redis-server on port {self.port}")

    def client(self) -> redis.Redis:
        """A synchronous client of this process (decoded replies)."""
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)

    def _pings(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def log_tail(self, chars: int = 2000) -> str:
        """The end of this process's log (for a failure's message)."""
        return (self.dir / "redis.log").read_text(errors="replace")[-chars:]

    def pause(self) -> None:
        """SIGSTOP: the process holds its connections but reads nothing (a replica lags)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: nothing is flushed, no goodbye to replicas or sentinels."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_replica(primary: RedisProcess) -> RedisProcess:
    """A replica of ``primary``, returned once its link is up and in sync."""
    replica = RedisProcess(["--replicaof", "127.0.0.1", str(primary.port)])

    def linked() -> bool:
        with replica.client() as client:
            return client.info("replication").get("master_link_status") == "up"

    wait_until(linked, 10, what="the replica's link to its primary")
    return replica


def start_sentinels(primary: RedisProcess, count: int = 3) -> list[RedisProcess]:
    """``count`` sentinels monitoring ``primary`` (quorum 2, down after 1 s), returned once
    each knows the others and the replicas (so that a failover can start at once)."""
    sentinels = [RedisProcess(sentinel_of=primary.port) for _ in range(count)]

    def acquainted() -> bool:
        for sentinel in sentinels:
            with sentinel.client() as client:
                state = client.sentinel_master(MASTER_NAME)
                if state["num-other-sentinels"] < count - 1 or state["num-slaves"] < 1:
                    return False
        return True

    wait_until(acquainted, 20, interval_s=0.2, what="the sentinels to find each other")
    return sentinels


def primary_port(sentinels: Sequence[RedisProcess]) -> int | None:
    """The primary's port as the first sentinel that answers names it."""
    for sentinel in sentinels:
        try:
            with sentinel.client() as client:
                return int(client.sentinel_get_master_addr_by_name(MASTER_NAME)[1])
        except redis.RedisError:
            continue
    return None


def sentinel_addresses(sentinels: Sequence[RedisProcess]) -> str:
    """COORDINATOR_REDIS_SENTINELS for these sentinels."""
    return ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
