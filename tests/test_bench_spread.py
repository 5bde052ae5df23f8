"""`make bench`'s spread scenario (bench/spread.py) in its --quick size: every strategy runs
end to end with every task completed, and the figures it writes are those of its table.
With 200 tasks per strategy the spread of the strategies that break ties by the task's hash
is noisy (a fair die gives about 1.4x the mean), so the bound here is loose; the rotating
strategies are exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_bench_quick import run_quick

SHARING = ("least_connections", "resource_based", "capability_based", "consistent_hash")
"""Strategies that, among idle agents without measurements or preferences, only tie."""


@pytest.mark.timeout(120)
def test_quick_spread_runs_every_strategy_and_reports_its_spread(tmp_path: Path) -> None:
    stdout = run_quick(tmp_path, "--scenarios", "spread")

    (run,) = json.loads((tmp_path / "spread.quick.json").read_text())["runs"]
    strategies = run["strategies"]
    assert len(strategies) == 8
    for name, figures in strategies.items():
        per_agent = figures["tasks_per_agent"]
        assert len(per_agent) == 12 and sum(per_agent.values()) == figures["tasks"] >= 150, name
        mean = figures["tasks"] / 12
        assert figures["busiest_to_mean"] == round(max(per_agent.values()) / mean, 3), name
        assert f"{name}: busiest/mean, CV" in stdout
    for name in ("round_robin", "weighted_round_robin"):
        assert strategies[name]["busiest_to_mean"] <= 1.1, name
    for name in SHARING:  # ties by agent id gave about 12 (one agent took nearly all)
        assert strategies[name]["busiest_to_mean"] <= 2.0, (name, strategies[name])
