"""docs/metrics-and-logs.md runs as written: a node with metrics and JSON logs, the demo
agent and a task, started by the page's commands (tests/docs_support.py) on the test's own
Redis. The page's fixed ports (9111 for gRPC, 9465 for metrics) become free ones."""

from __future__ import annotations

import re
import socket

from docs_support import DOCS, command_environment, run_page

PAGE = DOCS / "metrics-and-logs.md"
VOLATILE = [
    (re.compile(r"redis://127\.0\.0\.1:\d+/\d+"), "<redis-url>"),
    # Durations: how long the calls took.
    (re.compile(r"^(aitbc_coordinator_\w+_seconds_sum(?:\{.*\})?) \S+$"), r"\1 <seconds>"),
    # Whether the task was assigned at its submit or by a pass depends on whether the node's
    # view of the agents was fresh at that moment.
    (re.compile(r"^(aitbc_coordinator_assignments_total\{way=\"\w+\"\}) \S+$"), r"\1 <n>"),
    # The submit command ends its WatchTask when the task ends: the node may see the stream
    # end (OK) or the client go (CANCELLED) first.
    (re.compile(r'code="(?:OK|CANCELLED)",(method="WatchTask")'), r'code="<end>",\1'),
    (re.compile(r"^(aitbc_coordinator_redis_used_memory_bytes) \S+$"), r"\1 <bytes>"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_the_metrics_page_runs_as_written(page_redis, tmp_path) -> None:
    env = command_environment("", page_redis.url(1))
    rewrites = {port: str(free_port()) for port in ("9111", "9465")}
    await run_page(PAGE, env, cwd=tmp_path, rewrites=rewrites, volatile=VOLATILE)
