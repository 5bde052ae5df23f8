"""What a benchmark run prints and writes: the table of figures (median, min–max of the
runs), the targets met or not, and one JSON per scenario plus a summary in bench/results/."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cluster
import flood
import many_agents
import spread
import tls_cost
import watchers
from harness import Plan
from processes import REPO
from targets import UNARY_RATE

UNARY_PREFIXES = ("drain_unary", "relay_drain_unary", "latency_unary", "floor_unary")
UNARY_PATH = {
    "agent_mode": "raw",
    "agent_report": "unary",
    "latency_client": "unary",
    "submit_batch": 1,
}
"""What the unary scenarios' JSON says of their clients (run_benchmarks.unary_path)."""
Row = tuple[str, str, str]
"""(scenario title, figure, value) as printed."""


def fmt(agg: dict[str, Any], name: str, digits: int = 1) -> str:
    """A figure's median with its min–max over the runs ("-" when not measured)."""
    entry = agg.get(name)
    if entry is None:
        return "-"
    if entry["min"] == entry["max"]:
        return f"{entry['median']:.{digits}f}"
    return f"{entry['median']:.{digits}f} ({entry['min']:.{digits}f}–{entry['max']:.{digits}f})"


def percentiles(agg: dict[str, Any], what: str) -> str:
    """p50 / p90 / p99 / max of a latency figure, in ms."""
    return " / ".join(fmt(agg, f"{what}.{p}_ms", 2) for p in ("p50", "p90", "p99", "max"))


def cpu_rows(title: str, agg: dict[str, Any]) -> list[Row]:
    """The CPU time a task cost the nodes and Redis (absent from older results)."""
    if "coordinator_cpu_us_per_task" not in agg:
        return []
    value = f"{fmt(agg, 'coordinator_cpu_us_per_task', 0)} / {fmt(agg, 'redis_cpu_us_per_task', 0)}"
    return [(title, "CPU µs per task: nodes / Redis", value)]


def batching_rows(title: str, agg: dict[str, Any]) -> list[Row]:
    """Tasks per submit call or message, assignments message and report call or message
    (absent from older results)."""
    if "tasks_per_call.submit" not in agg:
        return []
    value = " / ".join(
        fmt(agg, f"tasks_per_call.{m}") for m in ("submit", "stream_message", "report")
    )
    return [(title, "tasks per call or message: submit / assignments / report", value)]


def drain_rows(title: str, agg: dict[str, Any]) -> list[Row]:
    """A drain's rows (the coordinator's, on one or two nodes, and arq's)."""
    rows = [
        (title, "submit rate, tasks/s", fmt(agg, "submit_per_s", 0)),
        (title, "completion rate, tasks/s", fmt(agg, "completed_per_s", 0)),
    ]
    if "submit_to_completed.p50_ms" in agg:
        rows.append((title, "submit→completed p50 ms", fmt(agg, "submit_to_completed.p50_ms")))
    rows.append((title, "Redis commands per task", fmt(agg, "redis_commands_per_task.total")))
    if "redis_bytes_per_finished_task" in agg:  # absent from arq's and older results
        rows.append(
            (title, "Redis bytes per finished task", fmt(agg, "redis_bytes_per_finished_task", 0))
        )
    if "dispatch_turn_waits" in agg:  # absent from arq's and older results
        waits = (
            f"{fmt(agg, 'dispatch_turn_waits', 0)} / {fmt(agg, 'dispatch_turn_wait_ms_total', 0)}"
        )
        rows.append((title, "requests that waited for a turn / their total wait ms", waits))
    return rows + cpu_rows(title, agg) + batching_rows(title, agg)


def latency_rows(title: str, agg: dict[str, Any]) -> list[Row]:
    """A steady-rate run's rows."""
    rows = []
    for what, label in (
        ("submit_to_reply", "submit reply"),
        ("submit_to_assigned", "assigned"),
        ("submit_to_completed", "completed"),
    ):
        if f"{what}.p50_ms" in agg:  # absent from older results
            rows.append((title, f"submit→{label} p50/p90/p99/max ms", percentiles(agg, what)))
    rows.append((title, "Redis commands per task", fmt(agg, "redis_commands_per_task.total")))
    rows += cpu_rows(title, agg) + batching_rows(title, agg)
    rows.append((title, "achieved completion rate, tasks/s", fmt(agg, "completed_per_s", 0)))
    rows.append((title, "submits refused (of rate × duration)", fmt(agg, "submits_refused", 0)))
    return rows


def floor_rows(title: str, agg: dict[str, Any]) -> list[Row]:
    """The gRPC floor's rows (the relay in place of a node)."""
    return [
        (title, "submit→submit reply p50/p90/p99/max ms", percentiles(agg, "submit_to_reply")),
        (title, "submit→assigned p50/p90/p99/max ms", percentiles(agg, "submit_to_assigned")),
        (title, "CPU µs per task: relay", fmt(agg, "relay_cpu_us_per_task", 0)),
    ]


def relay_drain_rows(title: str, agg: dict[str, Any]) -> list[Row]:
    """The drain through the relay: its rate and what the calls alone cost a server."""
    return [
        (title, "completion rate, tasks/s", fmt(agg, "completed_per_s", 0)),
        (title, "CPU µs per task: relay", fmt(agg, "relay_cpu_us_per_task", 0)),
        *batching_rows(title, agg),
    ]


def discovery_rows(title: str, agg: dict[str, Any]) -> list[Row]:
    """Scenario 4's rows."""
    rows = [
        (title, "DiscoverAgents p50 ms", fmt(agg, "discover_sequential.p50_ms", 2)),
        (title, "DiscoverAgents p99 ms", fmt(agg, "discover_sequential.p99_ms", 2)),
    ]
    if "health_check.p50_ms" in agg:
        floor = " / ".join(fmt(agg, f"health_check.{p}_ms", 2) for p in ("p50", "p99"))
        rows.append((title, "gRPC floor: Health/Check p50 / p99 ms", floor))
    before = agg["coordinator_rss_kib.before_register"]["median"] / 1024
    after = agg["coordinator_rss_kib.after_register"]["median"] / 1024
    label = "coordinator RSS MiB (before → after registering)"
    return [*rows, (title, label, f"{before:.1f} → {after:.1f}")]


def streams_rows(title: str, agg: dict[str, Any]) -> list[Row]:
    """Scenario 5's rows."""
    idle = agg["coordinator_rss_kib.idle_node"]["median"] / 1024
    connected = agg["coordinator_rss_kib.agents_connected"]["median"] / 1024
    return [
        (title, "coordinator RSS MiB (idle → agents connected)", f"{idle:.1f} → {connected:.1f}"),
        (title, "memory per connected agent, KiB", fmt(agg, "memory_per_agent_kib")),
        (title, "deliver one task to each agent, s", fmt(agg, "deliver_one_each_s", 2)),
    ]


def celery_rows(title: str, agg: dict[str, Any]) -> list[Row]:
    """The Celery baseline's rows: its drain, and enqueue → started at the steady rate."""
    return [
        (title, "completion rate, tasks/s", fmt(agg, "completed_per_s", 0)),
        (title, "submit→completed p50 ms", fmt(agg, "submit_to_completed.p50_ms")),
        (
            title,
            f"steady {UNARY_RATE}/s: submit→started p50/p90/p99/max ms",
            percentiles(agg, "steady.submit_to_started"),
        ),
    ]


def echo_rows(title: str, agg: dict[str, Any]) -> list[Row]:
    """The echo's rows: server CPU per call, calls/s and round trips, by calls in flight."""
    rows = []
    for phase in ("concurrent", "sequential"):
        label = f"{fmt(agg, f'{phase}.in_flight', 0)} in flight"
        rows.append(
            (
                title,
                f"{label}: server CPU µs per call",
                fmt(agg, f"{phase}.server_cpu_us_per_call", 0),
            )
        )
        rows.append((title, f"{label}: calls/s", fmt(agg, f"{phase}.calls_per_s", 0)))
        trips = " / ".join(fmt(agg, f"{phase}.round_trip.{p}_ms", 2) for p in ("p50", "p99"))
        rows.append((title, f"{label}: round trip p50 / p99 ms", trips))
    return rows


ROWS_BY_PREFIX: tuple[tuple[str, Callable[[str, dict[str, Any]], list[Row]]], ...] = (
    ("drain", drain_rows),
    ("two_nodes", drain_rows),
    ("arq", drain_rows),
    ("celery", celery_rows),
    ("echo", echo_rows),
    ("latency", latency_rows),
    ("floor", floor_rows),
    ("relay_drain", relay_drain_rows),
    ("discovery", discovery_rows),
    ("streams", streams_rows),
    ("spread", lambda title, agg: spread.table_rows(title, agg, fmt)),
    ("flood", lambda title, agg: flood.table_rows(title, agg, fmt)),
    ("watchers", lambda title, agg: watchers.table_rows(title, agg, fmt)),
    ("tls", lambda title, agg: tls_cost.table_rows(title, agg, fmt)),
    ("many_agents", lambda title, agg: many_agents.table_rows(title, agg, fmt)),
    ("cluster", lambda title, agg: cluster.table_rows(title, agg, fmt)),
)
"""Each scenario's rows, by the start of its key (drain_unary, latency_200 ...)."""


def table_rows(results: dict[str, dict[str, Any]]) -> list[Row]:
    """(scenario, figure, value) rows of the printed table and the README."""
    rows: list[Row] = []
    for key, result in results.items():
        for prefix, rows_of in ROWS_BY_PREFIX:
            if key.startswith(prefix):
                rows.extend(rows_of(result["title"], result["aggregate"]))
                break
    return rows


def print_table(rows: list[Row], checks: list[dict[str, Any]]) -> None:
    """The figures, then each target met or not (with the figures it compares)."""
    width = max(len(r[0]) for r in rows) if rows else 10
    fig_width = max(len(r[1]) for r in rows) if rows else 10
    print("\nmedian (min–max) of the runs")
    for scenario, figure, value in rows:
        print(f"  {scenario:<{width}}  {figure:<{fig_width}}  {value}")
    print("\ntargets")
    for c in checks:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[c["met"]]
        measured = "-" if c["measured"] is None else f"{c['measured']:g} {c['unit']}"
        floor = f"  (gRPC floor, same run: {c['grpc_floor']:g} ms)" if "grpc_floor" in c else ""
        basis = f"  ({c['basis']})" if c.get("basis") else ""
        print(f"  {c['target']:<44} {measured:>16}  {verdict}{floor}{basis}")


def environment() -> dict[str, Any]:
    """The machine, the versions and the commit the figures come from."""

    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return "?"

    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.partition(":")[2].strip()
            break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "grpcio": importlib.metadata.version("grpcio"),
        "redis_server": version(["redis-server", "--version"]),
        "git_commit": version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "src_uncommitted_changes": bool(
            version(["git", "-C", str(REPO), "status", "--short", "src"])
        ),
        "load_average_1m_at_start": os.getloadavg()[0],
    }


def write_results(
    args: argparse.Namespace,
    argv: list[str] | None,
    plan: Plan,
    env: dict[str, Any],
    results: dict[str, dict[str, Any]],
    summary: dict[str, Any],
) -> None:
    """One JSON per scenario and the summary (``*.quick.json`` with --quick) in the
    output directory, each with the command, the clients and the environment."""
    suffix = ".quick.json" if args.quick else ".json"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    common = {
        "command": " ".join(["python", "bench/run_benchmarks.py", *(argv or sys.argv[1:])]),
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "agent_mode": args.agent_mode,
        "agent_report": args.agent_report if args.agent_mode == "raw" else None,
        "drain_client": args.drain_client,
        "latency_client": args.latency_client,
        "coordinator_log_level": args.log_level,
        "plan": plan.__dict__,
        "environment": env,
    }
    for key, result in results.items():
        path = args.output_dir / f"{key}{suffix}"
        # The unary scenarios took the unary path whatever the flags said: say so.
        path_taken = UNARY_PATH if key.startswith(UNARY_PREFIXES) else {}
        data = {"scenario": key, **common, **path_taken, **result}
        path.write_text(json.dumps(data, indent=2) + "\n")
    (args.output_dir / f"summary{suffix}").write_text(
        json.dumps({**common, **summary}, indent=2) + "\n"
    )
