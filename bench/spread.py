"""Scenario 7 of ``make bench``: how evenly each balancing strategy spreads light work over
equal agents (issue 14, defect 11: with ties broken by agent id, least connections sent
99.6 % of the tasks to the three lowest ids).

One node, one agent process with 12 agents of 4 slots each (they complete every task at
once), and for each strategy in turn (set with SetBalancingStrategy) a submitter at a steady
100 tasks/s: most agents are idle at every choice, so what the strategy does with ties
shows. The tasks carry no routing key and no preferred capabilities: consistent_hash and
capability_based then fall back to least connections, as they do for such tasks in use.
Per strategy: the tasks each agent completed, the busiest agent's count over the mean (1.0
is perfectly even) and the coefficient of variation (standard deviation over the mean).

Registered in run_benchmarks.py (``--scenarios spread``); the figures come out in its table
and in ``spread[.quick].json``. Run as a script, it sets the strategy of a node (the harness
does so between strategies).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import grpc

from aitbc.coordinator.v1 import task_pb2, task_pb2_grpc

STRATEGIES = (
    "least_connections",
    "round_robin",
    "weighted_round_robin",
    "least_response_time",
    "resource_based",
    "capability_based",
    "predictive",
    "consistent_hash",
)
AGENTS = 12
MAX_CONCURRENCY = 4
RATE_PER_S = 100
SECONDS = 20.0
"""Per strategy: 2,000 tasks (--quick: 2 s, 200 tasks)."""
QUICK_SECONDS = 2.0


def title(quick: bool) -> str:
    seconds = QUICK_SECONDS if quick else SECONDS
    tasks = int(RATE_PER_S * seconds)
    return f"7. spread per strategy, {AGENTS} agents × {MAX_CONCURRENCY}, {tasks:,} tasks each"


def spread_figures(per_agent: dict[str, int]) -> dict[str, Any]:
    """The busiest agent over the mean, and the coefficient of variation."""
    counts = list(per_agent.values())
    mean = statistics.fmean(counts)
    return {
        "busiest_to_mean": round(max(counts) / mean, 3) if mean else 0.0,
        "cv": round(statistics.pstdev(counts) / mean, 3) if mean else 0.0,
        "tasks_per_agent": dict(sorted(per_agent.items())),
    }


def scenario_spread(bench: Any) -> dict[str, Any]:
    """One run over every strategy (``bench`` is run_benchmarks.Bench)."""
    seconds = QUICK_SECONDS if bench.args.quick else SECONDS
    (node,) = bench.start_nodes(1)
    submitted: dict[str, list[str]] = {}
    try:
        out = bench.start_agents(node.address, "spread", AGENTS, MAX_CONCURRENCY)
        bench.wait_ready([out], 60)
        total = 0
        for name in STRATEGIES:
            # SetBalancingStrategy from a child of its own: a gRPC channel in the harness's
            # process breaks the children it forks afterwards (they abort in epoll_wait).
            setter = bench.python_child("spread.py", ["--address", node.address, name])
            bench.wait_exit([setter], f"SetBalancingStrategy {name}", 30)
            submit_out = bench.next_path(f"spread-{name}")
            argv = ["--address", node.address, "--out", str(submit_out)]
            argv += ["--rate", str(RATE_PER_S), "--duration", str(seconds)]
            submitter = bench.python_child("load_submitter.py", argv)
            bench.wait_exit([submitter], f"the {name} submitter", 120)
            submitted[name] = [t for t, _, _ in _load(submit_out)["records"]]
            total += len(submitted[name])
            # Every task of this strategy done before the next strategy's first.
            bench.wait_counter("tasks_completed", total, 120)
        (agents,) = bench.agent_results([out])
    finally:
        bench.stop_run()
    completed_by = {task_id: agent for task_id, agent, _, done in agents["records"] if done}
    agent_ids = [f"spread-{i:05d}" for i in range(AGENTS)]
    strategies = {}
    for name, task_ids in submitted.items():
        missing = [t for t in task_ids if t not in completed_by]
        if missing:
            raise RuntimeError(f"{name}: {len(missing)} tasks never completed (e.g. {missing[0]})")
        per_agent = dict.fromkeys(agent_ids, 0)
        for task_id in task_ids:
            per_agent[completed_by[task_id]] += 1
        strategies[name] = {"tasks": len(task_ids), **spread_figures(per_agent)}
    return {"strategies": strategies, "errors": agents["errors"]}


def table_rows(title: str, agg: dict[str, Any], fmt: Any) -> list[tuple[str, str, str]]:
    """One row per strategy: busiest/mean and the coefficient of variation."""
    rows = []
    for name in STRATEGIES:
        prefix = f"strategies.{name}"
        value = f"{fmt(agg, f'{prefix}.busiest_to_mean', 2)} / {fmt(agg, f'{prefix}.cv', 2)}"
        rows.append((title, f"{name}: busiest/mean, CV", value))
    return rows


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def set_strategy(address: str, name: str) -> None:
    """SetBalancingStrategy on the node at ``address`` (the cluster's strategy)."""
    strategy = task_pb2.BalancingStrategy.Value(f"BALANCING_STRATEGY_{name.upper()}")
    with grpc.insecure_channel(address) as channel:
        task_pb2_grpc.TaskServiceStub(channel).SetBalancingStrategy(
            task_pb2.SetBalancingStrategyRequest(strategy=strategy), timeout=10
        )


def main() -> int:
    parser = argparse.ArgumentParser(description="Set the cluster's balancing strategy.")
    parser.add_argument("--address", required=True)
    parser.add_argument("strategy", choices=STRATEGIES)
    args = parser.parse_args()
    set_strategy(args.address, args.strategy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
