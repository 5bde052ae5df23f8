"""docs/python-sdk.md runs as shown: the demo agent on a live node, the page's python blocks
written as files, and its console commands (tests/docs_support.py) run in order. The page's
``localhost:9001`` (``make run``'s node) becomes the test node's address, and ``submit``
without ``--address`` gets it."""

from __future__ import annotations

from docs_support import DOCS, command_environment, run_page

PAGE = DOCS / "python-sdk.md"


async def test_the_python_sdk_page_runs_as_shown(
    page_node, page_redis, demo_agent, tmp_path
) -> None:
    node = page_node(NODE_ID="node-a")
    demo_agent(node.address)
    env = command_environment(node.address, page_redis.url(1))
    rewrites = {
        "coordinator submit ": f"coordinator submit --address {node.address} ",
        "localhost:9001": node.address,
    }
    await run_page(PAGE, env, cwd=tmp_path, rewrites=rewrites)
