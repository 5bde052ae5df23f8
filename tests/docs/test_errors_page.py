"""docs/errors.md runs as shown: its console commands (tests/docs_support.py) against a live
node of their own, so the error messages and details the page quotes are the real ones."""

from __future__ import annotations

from docs_support import DOCS, command_environment, run_page

PAGE = DOCS / "errors.md"


async def test_the_errors_page_runs_as_shown(page_node, page_redis, tmp_path) -> None:
    node = page_node(NODE_ID="node-a")
    env = command_environment(node.address, page_redis.url(1))
    await run_page(PAGE, env, cwd=tmp_path)
