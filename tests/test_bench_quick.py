"""`make bench ARGS=--quick`, minus the arq baseline (its venv is made by `make bench` only):
the harness must run each scenario end to end with every task completed, and write its JSON.

The harness itself fails a run (exit 1) when a submitted task never reaches an agent or never
completes, when an agent of the many-streams scenario does not get exactly one task, or when
a coordinator node exits early; these tests also check the figures it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = "drain,latency,floor,two_nodes,discovery,streams"


def run_quick(tmp_path: Path, *options: str, timeout_s: float = 110) -> str:
    """``run_benchmarks.py --quick`` with ``options``, JSON to ``tmp_path``: its output."""
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "run_benchmarks.py"),
            "--quick",
            *options,
            "--output-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout


def assert_task_run(key: str, run: dict[str, Any]) -> None:
    """One run of a drain or steady-rate scenario: every task completed, figures sane."""
    assert run["errors"] == {}, f"{key}: {run['errors']}"
    assert sum(run["tasks_per_agent"].values()) == run["tasks"], key
    assert run["completed_per_s"] > 0, key
    assert run["submit_to_completed"]["p50_ms"] >= run["submit_to_assigned"]["p50_ms"], key
    assert run["redis_commands_per_task"]["total"] > 0, key
    # Calls and stream messages were counted: a call or message carries at least one task.
    assert all(v >= 1 for v in run["tasks_per_call"].values()), f"{key}: {run['tasks_per_call']}"


@pytest.mark.timeout(120)
def test_quick_benchmark_completes_every_task(tmp_path: Path) -> None:
    stdout = run_quick(tmp_path, "--scenarios", SCENARIOS)

    for key in ("drain", "latency_200", "two_nodes"):
        result = json.loads((tmp_path / f"{key}.quick.json").read_text())
        # The defaults: SubmitTasks calls in drains, streams for the rest.
        assert (result["drain_client"], result["latency_client"]) == ("calls", "stream")
        assert result["agent_report"] == "stream"
        (run,) = result["runs"]
        assert_task_run(key, run)
    (two_nodes,) = json.loads((tmp_path / "two_nodes.quick.json").read_text())["runs"]
    assert len(two_nodes["coordinator_rss_kib"]) == 2, "scenario 3 must run two nodes"

    (floor,) = json.loads((tmp_path / "floor_200.quick.json").read_text())["runs"]
    assert floor["errors"] == {}
    assert floor["submit_to_assigned"]["p50_ms"] > 0 and floor["relay_cpu_us_per_task"] > 0

    (streams,) = json.loads((tmp_path / "streams.quick.json").read_text())["runs"]
    assert streams["errors"] == {}
    assert streams["memory_per_agent_kib"] > 0
    (discovery,) = json.loads((tmp_path / "discovery.quick.json").read_text())["runs"]
    assert discovery["discover_sequential"]["p99_ms"] > 0

    summary = json.loads((tmp_path / "summary.quick.json").read_text())
    measured = {t["target"]: t["met"] for t in summary["targets"]}
    # arq was not run and --quick has no 1,000/s run: those two alone are "not measured".
    assert [name for name, met in measured.items() if met is None] == [
        "drain ≥ 1.2× arq",
        "submit→assigned p99 ≤ 20 ms at 1000/s",
    ]
    (at_200,) = [t for t in summary["targets"] if t["target"].endswith("at 200/s")]
    assert at_200["grpc_floor"] > 0  # the floor of the same run, beside the target
    assert "median (min–max) of the runs" in stdout


@pytest.mark.timeout(60)
def test_quick_benchmark_with_the_other_clients(tmp_path: Path) -> None:
    """The clients that are not the defaults: StreamSubmitTasks in the drain, SubmitTasks
    calls at the steady rate, ReportTasks calls from the agents."""
    options = ("--drain-client", "stream", "--latency-client", "coalesce")
    run_quick(
        tmp_path, "--scenarios", "drain,latency", *options, "--agent-report", "batch", timeout_s=50
    )
    for key in ("drain", "latency_200"):
        result = json.loads((tmp_path / f"{key}.quick.json").read_text())
        assert (result["drain_client"], result["latency_client"]) == ("stream", "coalesce")
        assert result["agent_report"] == "batch"
        (run,) = result["runs"]
        assert_task_run(key, run)


@pytest.mark.timeout(90)
def test_quick_benchmark_of_tls_and_token_cost(tmp_path: Path) -> None:
    """Scenario 10: the drain and 200/s in plaintext and with TLS + a bearer token, each
    with every task completed, and the two targets computed."""
    stdout = run_quick(tmp_path, "--scenarios", "tls", timeout_s=80)
    (run,) = json.loads((tmp_path / "tls.quick.json").read_text())["runs"]
    for mode in ("plaintext", "tls_token"):
        for what in ("drain", "latency"):
            assert run[mode][what]["errors"] == {}, (mode, what)
            assert run[mode][what]["completed_per_s"] > 0, (mode, what)
            assert run[mode][what]["submit_to_assigned"]["p99_ms"] > 0, (mode, what)
    assert isinstance(run["drain_throughput_drop_pct"], float)
    summary = json.loads((tmp_path / "summary.quick.json").read_text())
    measured = {t["target"]: t["measured"] for t in summary["targets"]}
    assert measured["TLS + token: drain ≤ 15 % slower"] == run["drain_throughput_drop_pct"]
    assert measured["TLS + token: 200/s p99 ≤ +0.3 ms"] == run["p99_increase_ms"]
    assert "TLS + token: drain completion rate" in stdout


@pytest.mark.timeout(60)
def test_quick_benchmark_of_many_agents(tmp_path: Path) -> None:
    """Scenario 12 (issue 18): one task to each of 4 and then 40 agents over 2 nodes (the
    harness fails the run unless each gets exactly one), then the drain beside them, every
    task completed; issue 18's three targets computed."""
    run_quick(tmp_path, "--scenarios", "many_agents", timeout_s=50)
    (run,) = json.loads((tmp_path / "many_agents.quick.json").read_text())["runs"]
    assert sorted(run) == ["agents_4", "agents_40"]
    for key, figures in run.items():
        each, drain = figures["one_each"], figures["drain"]
        assert each["errors"] == {} and drain["errors"] == {}, key
        assert each["assignments_per_s"] > 0 and each["redis_commands_per_task"]["total"] > 0
        assert drain["tasks"] == 1000 and drain["completed_per_s"] > 0, key
    summary = json.loads((tmp_path / "summary.quick.json").read_text())
    measured = {t["target"]: t["measured"] for t in summary["targets"]}
    assert (
        measured["one task to each of 40 agents ≤ 2 s"]
        == (run["agents_40"]["one_each"]["first_submit_to_last_assigned_s"])
    )
    assert measured["drain with 40 agents ≥ 70 % of with 4"] is not None
