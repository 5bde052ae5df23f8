"""A private redis-server for ``make run`` on a machine where no Redis is configured.

Used only when REDIS_URL is not set and nothing answers on the default address. Data is
persisted (append-only file) under the state folder, so tasks and agents survive restarts
of ``make run``. The server is stopped when the coordinator exits, and also dies with it if
the coordinator is killed (PR_SET_PDEATHSIG on Linux).
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def redis_answers(url: str, timeout_s: float = 0.5) -> bool:
    """True if a Redis at ``url`` answers PING within ``timeout_s``."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def die_with_parent() -> None:
    """Runs in a child before exec: it gets SIGTERM when this process dies (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port that was free on the loopback a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server child process with its data under ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> str:
        """Start redis-server on a free loopback port; returns its URL (database 1)."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "REDIS_URL is not set, nothing answers on the default address, and redis-server "
                "is not installed: install it (apt-get install redis-server) or set REDIS_URL"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self._process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.state_dir.resolve()),
                "--appendonly",
                "yes",
                "--save",
                "300 1 60 1000",
                "--logfile",
                "redis.log",
                "--daemonize",
                "no",
            ],
            preexec_fn=die_with_parent,
            stdout=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/1"
        deadline = time.monotonic() + timeout_s
        while not redis_answers(url, timeout_s=0.2):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the private redis-server did not start; see {self.state_dir / 'redis.log'}"
                )
            time.sleep(0.05)
        self.url = url
        log.warning(
            "REDIS_URL is not set and nothing answers on the default address: started a private "
            "redis-server at %s (data in %s); it stops with the coordinator. Other nodes can "
            "join with REDIS_URL=%s",
            url,
            self.state_dir,
            url,
        )
        return url

    def stop(self) -> None:
        """Stop the server, letting it write its data (idempotent)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.info("private redis-server stopped")
