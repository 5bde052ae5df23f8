"""Fixtures of the docs pages' tests: a cluster of their own (Redis and nodes), so that what
the pages show (statistics, client lists, the agents found) holds nothing of other tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import CoordinatorProcess, RedisServer, wait_until

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def page_redis() -> Iterator[RedisServer]:
    """A redis-server of the page's own."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def page_node(spawn_node, page_redis: RedisServer) -> Callable[..., CoordinatorProcess]:
    """``page_node(NODE_ID="node-a", ...)``: a SERVING node on the page's Redis."""

    def start(**env: str) -> CoordinatorProcess:
        node = spawn_node({"REDIS_URL": page_redis.url(1), **env})
        wait_until(lambda: node.health() == "SERVING", 20.0, interval_s=0.1, what="SERVING")
        return node

    return start


@pytest.fixture
def demo_agent(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``demo_agent(address, *flags)``: ``python -m coordinator agent`` (the demo agent) in
    the background, connected; returns its log file. Stopped with SIGTERM at the end."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(address: str, *flags: str) -> Path:
        log = tmp_path / f"demo-agent-{len(processes)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "coordinator", "agent", "--address", address, *flags],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        processes.append(process)

        def connected() -> bool:
            if process.poll() is not None:
                pytest.fail(f"the demo agent exited:\n{log.read_text()}")
            return "stream open" in log.read_text()

        wait_until(connected, 20.0, interval_s=0.05, what="the demo agent's stream")
        return log

    yield start
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
