"""The capacity scenarios: many connected agents on one node (5) and discovery among many
registered agents (4, bench/discovery_scale.py with its own Redis and node)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from figures import commands_per_task, join_times, latency_summary, load, redis_commands
from harness import BENCH, Bench, submitter_argv
from processes import rss_kib


def scenario_streams(bench: Bench) -> dict[str, Any]:
    """Many idle agents, each holding a stream (max_concurrency 1, holding its task): the
    coordinator's memory per connected agent, then one task delivered to each."""
    plan = bench.plan
    agents = plan.stream_agents
    (node,) = bench.start_nodes(1)
    try:
        time.sleep(0.5)  # let the node's start-up allocations settle before the baseline
        rss_idle = rss_kib(node.pid)["VmRSS"]
        per_process = agents // plan.stream_processes
        outs = [
            bench.start_agents(
                node.address, f"s{i}", per_process, max_concurrency=1, hold=True, expect=per_process
            )
            for i in range(plan.stream_processes)
        ]
        bench.wait_ready(outs, 180)
        rss_connected = rss_kib(node.pid)["VmRSS"]
        admin = bench.coordinator_db()
        admin.config_resetstat()
        out = bench.next_path("submitter")
        submitter = bench.python_child(
            "load_submitter.py",
            submitter_argv(node.address, out, count=agents, in_flight=plan.in_flight),
        )
        bench.wait_exit([submitter], "the submitter", 300)
        bench.wait_counter("tasks_distributed", agents, 300)
        commands = redis_commands(admin)
        admin.close()
        # Assigned is not yet received: wait until every agent process has all its tasks.
        bench.wait_files([Path(f"{o}.received") for o in outs], "one task per agent", 120)
        rss_delivered = rss_kib(node.pid)
        agent_reports = bench.agent_results(outs)
    finally:
        bench.stop_run()
    submits = load(out)
    submitted, received, errors = join_times([submits], agent_reports)
    if len(received) != agents:
        raise RuntimeError(f"{len(received)} of {agents} tasks reached an agent")
    holders = {agent for agent, _, _ in received.values()}
    if len(holders) != agents:
        raise RuntimeError(f"{agents} tasks went to {len(holders)} agents, not one each")
    last_received = max(r for _, r, _ in received.values())
    return {
        "agents": agents,
        "coordinator_rss_kib": {
            "idle_node": rss_idle,
            "agents_connected": rss_connected,
            "after_delivery": rss_delivered["VmRSS"],
            "peak": rss_delivered["VmHWM"],
        },
        "memory_per_agent_kib": round((rss_connected - rss_idle) / agents, 1),
        "deliver_one_each_s": round((last_received - submits["started_ns"]) / 1e9, 3),
        "submit_to_assigned": latency_summary(
            [(received[t][1] - s) / 1e6 for t, s in submitted.items()]
        ),
        "redis_commands_per_task": commands_per_task(commands, agents),
        "errors": errors,
    }


def scenario_discovery(bench: Bench) -> dict[str, Any]:
    """bench/discovery_scale.py (its own Redis and node), one run."""
    plan = bench.plan
    out = bench.next_path("discovery")
    argv = [
        sys.executable,
        str(BENCH / "discovery_scale.py"),
        "--agents",
        str(plan.discovery_agents),
        "--calls",
        str(plan.discovery_calls),
        "--warmup",
        str(min(200, plan.discovery_calls)),
        "--log-level",
        bench.args.log_level,
        "--output",
        str(out),
    ]
    completed = subprocess.run(argv, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"discovery_scale.py failed:\n{completed.stderr[-2000:]}")
    report = load(out)["results"]
    seq = report["discover_sequential"]
    return {
        "agents": plan.discovery_agents,
        "discover_sequential": {k: seq[k] for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")},
        "discover_parallel_calls_per_s": report["discover_parallel"]["calls_per_s"],
        # The gRPC floor on this machine, measured alongside: a Health/Check round trip.
        "health_check": {k: report["baseline_health_check"][k] for k in ("p50_ms", "p99_ms")},
        "coordinator_rss_kib": {
            "before_register": report["coordinator_rss_kb"]["before_register"],
            "after_register": report["coordinator_rss_kb"]["after_register"],
        },
    }
