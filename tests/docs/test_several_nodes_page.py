"""docs/several-nodes.md runs as written: its own redis-server and two nodes, started by the
page's commands (tests/docs_support.py). The page's fixed ports (6380 for Redis, 9001 and
9002 for the nodes) become free ones, and ``.venv/bin/`` the test's virtualenv."""

from __future__ import annotations

import socket

from docs_support import BIN, DOCS, command_environment, run_page

PAGE = DOCS / "several-nodes.md"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_the_several_nodes_page_runs_as_written(tmp_path) -> None:
    env = command_environment("", "")
    rewrites = {port: str(free_port()) for port in ("6380", "9001", "9002")}
    rewrites[".venv/bin/"] = f"{BIN}/"
    await run_page(PAGE, env, cwd=tmp_path, rewrites=rewrites)
