"""Real processes for tests: redis-server on free ports and coordinator nodes as subprocesses."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port that was free a moment ago on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate, timeout_s: float = 10.0, interval_s: float = 0.02, what: str = "condition"
):
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


class RedisServer:
    """A real redis-server on a free loopback port. Restartable on the same port (and data
    folder), to test outages. No persistence, unless ``aof``: an append-only file fsynced on
    every write, so a restart loses nothing that was acknowledged."""

    def __init__(self, aof: bool = False) -> None:
        self.aof = aof
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="coordinator-test-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *(("--appendonly", "yes", "--appendfsync", "always") if self.aof else ()),
                *(() if self.aof else ("--appendonly", "no")),
                "--dir",
                str(self.dir),
                "--logfile",
                "redis.log",
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            # Loading an AOF back takes longer than starting empty.
            wait_until(
                lambda: self._pings(client),
                20 if self.aof else 10,
                what=f"redis-server on port {self.port}",
            )
        finally:
            client.close()

    @staticmethod
    def _pings(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """SIGTERM: Redis flushes its AOF, if any, and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


_SERVING_LINE = re.compile(r"coordinator serving on \S+:(\d+)")


class CoordinatorProcess:
    """``python -m coordinator serve`` as a subprocess on a free port, logs in a file."""

    def __init__(self, env: Mapping[str, str], args: tuple[str, ...] = ()) -> None:
        # Port 0 unless the test names one: the node binds a free port itself and logs it,
        # so no other process can take the port between choosing and binding it.
        self._port = int(env.get("COORDINATOR_PORT") or 0)
        self.log_path = Path(tempfile.mkstemp(prefix="coordinator-", suffix=".log")[1])
        full_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("COORDINATOR_", "REDIS_URL", "NODE_ID"))
        }
        full_env.update(
            {
                "COORDINATOR_HOST": "127.0.0.1",
                "COORDINATOR_PORT": str(self._port),
                "COORDINATOR_SHUTDOWN_GRACE_S": "3",
                # One process per node (its NODE_ID, its pid) unless the test asks for
                # workers (tests/node/test_workers.py).
                "COORDINATOR_WORKERS": "1",
                "PYTHONUNBUFFERED": "1",
                **env,
            }
        )
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "coordinator", "serve", *args],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=env.get("CWD", str(REPO)),
            # A session of its own: close() kills the node and every worker it started, so
            # no process outlives its test (a leftover would hold the cluster's timers).
            start_new_session=True,
        )

    @property
    def port(self) -> int:
        """The bound port; with port 0, read from the node's start-up log line."""
        if not self._port:
            self._port = wait_until(self._logged_port, 20.0, interval_s=0.05, what="the bound port")
        return self._port

    def _logged_port(self) -> int | None:
        if self.process.poll() is not None and not _SERVING_LINE.search(self.logs()):
            raise AssertionError(f"coordinator exited before binding:\n{self.logs()}")
        found = _SERVING_LINE.search(self.logs())
        return int(found.group(1)) if found else None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def health(self, service: str = "", timeout_s: float = 1.0) -> str:
        """The health status name, or the gRPC error code name if the call failed."""
        with grpc.insecure_channel(self.address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
                )
            except grpc.RpcError as exc:
                return exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_serving(self, timeout_s: float = 20.0) -> None:
        def serving() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"coordinator exited early:\n{self.logs()}")
            return self.health() == "SERVING"

        wait_until(serving, timeout_s, interval_s=0.1, what=f"coordinator on {self.address}")

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout_s: float = 20.0) -> int:
        return self.process.wait(timeout=timeout_s)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._log.close()
        self.log_path.unlink(missing_ok=True)
