"""Issue 17's unary path in `make bench` (--quick, without the arq and Celery baselines,
whose venvs only `make bench` makes): in one run the batched drain keeps its batches while
the unary scenarios really send one SubmitTask per task and one CompleteTask per result, the
bare echo measures its server's CPU per call, and the unary targets are computed from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_bench_quick import assert_task_run, run_quick


@pytest.mark.timeout(200)
def test_quick_unary_path_beside_the_batched_one(tmp_path: Path) -> None:
    scenarios = "drain,unary_drain,unary_drain_floor,unary_latency,unary_floor,echo"
    stdout = run_quick(tmp_path, "--scenarios", scenarios, timeout_s=190)

    (batched,) = json.loads((tmp_path / "drain.quick.json").read_text())["runs"]
    assert_task_run("drain", batched)
    assert batched["tasks_per_call"]["submit"] > 1  # --quick's SubmitTasks ×50, untouched
    for key in ("drain_unary", "latency_unary_200"):
        (run,) = json.loads((tmp_path / f"{key}.quick.json").read_text())["runs"]
        assert_task_run(key, run)
        assert json.loads((tmp_path / f"{key}.quick.json").read_text())["agent_report"] == "unary"
        # One task per SubmitTask and per CompleteTask: the unary path was taken.
        assert run["tasks_per_call"]["submit"] == 1.0, (key, run["tasks_per_call"])
        assert run["tasks_per_call"]["report"] == 1.0, (key, run["tasks_per_call"])
    # The same clients' drain through the relay: the ceiling of the unary path.
    (relay,) = json.loads((tmp_path / "relay_drain_unary.quick.json").read_text())["runs"]
    assert relay["errors"] == {} and relay["completed_per_s"] > 0
    assert relay["relay_cpu_us_per_task"] > 0
    assert relay["tasks_per_call"]["submit"] == 1.0 and relay["tasks_per_call"]["report"] == 1.0
    (floor,) = json.loads((tmp_path / "floor_unary_200.quick.json").read_text())["runs"]
    assert floor["errors"] == {} and floor["submit_to_assigned"]["p99_ms"] > 0

    (echo,) = json.loads((tmp_path / "echo.quick.json").read_text())["runs"]
    assert echo["concurrent"]["in_flight"] > 1 and echo["sequential"]["in_flight"] == 1
    for phase in ("concurrent", "sequential"):
        assert echo[phase]["server_cpu_us_per_call"] > 0, phase
        assert echo[phase]["calls"] > 0, phase

    summary = json.loads((tmp_path / "summary.quick.json").read_text())
    met = {t["target"]: t["met"] for t in summary["targets"]}
    # Measured in this run: the floor ratio and the CPU ratio; arq and Celery did not run.
    assert met["unary 200/s assigned p99 ≤ 1.5× floor"] is not None
    assert met["node CPU per unary task ≤ 2.5× echo"] is not None
    assert met["unary drain ≥ 1.5× arq"] is None
    assert met["unary 200/s assigned p99 < Celery p99"] is None
    (cpu,) = [t for t in summary["targets"] if t["target"].startswith("node CPU")]
    (unary,) = json.loads((tmp_path / "drain_unary.quick.json").read_text())["runs"]
    expected = round(
        unary["coordinator_cpu_us_per_task"] / echo["concurrent"]["server_cpu_us_per_call"], 2
    )
    assert cpu["measured"] == expected
    assert "node CPU per unary task ≤ 2.5× echo" in stdout
    assert f"relay tasks per s {relay['completed_per_s']:g}" in stdout
    assert "1 in flight: server CPU µs per call" in stdout
