#!/usr/bin/env python3
"""The task benchmarks (issues 5 and 17): drain throughput, latency under load, two nodes,
discovery at scale, many streams, the same drain through arq and Celery as baselines, how
evenly each balancing strategy spreads light work (bench/spread.py), and the unary path
(one SubmitTask per task, one CompleteTask per result) against arq, Celery, its gRPC floor
and a bare grpc.aio echo.

Starts its own redis-server (free loopback port, no persistence; db 1 for the coordinator,
db 2 for arq, db 3 for Celery), coordinator nodes (``python -m coordinator serve``), agent
processes (bench/load_agent.py), submitter processes (bench/load_submitter.py), the arq and
Celery workers and submitters (bench/arq_baseline.py and bench/celery_baseline.py, with
.venv/bench-arq's and .venv/bench-celery's interpreters) and the echo server and client
(bench/grpc_echo.py). Every figure is the median of ``--runs`` runs (3) with their min and
max. Prints a table, writes one JSON per scenario and a summary with every target met or
not to bench/results/.

The drains submit through SubmitTasks, 100 tasks per call, 4 calls at once
(``--drain-client stream``: messages of 100 tasks on 4 StreamSubmitTasks streams, one
message in flight on each; ``--submit-batch 1``: one SubmitTask per task); the steady-rate
runs send each task when it falls due, in one message of a StreamSubmitTasks stream with
whatever else fell due while the previous message was out (``--latency-client
coalesce``: SubmitTasks calls instead, 2 at most at once; ``unary``: one SubmitTask per
task). The agents report their completions as messages of one StreamReportTasks stream
each (``--agent-report batch``: ReportTasks calls; ``unary``: CompleteTask) and take
several assignments per stream message (bench/load_agent.py). The ``unary_*`` scenarios
always take the unary path (``--submit-batch 1 --latency-client unary --agent-report
unary``), whatever those flags say, so one run has both paths.

    make bench                       # everything
    make bench ARGS=--quick          # a smoke run: small counts, one run each
    make bench ARGS="--scenarios unary"   # issue 17's targets: the unary path, both paths' figures
    python bench/run_benchmarks.py --scenarios drain,arq --runs 1

Every child is stopped at the end, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cluster
import flood
import many_agents
import spread
import tls_cost
import watchers
from baselines import scenario_arq, scenario_celery, scenario_echo
from capacity import scenario_discovery, scenario_streams
from figures import aggregate
from harness import FULL, QUICK, RESULTS_DIR, Bench, Stop
from processes import REPO, RedisServer
from report import environment, print_table, table_rows, write_results
from targets import UNARY_RATE, targets
from task_runs import (
    scenario_drain,
    scenario_drain_floor,
    scenario_floor,
    scenario_latency,
    submits_title,
)

SCENARIOS = (
    "drain",
    "latency",
    "floor",
    "two_nodes",
    "discovery",
    "streams",
    "spread",
    "arq",
    "flood",
    "watchers",
    "tls",
    "unary_drain",
    "unary_drain_floor",
    "unary_latency",
    "unary_floor",
    "celery",
    "echo",
    "many_agents",
    "cluster",
)
SCENARIO_SETS = {
    "unary": (
        "drain",
        "unary_drain",
        "unary_drain_floor",
        "arq",
        "celery",
        "latency",
        "unary_latency",
        "floor",
        "unary_floor",
        "echo",
    ),
}
"""Named sets for --scenarios: ``unary`` is issue 17's targets with the batched figures
beside them (its steady rates are 200/s alone unless --rates says otherwise)."""

Job = tuple[str, str, Callable[[], dict[str, Any]]]
"""(result key, title, one run)."""


@contextlib.contextmanager
def unary_path(bench: Bench) -> Iterator[None]:
    """Within: one SubmitTask per task, one CompleteTask per result (raw agents), whatever
    the command line chose for the other scenarios."""
    args, plan = bench.args, bench.plan
    saved = (args.agent_mode, args.agent_report, args.latency_client, plan.submit_batch)
    args.agent_mode, args.agent_report, args.latency_client = "raw", "unary", "unary"
    plan.submit_batch = 1
    try:
        yield
    finally:
        args.agent_mode, args.agent_report, args.latency_client, plan.submit_batch = saved


def on_unary_path(bench: Bench, run: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """``run`` taken on the unary path."""

    def unary_run() -> dict[str, Any]:
        with unary_path(bench):
            return run()

    return unary_run


def task_jobs(bench: Bench, chosen: list[str]) -> list[Job]:
    """The drains, the steady rates and their floors, the baselines, in the order run."""
    plan = bench.plan
    agents = f"{plan.drain_agents} agents"
    jobs: list[Job] = []
    if "drain" in chosen:
        title = f"1. drain, 1 node, {agents}{submits_title(bench)}"
        jobs.append(("drain", title, lambda: scenario_drain(bench, 1)))
    if "unary_drain" in chosen:
        title = f"1u. drain, 1 node, {agents}, unary: SubmitTask, CompleteTask"
        jobs.append(("drain_unary", title, on_unary_path(bench, lambda: scenario_drain(bench, 1))))
    if "unary_drain_floor" in chosen:
        title = f"1uf. drain through the relay (no Redis), {agents}, unary"
        run = on_unary_path(bench, lambda: scenario_drain_floor(bench))
        jobs.append(("relay_drain_unary", title, run))
    if "arq" in chosen:
        jobs.append(("arq", "6. arq baseline, 1 worker", lambda: scenario_arq(bench)))
    if "celery" in chosen:
        title = "6c. Celery baseline, 1 solo worker"
        jobs.append(("celery", title, lambda: scenario_celery(bench)))
    for rate in plan.rates if "latency" in chosen else ():
        title = f"2. steady {rate}/s for {plan.steady_s:g} s"
        jobs.append((f"latency_{rate}", title, lambda r=rate: scenario_latency(bench, r)))
    if "unary_latency" in chosen:
        title = f"2u. steady {UNARY_RATE}/s for {plan.steady_s:g} s, unary"
        run = on_unary_path(bench, lambda: scenario_latency(bench, UNARY_RATE))
        jobs.append((f"latency_unary_{UNARY_RATE}", title, run))
    for rate in plan.rates if "floor" in chosen else ():
        title = f"2f. gRPC floor {rate}/s (relay, no Redis)"
        jobs.append((f"floor_{rate}", title, lambda r=rate: scenario_floor(bench, r)))
    if "unary_floor" in chosen:
        title = f"2uf. gRPC floor {UNARY_RATE}/s, unary (relay, no Redis)"
        run = on_unary_path(bench, lambda: scenario_floor(bench, UNARY_RATE))
        jobs.append((f"floor_unary_{UNARY_RATE}", title, run))
    if "echo" in chosen:
        title = "11. bare grpc.aio unary echo"
        jobs.append(("echo", title, lambda: scenario_echo(bench)))
    return jobs


def other_jobs(bench: Bench, chosen: list[str]) -> list[Job]:
    """Two nodes, capacity, spread, fairness and transport security, in the order run."""
    plan = bench.plan
    jobs: list[Job] = []
    if "two_nodes" in chosen:
        title = f"3. drain, 2 nodes, {plan.drain_agents} agents{submits_title(bench)}"
        jobs.append(("two_nodes", title, lambda: scenario_drain(bench, 2)))
    if "discovery" in chosen:
        title = f"4. discovery, {plan.discovery_agents:,} agents"
        jobs.append(("discovery", title, lambda: scenario_discovery(bench)))
    if "streams" in chosen:
        title = f"5. {plan.stream_agents:,} streams, 1 node"
        jobs.append(("streams", title, lambda: scenario_streams(bench)))
    if "spread" in chosen:
        jobs.append(
            ("spread", spread.title(bench.args.quick), lambda: spread.scenario_spread(bench))
        )
    if "flood" in chosen:
        title = "8. one heavy client: SubmitTasks flood beside 100/s"
        jobs.append(("flood", title, lambda: flood.scenario_flood(bench)))
    if "watchers" in chosen:
        title = "9. idle WatchTask streams, 1 node"
        jobs.append(("watchers", title, lambda: watchers.scenario_watchers(bench)))
    if "many_agents" in chosen:
        title = many_agents.title(bench)
        jobs.append(("many_agents", title, lambda: many_agents.scenario_many_agents(bench)))
    if "cluster" in chosen:
        jobs.append(("cluster", cluster.title(bench), lambda: cluster.scenario_cluster(bench)))
    if "tls" in chosen:

        def tls() -> dict[str, Any]:
            return tls_cost.scenario_tls(bench, scenario_drain, scenario_latency)

        jobs.append(("tls", tls_cost.title(plan), tls))
    return jobs


def run_scenarios(bench: Bench, chosen: list[str]) -> dict[str, dict[str, Any]]:
    """Each chosen scenario, ``plan.runs`` times: its runs and their aggregate, by key."""
    results: dict[str, dict[str, Any]] = {}
    for key, title, job in task_jobs(bench, chosen) + other_jobs(bench, chosen):
        runs = []
        for i in range(bench.plan.runs):
            print(f"{title}: run {i + 1}/{bench.plan.runs} ...", flush=True)
            started = time.monotonic()
            runs.append(job())
            print(f"  done in {time.monotonic() - started:.1f} s", flush=True)
        results[key] = {"title": title, "runs": runs, "aggregate": aggregate(runs)}
    return results


def add_baseline_options(parser: argparse.ArgumentParser) -> None:
    """The interpreters of the arq and Celery baselines (each in a venv of its own)."""
    parser.add_argument(
        "--arq-python",
        default=str(REPO / ".venv" / "bench-arq" / "bin" / "python"),
        help="interpreter with arq installed (make bench creates .venv/bench-arq)",
    )
    parser.add_argument(
        "--celery-python",
        default=str(REPO / ".venv" / "bench-celery" / "bin" / "python"),
        help="interpreter with Celery installed (make bench creates .venv/bench-celery)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line (make bench passes ARGS through)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one run each")
    parser.add_argument("--runs", type=int, help="runs per scenario (3; --quick: 1)")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated: {','.join(SCENARIOS)}, or a set: {','.join(SCENARIO_SETS)}",
    )
    parser.add_argument("--agent-mode", choices=("raw", "sdk"), default="raw")
    parser.add_argument(
        "--agent-report",
        choices=("stream", "batch", "unary"),
        default="stream",
        help="raw agents' completions: messages of one StreamReportTasks stream per agent, "
        "ReportTasks calls, or one CompleteTask each (load_agent.py --report)",
    )
    parser.add_argument("--max-concurrency", type=int, default=100, help="per drain agent")
    parser.add_argument("--drain-tasks", type=int)
    parser.add_argument(
        "--submit-batch",
        type=int,
        help="tasks per SubmitTasks call or StreamSubmitTasks message in drains (1: SubmitTask)",
    )
    parser.add_argument(
        "--drain-client",
        choices=("calls", "stream"),
        default="calls",
        help="drains' batches: SubmitTasks calls, or StreamSubmitTasks messages (one stream "
        "per batch in flight, one message in flight on each; slower in a drain on 2 cores)",
    )
    parser.add_argument(
        "--latency-client",
        choices=("stream", "coalesce", "unary"),
        default="stream",
        help="steady-rate submits: the tasks due meanwhile as one StreamSubmitTasks message "
        "(stream) or SubmitTasks call (coalesce), or one SubmitTask each (unary)",
    )
    parser.add_argument(
        "--latency-calls-in-flight",
        type=int,
        help="steady-rate submits: StreamSubmitTasks streams, one message in flight on each "
        "(--latency-client stream, 1), or SubmitTasks calls at once (coalesce, 2)",
    )
    parser.add_argument(
        "--rates", help="steady-rate scenarios, tasks/s, comma-separated (200,1000; --quick: 200)"
    )
    parser.add_argument(
        "--many-agents",
        help="agent counts of the many_agents scenario, comma-separated, fewest first "
        "(4,1000,10000; --quick: 4,40)",
    )
    parser.add_argument(
        "--cluster-tasks",
        type=int,
        help="tasks of each of the 3 partitions of the cluster scenario (3000; --quick: 300)",
    )
    parser.add_argument("--log-level", default="INFO", help="the coordinator nodes' log level")
    parser.add_argument(
        "--strategy",
        default="",
        help="the nodes' COORDINATOR_BALANCING_STRATEGY (default: theirs); with consistent_hash "
        "the many_agents scenario gives each task its own routing key",
    )
    add_baseline_options(parser)
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    return parser


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The arguments, with the plan they size (``args.plan``), and the scenarios chosen."""
    parser = build_parser()
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.runs:
        plan.runs = args.runs
    if args.drain_tasks:
        plan.drain_tasks = args.drain_tasks
    if args.submit_batch:
        plan.submit_batch = args.submit_batch
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    chosen = [scenario for name in names for scenario in SCENARIO_SETS.get(name, (name,))]
    if args.many_agents:
        plan.many_agents = tuple(int(n) for n in args.many_agents.split(","))
    if args.cluster_tasks:
        plan.cluster_tasks = args.cluster_tasks
    if args.rates:
        plan.rates = tuple(int(r) for r in args.rates.split(","))
    elif "unary" in names:
        plan.rates = (UNARY_RATE,)
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"--scenarios: unknown {', '.join(sorted(unknown))}")
    for name, python in (("arq", args.arq_python), ("celery", args.celery_python)):
        if name in chosen and not Path(python).exists():
            parser.error(f"--{name}-python: {python} does not exist (run make bench)")
    args.plan = plan
    return args, chosen


def measure(bench: Bench, chosen: list[str]) -> dict[str, dict[str, Any]] | int:
    """Run the scenarios and stop every child: the results, or the exit code on failure."""
    workdir = bench.workdir
    try:
        bench.redis.start()
        return run_scenarios(bench, chosen)
    except (KeyboardInterrupt, Stop) as exc:
        print(f"interrupted ({exc!r}); stopping the benchmark's processes", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(f"(logs in {workdir})", file=sys.stderr)
        workdir = Path()  # keep the logs
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.stop_run()
        bench.redis.stop()
        if bench.keep_logs and workdir != Path():
            print(f"(logs kept in {workdir})", file=sys.stderr)
        elif workdir != Path():
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios, print the table and the targets, write the JSON."""
    args, chosen = parse(argv)

    def on_sigterm(signum: int, frame: object) -> None:
        raise Stop

    signal.signal(signal.SIGTERM, on_sigterm)
    env = environment()
    workdir = Path(tempfile.mkdtemp(prefix="aitbc-bench-"))
    bench = Bench(args, args.plan, workdir, RedisServer(workdir))
    if args.strategy:
        bench.node_env = {"COORDINATOR_BALANCING_STRATEGY": args.strategy}
    started = time.monotonic()
    results = measure(bench, chosen)
    if isinstance(results, int):
        return results
    elapsed = time.monotonic() - started
    rows = table_rows(results)
    checks = targets(results)
    print_table(rows, checks)
    summary = {
        "elapsed_s": round(elapsed, 1),
        "table": [{"scenario": s, "figure": f, "value": v} for s, f, v in rows],
        "targets": checks,
    }
    write_results(args, argv, args.plan, env, results, summary)
    print(f"\n{len(results)} scenarios in {elapsed:.0f} s; JSON in {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
