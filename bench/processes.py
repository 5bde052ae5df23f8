"""The benchmark's own processes: one redis-server, coordinator nodes, worker scripts.

Every child is started in its own session (Ctrl-C reaches the harness, which stops children
in order) and gets SIGTERM if the harness dies, even by SIGKILL (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis

from coordinator.storage.private_redis import die_with_parent, free_port

REPO = Path(__file__).resolve().parent.parent


def spawn(
    argv: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a child writing stdout and stderr to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            list(argv),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )


def stop_process(process: subprocess.Popen[bytes] | None, timeout_s: float) -> int | None:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL; returns the exit code."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def wait_until(what: str, predicate: Callable[[], bool], timeout_s: float) -> None:
    """Poll ``predicate`` every 20 ms until it is true; RuntimeError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.02)


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB, from /proc/<pid>/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def cpu_s(pid: int) -> float:
    """CPU time (user + system) a process has used so far, in seconds, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_tail(path: Path, lines: int = 20) -> str:
    """The last lines of a child's log, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class RedisServer:
    """A private redis-server on a free loopback port, without persistence."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make check-redis)")
        self.port = free_port()
        self.process = spawn(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--maxclients",
                "10000",
            ],
            self.workdir / "redis.log",
        )
        client = self.client(0)

        def pings() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited:\n{log_tail(self.workdir / 'redis.log')}")
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        try:
            wait_until(f"redis-server on port {self.port}", pings, 10)
        finally:
            client.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int) -> redis.Redis:
        return redis.Redis(port=self.port, db=db, socket_connect_timeout=1)

    def stop(self) -> int | None:
        code = stop_process(self.process, timeout_s=10)
        self.process = None
        return code


class CoordinatorNode:
    """One ``python -m coordinator serve`` on a free port, sharing the bench's Redis."""

    def __init__(self, workdir: Path, node_id: str, redis_url: str, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.node_id = node_id
        self.redis_url = redis_url
        self.extra_env = env
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.node_id}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self.port = free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("COORDINATOR_", "REDIS_URL", "NODE_ID"))
        }
        env.update(
            {
                "REDIS_URL": self.redis_url,
                "COORDINATOR_HOST": "127.0.0.1",
                "COORDINATOR_PORT": str(self.port),
                "NODE_ID": self.node_id,
                # One process per node: the CPU figures read the node's pid alone. (Workers
                # can be asked for through the extra environment.)
                "COORDINATOR_WORKERS": "1",
                "PYTHONUNBUFFERED": "1",
                **self.extra_env,
            }
        )
        self.process = spawn(
            [sys.executable, "-m", "coordinator", "serve"], self.log, env=env, cwd=self.workdir
        )

        # The harness holds no gRPC channel: gRPC's threads and fork handlers can hang a
        # later fork (every child is started with a preexec_fn). `coordinator health` exits
        # 0 once the node answers SERVING.
        def serving() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.node_id} exited early:\n{log_tail(self.log)}")
            probe = [sys.executable, "-m", "coordinator", "health", "--address", self.address]
            # A TLS node (bench/tls_cost.py) passes the probe its CA as AITBC_TLS_CA_FILE.
            probe_env = {**os.environ, **self.extra_env}
            done = subprocess.run(probe, capture_output=True, check=False, env=probe_env)
            return done.returncode == 0

        wait_until(f"{self.node_id} on {self.address}", serving, 30)

    def stop(self) -> int | None:
        code = stop_process(self.process, timeout_s=20)
        self.process = None
        return code
