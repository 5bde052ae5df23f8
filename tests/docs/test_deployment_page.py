"""docs/deployment.md runs as shown: the runbook's two checks against two live nodes, node-a
and node-b, on one Redis of their own (tests/docs_support.py)."""

from __future__ import annotations

from docs_support import DOCS, command_environment, run_page

PAGE = DOCS / "deployment.md"


async def test_the_deployment_page_runs_as_shown(page_node, page_redis, tmp_path) -> None:
    node_a = page_node(NODE_ID="node-a")
    page_node(NODE_ID="node-b")
    env = command_environment(node_a.address, page_redis.url(1))
    await run_page(PAGE, env, cwd=tmp_path)
