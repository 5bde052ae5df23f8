"""The hash tag of Redis Cluster mode reaches every key name: the constants of ``keys``, the
names its functions build, the Lua table ``K`` of the scripts, and nothing keeps an untagged
copy (no module imports a name from ``keys``)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.storage import key_tags, keys, scripts

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tagged() -> Iterator[str]:
    key_tags.use_tag("t1")
    yield "{t1}"
    key_tags.use_tag("")


def names() -> dict[str, str]:
    return {n: v for n, v in vars(keys).items() if n.isupper() and isinstance(v, str)}


def test_every_name_and_built_key_carries_the_tag_and_comes_back_without_it(tagged):
    assert names() and all(v.startswith(tagged) for v in names().values())
    assert all(v.startswith(tagged) for v in keys.TASK_SCRIPT_KEYS.values())
    built = [
        keys.agent("a"),
        keys.status_index("BUSY"),
        keys.task("t"),
        keys.task_queue("HIGH", "c"),
        keys.task_request("r", "p"),
        keys.available_in(keys.capability_index("gpu")),
        *keys.dispatch_turn_keys("n"),
        keys.node_channel("n"),
        keys.task_channel("t"),
    ]
    assert all(key.startswith(tagged) for key in built)
    # The scripts' key names are written in as literals (storage/lua_source.py).
    assert f"'{tagged}agents:available'" in scripts.source("heartbeat")
    # Sharded pub/sub on a Redis Cluster: a message stays on the shard of the tag's slot.
    assert "redis.call('SPUBLISH'" in scripts.source("submit_task")
    key_tags.use_tag("")
    assert keys.AGENTS_ACTIVE == "agents:active" and keys.agent("a") == "agent:a"
    assert "'agents:available'" in scripts.source("heartbeat")
    assert tagged not in scripts.source("heartbeat")
    assert "redis.call('PUBLISH'" in scripts.source("submit_task")


def test_one_tag_is_one_slot():
    assert key_tags.slot_of("aitbc") == 11373  # CLUSTER KEYSLOT {aitbc}x on a real cluster
    with pytest.raises(ValueError):
        key_tags.use_tag("a}b")


def python_files() -> Iterator[Path]:
    for folder in ("src", "bench", "tests"):
        yield from (ROOT / folder).rglob("*.py")


def test_no_module_keeps_a_copy_of_a_key_name():
    copies = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "coordinator.storage.keys":
                copies.append(f"{path.relative_to(ROOT)}: {[a.name for a in node.names]}")
    assert copies == [], "import the keys module, not its names (they change with the tag)"
