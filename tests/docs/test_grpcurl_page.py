"""docs/grpcurl.md runs as shown: its console commands (tests/docs_support.py) against a live
node of their own, plaintext as in the page, with nothing registered before them."""

from __future__ import annotations

import re

from docs_support import DOCS, command_environment, run_page

PAGE = DOCS / "grpcurl.md"
# A page token encodes where the page ended, and the registry's filter hash: it differs per run.
VOLATILE = [(re.compile(r'("nextPageToken": ")[^"]+"'), r'\1<token>"')]


async def test_the_grpcurl_page_runs_as_shown(page_node, page_redis, tmp_path) -> None:
    node = page_node(NODE_ID="node-a")
    env = command_environment(node.address, page_redis.url(1))
    await run_page(PAGE, env, cwd=tmp_path, volatile=VOLATILE)
