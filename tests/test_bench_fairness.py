"""`make bench ARGS=--quick --scenarios flood,watchers`: the fairness scenarios run end to
end and write figures that make sense (the full runs' figures are for the README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_bench_quick import run_quick


@pytest.mark.timeout(90)
def test_quick_flood_and_watchers_scenarios(tmp_path: Path) -> None:
    stdout = run_quick(tmp_path, "--scenarios", "flood,watchers", timeout_s=80)

    (flood,) = json.loads((tmp_path / "flood.quick.json").read_text())["runs"]
    assert flood["errors"] == {}
    assert flood["steady_tasks"] == flood["steady_rate_per_s"] * flood["duration_s"]
    assert flood["steady_submit_to_assigned"]["p50_ms"] > 0
    assert flood["flood_calls_accepted"] > 0
    assert flood["flood_tasks_accepted"] == 1000 * flood["flood_calls_accepted"]

    (watchers,) = json.loads((tmp_path / "watchers.quick.json").read_text())["runs"]
    assert watchers["errors"] == {}
    # One message each (the task as it is): the watched tasks never change.
    assert watchers["watch_messages"] == watchers["watchers"] == 100
    extra = (
        watchers["with_watchers"]["redis_commands_per_s"]
        - watchers["no_watchers"]["redis_commands_per_s"]
    )
    assert extra < watchers["watchers"] / 2, f"idle watchers cost {extra} Redis commands/s"
    assert "flood calls accepted / refused" in stdout
