"""docs/tasks.md runs as shown: its console commands (tests/docs_support.py) against a live
node of their own, with nothing registered or submitted before them. The page's agent is
grpcurl itself: its stream runs in the background, and the page reads the assignments, ids
and fencing tokens from its output with jq."""

from __future__ import annotations

from docs_support import DOCS, command_environment, run_page

PAGE = DOCS / "tasks.md"


async def test_the_tasks_page_runs_as_shown(page_node, page_redis, tmp_path) -> None:
    node = page_node(NODE_ID="node-a")
    env = command_environment(node.address, page_redis.url(1))
    await run_page(PAGE, env, cwd=tmp_path)
