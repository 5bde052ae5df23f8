"""docs/agents-in-other-languages.md runs as shown: the Node.js example agent
(examples/node-agent, its node_modules installed as for tests/test_node_agent.py) against a
live node, driven by the page's console commands (tests/docs_support.py)."""

from __future__ import annotations

import shutil

import pytest

from docs_support import DOCS, ROOT, command_environment, run_page

PAGE = DOCS / "agents-in-other-languages.md"
AGENT = "examples/node-agent/agent.js"


@pytest.mark.skipif(
    shutil.which("node") is None or not (ROOT / "examples/node-agent/node_modules").exists(),
    reason="node or the example agent's node_modules (npm ci) is missing",
)
async def test_the_other_languages_page_runs_as_shown(page_node, page_redis, tmp_path) -> None:
    node = page_node(NODE_ID="node-a")
    env = command_environment(node.address, page_redis.url(1))
    await run_page(PAGE, env, cwd=tmp_path, rewrites={AGENT: str(ROOT / AGENT)})
