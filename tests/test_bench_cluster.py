"""`run_benchmarks.py --quick --scenarios cluster` (scenario 13, bench/cluster.py): three
coordinator clusters on a local 3-primary Redis Cluster, one per primary, draining at once,
then on one Redis; every task completed and the figures written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_bench_quick import run_quick


@pytest.mark.timeout(90)
def test_quick_benchmark_of_three_coordinator_clusters_on_a_redis_cluster(tmp_path: Path) -> None:
    stdout = run_quick(tmp_path, "--scenarios", "cluster", timeout_s=80)
    (run,) = json.loads((tmp_path / "cluster.quick.json").read_text())["runs"]
    on_cluster, on_one = run["cluster"], run["one_redis"]
    # One partition per primary: each shard held one partition's 300 tasks.
    assert sorted(on_cluster["shards"]) == ["primary-1", "primary-2", "primary-3"]
    assert all(s["tasks"] == 300 for s in on_cluster["shards"].values())
    assert sorted({on_cluster[f"part-{n}"]["shard"] for n in range(3)}) == sorted(
        on_cluster["shards"]
    )
    for layout in (on_cluster, on_one):
        assert layout["all"]["tasks"] == 900 and layout["all"]["completed_per_s"] > 0
        assert layout["all"]["redis_cpu_us_per_task"] > 0
        assert all(layout[f"part-{n}"]["errors"] == {} for n in range(3))
    assert on_one["shards"] == {"one-redis": on_one["shards"]["one-redis"]}
    assert "Redis Cluster: Redis CPU µs per task, all (per shard)" in stdout
