"""README.md's one-minute round trip runs as shown: the demo agent on a live node, and the
README's console commands (tests/docs_support.py) against it. The README's ``submit`` has no
``--address`` (``make run`` listens on localhost:9001); the test adds the node's."""

from __future__ import annotations

from docs_support import ROOT, command_environment, run_page

README = ROOT / "README.md"


async def test_the_readme_round_trip_runs_as_shown(page_node, page_redis, demo_agent, tmp_path):
    node = page_node(NODE_ID="node-a")
    demo_agent(node.address)
    env = command_environment(node.address, page_redis.url(1))
    rewrites = {"coordinator submit ": f"coordinator submit --address {node.address} "}
    await run_page(README, env, cwd=tmp_path, rewrites=rewrites)


def test_the_readme_stays_a_front_door() -> None:
    """Issue 16: at most about 200 lines, and every docs page is linked from it."""
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    unlinked = [name for name in pages if f"](docs/{name})" not in text]
    assert not unlinked, f"README.md links no docs page called {unlinked}"
