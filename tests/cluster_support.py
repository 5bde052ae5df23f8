"""A real Redis Cluster of three primaries on free loopback ports, for cluster mode tests
and the bench (``redis-server --cluster-enabled yes`` x3, then ``redis-cli --cluster
create``)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import redis

from support import free_port, wait_until


class RedisCluster:
    """Three cluster-enabled redis-servers joined into one cluster with no replicas."""

    def __init__(self, primaries: int = 3) -> None:
        for binary in ("redis-server", "redis-cli"):
            if shutil.which(binary) is None:
                raise RuntimeError(f"{binary} is not installed (make test installs it)")
        self.ports = [free_port() for _ in range(primaries)]
        self.dir = Path(tempfile.mkdtemp(prefix="coordinator-test-cluster-"))
        self.processes: list[subprocess.Popen[bytes]] = []

    def url(self, index: int = 0) -> str:
        """A seed URL (database 0, the only one of a cluster)."""
        return f"redis://127.0.0.1:{self.ports[index]}/0"

    def _start_server(self, port: int) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(self.dir / f"nodes-{port}.conf"),
                # The bus on a free port too (by default the port + 10000).
                "--cluster-port",
                str(free_port()),
                "--cluster-node-timeout",
                "2000",
                # A replica syncs at once (Redis waits 5 s by default for more replicas).
                "--repl-diskless-sync-delay",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--logfile",
                f"redis-{port}.log",
            ],
            stdout=subprocess.DEVNULL,
        )
        self.processes.append(process)
        wait_until(lambda: self._pings(port), 10, what=f"redis-server on port {port}")
        return process

    def start(self) -> None:
        for port in self.ports:
            self._start_server(port)
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )
        for port in self.ports:
            wait_until(lambda p=port: self._cluster_ok(p), 20, what=f"cluster_state:ok on {port}")

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, decode_responses=True, socket_timeout=5)

    def owner_of(self, slot: int) -> int:
        """The port of the primary that owns ``slot`` (as the first node sees it)."""
        for start, end, primary, *_ in self.client(self.ports[0]).execute_command("CLUSTER SLOTS"):
            if int(start) <= slot <= int(end):
                return int(primary[1])
        raise AssertionError(f"slot {slot} has no owner")

    def keys_on(self, port: int) -> list[str]:
        """Every key stored on one primary."""
        return sorted(self.client(port).scan_iter(count=1000))

    def move_slot(self, slot: int, to_port: int) -> int:
        """Reshard one slot to the primary on ``to_port``, with all its keys at once: the
        source marks it MIGRATING, MIGRATEs every key and gives it away in one Lua script
        (no script of the coordinator runs while the slot is half moved), then the target
        takes it. Returns how many keys moved."""
        from_port = self.owner_of(slot)
        source, target = self.client(from_port), self.client(to_port)
        target_id = target.execute_command("CLUSTER MYID")
        target.execute_command(
            "CLUSTER SETSLOT", slot, "IMPORTING", source.execute_command("CLUSTER MYID")
        )
        moved = int(source.eval(_MOVE_SLOT, 0, slot, target_id, "127.0.0.1", to_port))
        target.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        for port in self.ports:
            if port not in (from_port, to_port):
                self.client(port).execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        return moved

    def add_replica(self, primary_port: int) -> int:
        """Start a node replicating the primary on ``primary_port``: its port, once in sync."""
        port = free_port()
        self._start_server(port)
        primary_id = self.client(primary_port).execute_command("CLUSTER MYID")
        add = ["redis-cli", "--cluster", "add-node", f"127.0.0.1:{port}"]
        add += [f"127.0.0.1:{primary_port}", "--cluster-slave", "--cluster-master-id", primary_id]
        subprocess.run(add, check=True, stdout=subprocess.DEVNULL, timeout=60)
        replica = self.client(port)
        wait_until(
            lambda: replica.info("replication").get("master_link_status") == "up",
            20,
            what=f"the replica on {port} in sync",
        )
        return port

    def info_cpu_s(self, port: int) -> float:
        """CPU seconds (user + system) one primary has used since it started."""
        info = self.client(port).info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def _pings(self, port: int) -> bool:
        try:
            return bool(self.client(port).ping())
        except redis.RedisError:
            return False

    def _cluster_ok(self, port: int) -> bool:
        return self.client(port).cluster("INFO").get("cluster_state") == "ok"

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


_MOVE_SLOT = """
local slot, target_id, host, port = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local keys = redis.call('CLUSTER', 'GETKEYSINSLOT', slot, 1000000000)
redis.call('CLUSTER', 'SETSLOT', slot, 'MIGRATING', target_id)
for i = 1, #keys, 1000 do
  local last = math.min(i + 999, #keys)
  redis.call('MIGRATE', host, port, '', 0, 10000, 'KEYS', unpack(keys, i, last))
end
redis.call('CLUSTER', 'SETSLOT', slot, 'NODE', target_id)
return #keys
"""
