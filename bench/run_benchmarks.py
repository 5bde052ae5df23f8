#!/usr/bin/env python3
"""The task benchmarks (issue 5): drain throughput, latency under load, two nodes, discovery
at scale, many streams, the same drain through arq as a baseline, and how evenly each
balancing strategy spreads light work (bench/spread.py).

Starts its own redis-server (free loopback port, no persistence; db 1 for the coordinator,
db 2 for arq), coordinator nodes (``python -m coordinator serve``), agent processes
(bench/load_agent.py), submitter processes (bench/load_submitter.py) and the arq worker and
submitter (bench/arq_baseline.py, with .venv/bench-arq's interpreter). Every figure is the
median of ``--runs`` runs (3) with their min and max. Prints a table, writes one JSON per
scenario and a summary with every target met or not to bench/results/.

The drains submit through SubmitTasks, 100 tasks per call, 4 calls at once
(``--drain-client stream``: messages of 100 tasks on 4 StreamSubmitTasks streams, one
message in flight on each; ``--submit-batch 1``: one SubmitTask per task); the steady-rate
runs send each task when it falls due, in one message of a StreamSubmitTasks stream with
whatever else fell due while the previous message was out (``--latency-client
coalesce``: SubmitTasks calls instead, 2 at most at once; ``unary``: one SubmitTask per
task). The agents report their completions as messages of one StreamReportTasks stream
each (``--agent-report batch``: ReportTasks calls; ``unary``: CompleteTask) and take
several assignments per stream message (bench/load_agent.py).

    make bench                       # everything: 10 to 13 minutes on 2 cores
    make bench ARGS=--quick          # a smoke run: small counts, one run each
    python bench/run_benchmarks.py --scenarios drain,arq --runs 1

Every child is stopped at the end, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flood
import redis
import spread
import tls_cost
import watchers
from processes import (
    REPO,
    CoordinatorNode,
    RedisServer,
    cpu_s,
    free_port,
    log_tail,
    rss_kib,
    spawn,
    stop_process,
    wait_until,
)

BENCH = REPO / "bench"
RESULTS_DIR = BENCH / "results"
COORDINATOR_DB = 1
ARQ_DB = 2
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
)

LATENCY_IN_FLIGHT = {"stream": 1, "coalesce": 2}
"""Steady-rate submits, by client: streams (one message in flight each), or calls at once."""

TARGETS = {
    "drain_tasks_per_s": 2000.0,
    "drain_vs_arq_ratio": 1.2,
    "assign_p99_ms_at_200": 2.0,
    "assign_p99_ms_at_1000": 20.0,
    "discovery_p99_ms": 5.0,
    "memory_per_agent_kib": 100.0,
}


class Stop(Exception):
    """Raised by the SIGTERM handler so that ``finally`` blocks clean up."""


@dataclass
class Plan:
    """How big each scenario is: the full run or the --quick smoke run."""

    runs: int
    drain_tasks: int
    drain_agents: int
    in_flight: int
    """Unary calls at once (SubmitTask, arq's enqueue_job)."""
    submit_batch: int
    """Tasks per SubmitTasks call in the coordinator's drains."""
    batches_in_flight: int
    """SubmitTasks calls at once in the coordinator's drains."""
    rates: tuple[int, ...]
    steady_s: float
    discovery_agents: int
    discovery_calls: int
    stream_agents: int
    stream_processes: int


FULL = Plan(
    runs=3,
    drain_tasks=20_000,
    drain_agents=4,
    in_flight=128,
    submit_batch=100,
    batches_in_flight=4,
    rates=(200, 1000),
    steady_s=15.0,
    discovery_agents=10_000,
    discovery_calls=1000,
    stream_agents=2000,
    stream_processes=4,
)
QUICK = Plan(
    runs=1,
    drain_tasks=1000,
    drain_agents=4,
    in_flight=64,
    submit_batch=50,
    batches_in_flight=2,
    rates=(200,),
    steady_s=2.0,
    discovery_agents=1000,
    discovery_calls=200,
    stream_agents=100,
    stream_processes=2,
)


# ---------------------------------------------------------------------------------- figures


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def latency_summary(values_ms: list[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    if not ordered:
        return {}
    return {
        "p50_ms": round(percentile(ordered, 0.50), 3),
        "p90_ms": round(percentile(ordered, 0.90), 3),
        "p99_ms": round(percentile(ordered, 0.99), 3),
        "max_ms": round(ordered[-1], 3),
    }


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of every numeric figure over the runs (nested dicts flattened)."""
    flat: dict[str, list[float]] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat.setdefault(prefix, []).append(float(value))

    for run in runs:
        walk("", run)
    return {
        name: {
            "median": round(statistics.median(values), 3),
            "min": round(min(values), 3),
            "max": round(max(values), 3),
        }
        for name, values in flat.items()
    }


def redis_commands(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT (INFO commandstats)."""
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(entry["calls"])
        for name, entry in stats.items()
        if name.startswith("cmdstat_")
    }


def commands_per_task(commands: dict[str, int], tasks: int) -> dict[str, Any]:
    """Redis commands per completed task, in total and for the most frequent commands
    (INFO and CONFIG, the harness's own, are left out)."""
    own = {"info", "config", "config|resetstat", "hget", "ping"}
    counted = {k: v for k, v in commands.items() if k not in own}
    top = sorted(counted.items(), key=lambda kv: -kv[1])[:6]
    return {
        "total": round(sum(counted.values()) / max(tasks, 1), 2),
        "by_command": {k: round(v / max(tasks, 1), 2) for k, v in top},
    }


# ---------------------------------------------------------------------------------- harness


@dataclass
class Bench:
    """The shared redis-server and whatever children the current run has started."""

    args: argparse.Namespace
    plan: Plan
    workdir: Path
    redis: RedisServer
    nodes: list[CoordinatorNode] = field(default_factory=list)
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    counter: int = 0
    node_env: dict[str, str] = field(default_factory=dict)
    """More environment for the nodes (bench/tls_cost.py: TLS files)."""
    client_argv: list[str] = field(default_factory=list)
    """More arguments for the agents and submitters (bench/tls_cost.py: CA and token)."""
    keep_logs: bool = False
    """A node exited badly: keep the workdir (its logs) when the benchmark ends."""

    def coordinator_db(self) -> redis.Redis:
        return self.redis.client(COORDINATOR_DB)

    def next_path(self, stem: str) -> Path:
        self.counter += 1
        return self.workdir / f"{self.counter:04d}-{stem}.json"

    def start_nodes(self, count: int) -> list[CoordinatorNode]:
        self.coordinator_db().flushdb()
        env = {
            # The bench's agents never heartbeat: keep them live for the whole run.
            "COORDINATOR_HEARTBEAT_INTERVAL_S": "1800",
            "COORDINATOR_LIVENESS_TIMEOUT_S": "3600",
            "COORDINATOR_LOG_LEVEL": self.args.log_level,
            **self.node_env,
        }
        for i in range(count):
            node = CoordinatorNode(
                self.workdir, f"bench-node-{i + 1}", self.redis.url(COORDINATOR_DB), env
            )
            self.nodes.append(node)
            node.start()
        return list(self.nodes)

    def python_child(
        self, script: str, argv: list[str], python: str | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``bench/SCRIPT`` with ARGV (its output goes to a log in the workdir)."""
        self.counter += 1
        log = self.workdir / f"{self.counter:04d}-{Path(script).stem}.log"
        child = spawn([python or sys.executable, str(BENCH / script), *argv], log)
        self.children.append(child)
        return child

    def signal_agents(self) -> None:
        """SIGTERM to the agent processes still running: they write their time stamps."""
        for child in self.children:
            if "load_agent.py" in " ".join(map(str, child.args)) and child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def agent_results(self, outs: Sequence[Path]) -> list[dict[str, Any]]:
        """SIGTERM to the agent processes, which then write their time stamps: those."""
        self.signal_agents()
        self.wait_files(outs, "the agents' results", 60)
        return [load(o) for o in outs]

    def wait_exit(
        self, children: Sequence[subprocess.Popen[bytes]], what: str, timeout_s: float
    ) -> None:
        """Wait until every one of ``children`` has exited with 0."""

        def exited() -> bool:
            self.check_children()
            for child in children:
                if child.poll() not in (None, 0):
                    raise RuntimeError(f"{what} exited with {child.returncode}")
            return all(child.poll() == 0 for child in children)

        wait_until(what, exited, timeout_s)

    def start_agents(
        self,
        address: str,
        prefix: str,
        agents: int,
        max_concurrency: int,
        hold: bool = False,
        expect: int = 0,
    ) -> Path:
        out = self.next_path(prefix)
        argv = [
            "--address",
            address,
            "--prefix",
            prefix,
            "--agents",
            str(agents),
            "--max-concurrency",
            str(max_concurrency),
            "--mode",
            self.args.agent_mode,
            "--expect",
            str(expect),
            "--out",
            str(out),
        ]
        if self.args.agent_mode == "raw":
            argv += ["--report", self.args.agent_report]
        argv += self.client_argv
        self.python_child("load_agent.py", [*argv, "--hold"] if hold else argv)
        return out

    def wait_ready(self, outs: Sequence[Path], timeout_s: float) -> None:
        def ready() -> bool:
            self.check_children()
            return all(Path(f"{o}.ready").exists() for o in outs)

        wait_until("the agents' streams", ready, timeout_s)

    def check_children(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"{node.node_id} exited:\n{log_tail(node.log)}")

    def wait_files(self, outs: Sequence[Path], what: str, timeout_s: float) -> None:
        def written() -> bool:
            self.check_children()
            for child in self.children:
                if child.poll() not in (None, 0):
                    raise RuntimeError(f"{child.args!r} exited with {child.returncode}")
            return all(o.exists() for o in outs)

        wait_until(what, written, timeout_s)

    def wait_counter(self, name: str, expected: int, timeout_s: float) -> None:
        """Wait until tasks:stats[name] reaches ``expected`` (polled every 20 ms)."""
        client = self.coordinator_db()

        def reached() -> bool:
            self.check_children()
            return int(client.hget("tasks:stats", name) or 0) >= expected

        try:
            wait_until(f"{expected} tasks {name.removeprefix('tasks_')}", reached, timeout_s)
        finally:
            client.close()

    def stop_run(self) -> None:
        """Stop the run's agents, submitters and nodes (agents first: they write results)."""
        for child in self.children:
            stop_process(child, timeout_s=30)
        self.children.clear()
        for node in self.nodes:
            code = node.stop()
            if code not in (0, None):
                print(
                    f"warning: {node.node_id} exited with {code} (its log: {node.log})",
                    file=sys.stderr,
                )
                self.keep_logs = True
        self.nodes.clear()


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def submitter_argv(address: str, out: Path, **options: Any) -> list[str]:
    argv = ["--address", address, "--out", str(out)]
    for name, value in options.items():
        flag = f"--{name.replace('_', '-')}"
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def join_times(
    submits: list[dict[str, Any]], agents: list[dict[str, Any]]
) -> tuple[dict[str, int], dict[str, tuple[str, int, int]], dict[str, int]]:
    """Submit times by task id, agent records by task id, and all errors met."""
    submitted: dict[str, int] = {}
    errors: dict[str, int] = {}
    for s in submits:
        submitted.update({task_id: t for task_id, t, _ in s["records"]})
        for k, v in s["errors"].items():
            errors[f"submit {k}"] = errors.get(f"submit {k}", 0) + v
    received: dict[str, tuple[str, int, int]] = {}
    for a in agents:
        received.update({task_id: (agent, r, c) for task_id, agent, r, c in a["records"]})
        for k, v in a["errors"].items():
            errors[f"agent {k}"] = errors.get(f"agent {k}", 0) + v
    return submitted, received, errors


def tasks_per_call(
    tasks: int, submits: list[dict[str, Any]], agents: list[dict[str, Any]]
) -> dict[str, float]:
    """How much each call or message carried on average: tasks per submit call or
    StreamSubmitTasks message, per stream message with assignments, per report call or
    StreamReportTasks message (what batching the rate allowed)."""

    def per(count: int) -> float:
        return round(tasks / count, 2) if count else 0.0

    return {
        "submit": per(sum(s.get("calls", 0) for s in submits)),
        "stream_message": per(sum(a.get("calls", {}).get("stream_messages", 0) for a in agents)),
        "report": per(sum(a.get("calls", {}).get("report_calls", 0) for a in agents)),
    }


def check_all_completed(
    submitted: dict[str, int], received: dict[str, tuple[str, int, int]], expected: int
) -> None:
    if len(submitted) != expected:
        raise RuntimeError(f"{len(submitted)} of {expected} tasks were submitted")
    missing = [t for t in submitted if t not in received or received[t][2] == 0]
    if missing:
        raise RuntimeError(f"{len(missing)} tasks never completed (e.g. {missing[0]})")


# ---------------------------------------------------------------------------------- scenarios


def task_run(
    bench: Bench,
    nodes: int,
    submit_options: list[dict[str, Any]],
    expected: int,
    max_concurrency: int,
) -> dict[str, Any]:
    """One run: nodes, the plan's agents spread over them, submitters (one per entry of
    ``submit_options``, spread over the nodes too), until every task is completed."""
    started_nodes = bench.start_nodes(nodes)
    try:
        outs = [
            bench.start_agents(
                started_nodes[i % nodes].address, f"agent{i}", 1, max_concurrency=max_concurrency
            )
            for i in range(bench.plan.drain_agents)
        ]
        bench.wait_ready(outs, 60)
        rss_before = {n.node_id: rss_kib(n.pid)["VmRSS"] for n in started_nodes}
        cpu_before = {n.node_id: cpu_s(n.pid) for n in started_nodes}
        redis_cpu_before = cpu_s(bench.redis.pid)
        admin = bench.coordinator_db()
        admin.config_resetstat()
        start_at = time.time_ns() + 500_000_000
        submit_outs = []
        submitters = []
        for i, options in enumerate(submit_options):
            out = bench.next_path(f"submitter{i}")
            submit_outs.append(out)
            address = started_nodes[i % nodes].address
            submitters.append(
                bench.python_child(
                    "load_submitter.py",
                    [
                        *submitter_argv(address, out, start_at_ns=start_at, **options),
                        *bench.client_argv,
                    ],
                )
            )
        bench.wait_exit(submitters, "the submitters", 600)
        # An overloaded node may refuse submits (the submitter counts them as errors): wait
        # for every task it accepted.
        accepted = sum(len(load(o)["records"]) for o in submit_outs)
        bench.wait_counter("tasks_completed", accepted, 300)
        commands = redis_commands(admin)
        rss_after = {n.node_id: rss_kib(n.pid) for n in started_nodes}
        node_cpu_s = sum(cpu_s(n.pid) - cpu_before[n.node_id] for n in started_nodes)
        redis_cpu = cpu_s(bench.redis.pid) - redis_cpu_before
        admin.close()
        agent_reports = bench.agent_results(outs)
    finally:
        bench.stop_run()
    submits = [load(o) for o in submit_outs]
    submitted, received, errors = join_times(submits, agent_reports)
    check_all_completed(submitted, received, accepted)
    first_submit = min(s["started_ns"] for s in submits)
    last_reply = max(t for s in submits for _, _, t in s["records"])
    last_completed = max(c for _, _, c in received.values())
    per_agent: dict[str, int] = {}
    for agent, _, _ in received.values():
        per_agent[agent] = per_agent.get(agent, 0) + 1
    return {
        "tasks": accepted,
        "submits_refused": expected - accepted,
        "submit_per_s": round(accepted / ((last_reply - first_submit) / 1e9), 1),
        "completed_per_s": round(accepted / ((last_completed - first_submit) / 1e9), 1),
        # The submit call's share: from when the task was due to its call's reply.
        "submit_to_reply": latency_summary(
            [(replied - due) / 1e6 for sub in submits for _, due, replied in sub["records"]]
        ),
        "submit_to_assigned": latency_summary(
            [(received[t][1] - s) / 1e6 for t, s in submitted.items()]
        ),
        "submit_to_completed": latency_summary(
            [(received[t][2] - s) / 1e6 for t, s in submitted.items()]
        ),
        "redis_commands_per_task": commands_per_task(commands, accepted),
        # CPU time per task, all nodes together, and Redis: what a task costs, whatever
        # else shares the machine.
        "coordinator_cpu_us_per_task": round(node_cpu_s / accepted * 1e6, 1),
        "redis_cpu_us_per_task": round(redis_cpu / accepted * 1e6, 1),
        "coordinator_rss_kib": {
            node: {"before": rss_before[node], **after} for node, after in rss_after.items()
        },
        "tasks_per_agent": dict(sorted(per_agent.items())),
        "tasks_per_call": tasks_per_call(accepted, submits, agent_reports),
        "errors": errors,
    }


def scenario_drain(bench: Bench, nodes: int) -> dict[str, Any]:
    plan = bench.plan
    submitters = nodes  # one submitter per node
    batched = plan.submit_batch > 1
    in_flight = plan.batches_in_flight if batched else plan.in_flight
    options = [
        {
            "count": plan.drain_tasks // submitters,
            "batch": plan.submit_batch,
            "in_flight": max(1, in_flight // submitters),
            # Batches as StreamSubmitTasks messages: in_flight streams, one message each.
            **({"stream": True} if batched and bench.args.drain_client == "stream" else {}),
        }
        for _ in range(submitters)
    ]
    return task_run(
        bench, nodes, options, plan.drain_tasks, max_concurrency=bench.args.max_concurrency
    )


def latency_submit_options(bench: Bench, rate: int) -> dict[str, Any]:
    """The steady-rate submitter's options (scenario 2 and its floor)."""
    options: dict[str, Any] = {"rate": rate, "duration": bench.plan.steady_s}
    client = bench.args.latency_client
    if client in ("stream", "coalesce"):
        in_flight = bench.args.latency_calls_in_flight or LATENCY_IN_FLIGHT[client]
        options.update(coalesce=True, in_flight=in_flight)
    if client == "stream":
        options["stream"] = True
    return options


def scenario_latency(bench: Bench, rate: int) -> dict[str, Any]:
    expected = int(rate * bench.plan.steady_s)
    options = [latency_submit_options(bench, rate)]
    result = task_run(bench, 1, options, expected, max_concurrency=bench.args.max_concurrency)
    result["rate_per_s"] = rate
    return result


def scenario_floor(bench: Bench, rate: int) -> dict[str, Any]:
    """Scenario 2's load through bench/grpc_relay.py instead of a node: the same agents and
    submitter, the same RPCs, nothing behind them (no Redis). What is left is what Python
    gRPC and these clients cost on this machine, in the same run."""
    expected = int(rate * bench.plan.steady_s)
    port = free_port()
    ready = bench.workdir / f"relay-{port}.ready"
    relay = bench.python_child(
        "grpc_relay.py",
        ["--port", str(port), "--ready-file", str(ready), "--expect", str(expected)],
    )
    address = f"127.0.0.1:{port}"
    try:
        wait_until("the relay", lambda: ready.exists(), 30)
        outs = [
            bench.start_agents(address, f"agent{i}", 1, bench.args.max_concurrency)
            for i in range(bench.plan.drain_agents)
        ]
        bench.wait_ready(outs, 60)
        cpu_before = cpu_s(relay.pid)
        out = bench.next_path("submitter")
        options = latency_submit_options(bench, rate)
        submitter = bench.python_child(
            "load_submitter.py",
            submitter_argv(address, out, start_at_ns=time.time_ns() + 500_000_000, **options),
        )
        bench.wait_exit([submitter], "the submitter", 120)
        bench.wait_files([Path(f"{ready}.done")], "every completion at the relay", 60)
        relay_cpu = cpu_s(relay.pid) - cpu_before
        agent_reports = bench.agent_results(outs)
    finally:
        bench.stop_run()
    submits = load(out)
    submitted, received, errors = join_times([submits], agent_reports)
    check_all_completed(submitted, received, expected)
    return {
        "tasks": expected,
        "rate_per_s": rate,
        "submit_to_reply": latency_summary(
            [(replied - due) / 1e6 for _, due, replied in submits["records"]]
        ),
        "submit_to_assigned": latency_summary(
            [(received[t][1] - s) / 1e6 for t, s in submitted.items()]
        ),
        "relay_cpu_us_per_task": round(relay_cpu / expected * 1e6, 1),
        "errors": errors,
    }


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


def scenario_arq(bench: Bench) -> dict[str, Any]:
    """The same drain through one arq worker (max_jobs=100, poll_delay=0.01), db 2."""
    plan = bench.plan
    python = bench.args.arq_python
    db = bench.redis.client(ARQ_DB)
    db.flushdb()
    port = ["--redis-port", str(bench.redis.port), "--db", str(ARQ_DB)]
    try:
        worker_out = bench.next_path("arq-worker")
        bench.python_child(
            "arq_baseline.py",
            ["worker", *port, "--expect", str(plan.drain_tasks), "--out", str(worker_out)],
            python,
        )
        wait_until("the arq worker", lambda: Path(f"{worker_out}.ready").exists(), 30)
        db.config_resetstat()
        submit_out = bench.next_path("arq-submitter")
        submitter = bench.python_child(
            "arq_baseline.py",
            [
                "submit",
                *port,
                "--count",
                str(plan.drain_tasks),
                "--in-flight",
                str(plan.in_flight),
                "--out",
                str(submit_out),
            ],
            python,
        )
        bench.wait_exit([submitter], "the arq submitter", 600)
        bench.wait_files([worker_out], "the arq jobs", 600)
        commands = redis_commands(db)
    finally:
        bench.stop_run()
        db.close()
    submits = load(submit_out)
    jobs = load(worker_out)["records"]
    submitted = {job: t for job, t, _ in submits["records"]}
    ended = {job: (started, end) for job, started, end in jobs}
    if len(submitted) != plan.drain_tasks or set(submitted) != set(ended):
        raise RuntimeError(f"arq: {len(submitted)} enqueued, {len(ended)} ended")
    first = submits["started_ns"]
    last_reply = max(t for _, _, t in submits["records"])
    last_end = max(e for _, e in ended.values())
    return {
        "tasks": plan.drain_tasks,
        "submit_per_s": round(plan.drain_tasks / ((last_reply - first) / 1e9), 1),
        "completed_per_s": round(plan.drain_tasks / ((last_end - first) / 1e9), 1),
        "submit_to_started": latency_summary(
            [(ended[j][0] - s) / 1e6 for j, s in submitted.items()]
        ),
        "submit_to_completed": latency_summary(
            [(ended[j][1] - s) / 1e6 for j, s in submitted.items()]
        ),
        "redis_commands_per_task": commands_per_task(commands, plan.drain_tasks),
        "errors": submits["errors"],
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


# ---------------------------------------------------------------------------------- report


def fmt(agg: dict[str, Any], name: str, digits: int = 1) -> str:
    entry = agg.get(name)
    if entry is None:
        return "-"
    if entry["min"] == entry["max"]:
        return f"{entry['median']:.{digits}f}"
    return f"{entry['median']:.{digits}f} ({entry['min']:.{digits}f}–{entry['max']:.{digits}f})"


def cpu_rows(title: str, agg: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The CPU time a task cost the nodes and Redis (absent from older results)."""
    if "coordinator_cpu_us_per_task" not in agg:
        return []
    value = f"{fmt(agg, 'coordinator_cpu_us_per_task', 0)} / {fmt(agg, 'redis_cpu_us_per_task', 0)}"
    return [(title, "CPU µs per task: nodes / Redis", value)]


def batching_rows(title: str, agg: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Tasks per submit call or message, assignments message and report call or message
    (absent from older results)."""
    if "tasks_per_call.submit" not in agg:
        return []
    value = " / ".join(
        fmt(agg, f"tasks_per_call.{m}") for m in ("submit", "stream_message", "report")
    )
    return [(title, "tasks per call or message: submit / assignments / report", value)]


def table_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(scenario, figure, value) rows of the printed table and the README."""
    rows: list[tuple[str, str, str]] = []
    for key, result in results.items():
        agg = result["aggregate"]
        title = result["title"]
        if key.startswith(("drain", "two_nodes", "arq")):
            rows.append((title, "submit rate, tasks/s", fmt(agg, "submit_per_s", 0)))
            rows.append((title, "completion rate, tasks/s", fmt(agg, "completed_per_s", 0)))
            if "submit_to_completed.p50_ms" in agg:
                rows.append(
                    (title, "submit→completed p50 ms", fmt(agg, "submit_to_completed.p50_ms"))
                )
            rows.append(
                (title, "Redis commands per task", fmt(agg, "redis_commands_per_task.total"))
            )
            rows.extend(cpu_rows(title, agg))
            rows.extend(batching_rows(title, agg))
        elif key.startswith("latency"):
            for what, label in (
                ("submit_to_reply", "submit reply"),
                ("submit_to_assigned", "assigned"),
                ("submit_to_completed", "completed"),
            ):
                if f"{what}.p50_ms" not in agg:
                    continue  # absent from older results
                value = " / ".join(
                    fmt(agg, f"{what}.{p}_ms", 2) for p in ("p50", "p90", "p99", "max")
                )
                rows.append((title, f"submit→{label} p50/p90/p99/max ms", value))
            rows.append(
                (title, "Redis commands per task", fmt(agg, "redis_commands_per_task.total"))
            )
            rows.extend(cpu_rows(title, agg))
            rows.extend(batching_rows(title, agg))
            rows.append(
                (title, "achieved completion rate, tasks/s", fmt(agg, "completed_per_s", 0))
            )
            rows.append(
                (title, "submits refused (of rate × duration)", fmt(agg, "submits_refused", 0))
            )
        elif key.startswith("floor"):
            for what, label in (
                ("submit_to_reply", "submit reply"),
                ("submit_to_assigned", "assigned"),
            ):
                value = " / ".join(
                    fmt(agg, f"{what}.{p}_ms", 2) for p in ("p50", "p90", "p99", "max")
                )
                rows.append((title, f"submit→{label} p50/p90/p99/max ms", value))
            rows.append((title, "CPU µs per task: relay", fmt(agg, "relay_cpu_us_per_task", 0)))
        elif key == "discovery":
            rows.append((title, "DiscoverAgents p50 ms", fmt(agg, "discover_sequential.p50_ms", 2)))
            rows.append((title, "DiscoverAgents p99 ms", fmt(agg, "discover_sequential.p99_ms", 2)))
            if "health_check.p50_ms" in agg:
                floor = " / ".join(fmt(agg, f"health_check.{p}_ms", 2) for p in ("p50", "p99"))
                rows.append((title, "gRPC floor: Health/Check p50 / p99 ms", floor))
            rows.append(
                (
                    title,
                    "coordinator RSS MiB (before → after registering)",
                    f"{agg['coordinator_rss_kib.before_register']['median'] / 1024:.1f} → "
                    f"{agg['coordinator_rss_kib.after_register']['median'] / 1024:.1f}",
                )
            )
        elif key == "spread":
            rows.extend(spread.table_rows(title, agg, fmt))
        elif key == "streams":
            rows.append(
                (
                    title,
                    "coordinator RSS MiB (idle → agents connected)",
                    f"{agg['coordinator_rss_kib.idle_node']['median'] / 1024:.1f} → "
                    f"{agg['coordinator_rss_kib.agents_connected']['median'] / 1024:.1f}",
                )
            )
            rows.append(
                (title, "memory per connected agent, KiB", fmt(agg, "memory_per_agent_kib"))
            )
            rows.append(
                (title, "deliver one task to each agent, s", fmt(agg, "deliver_one_each_s", 2))
            )
        elif key == "flood":
            rows.extend(flood.table_rows(title, agg, fmt))
        elif key == "watchers":
            rows.extend(watchers.table_rows(title, agg, fmt))
        elif key == "tls":
            rows.extend(tls_cost.table_rows(title, agg, fmt))
    return rows


def median_of(results: dict[str, dict[str, Any]], key: str, figure: str) -> float | None:
    result = results.get(key)
    if result is None or figure not in result["aggregate"]:
        return None
    return float(result["aggregate"][figure]["median"])


def targets(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target of issue 5 with the measured median and whether it is met."""
    checks: list[tuple[str, str, float | None, float, Callable[[float, float], bool]]] = []
    floors: dict[str, float | None] = {}
    at_least = float.__ge__
    at_most = float.__le__
    drain = median_of(results, "drain", "completed_per_s")
    arq = median_of(results, "arq", "completed_per_s")
    checks.append(("drain ≥ 2,000 tasks/s (1 node)", "tasks/s", drain, 2000.0, at_least))
    ratio = round(drain / arq, 2) if drain and arq else None
    checks.append(("drain ≥ 1.2× arq", "×", ratio, 1.2, at_least))
    for rate, limit in ((200, 2.0), (1000, 20.0)):
        p99 = median_of(results, f"latency_{rate}", "submit_to_assigned.p99_ms")
        name = f"submit→assigned p99 ≤ {limit:g} ms at {rate}/s"
        checks.append((name, "ms", p99, limit, at_most))
        floors[name] = median_of(results, f"floor_{rate}", "submit_to_assigned.p99_ms")
    discovery = median_of(results, "discovery", "discover_sequential.p99_ms")
    agents = results.get("discovery", {}).get("runs", [{}])[0].get("agents", 0)
    checks.append((f"discovery p99 ≤ 5 ms ({agents:,} agents)", "ms", discovery, 5.0, at_most))
    memory = median_of(results, "streams", "memory_per_agent_kib")
    checks.append(("≤ 100 KiB per connected idle agent", "KiB", memory, 100.0, at_most))
    if "tls" in results:
        checks.extend(tls_cost.checks(lambda key, figure: median_of(results, key, figure)))
    return [
        {
            "target": name,
            "measured": value,
            "unit": unit,
            "limit": limit,
            "met": None if value is None else bool(test(float(value), limit)),
            **({"grpc_floor": floors[name]} if floors.get(name) is not None else {}),
        }
        for name, unit, value, limit, test in checks
    ]


def print_table(rows: list[tuple[str, str, str]], checks: list[dict[str, Any]]) -> None:
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
        print(f"  {c['target']:<44} {measured:>16}  {verdict}{floor}")


def environment() -> dict[str, Any]:
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


# ---------------------------------------------------------------------------------- main


def _submits(bench: Bench) -> str:
    """How a drain's tasks are submitted, for its title."""
    batch = bench.plan.submit_batch
    if batch <= 1:
        return ", SubmitTask"
    if bench.args.drain_client == "stream":
        return f", StreamSubmitTasks ×{batch}"
    return f", SubmitTasks ×{batch}"


def run_scenarios(bench: Bench, chosen: list[str]) -> dict[str, dict[str, Any]]:
    plan = bench.plan
    jobs: list[tuple[str, str, Callable[[], dict[str, Any]]]] = []
    if "drain" in chosen:
        title = f"1. drain, 1 node, {plan.drain_agents} agents{_submits(bench)}"
        jobs.append(("drain", title, lambda: scenario_drain(bench, 1)))
    if "arq" in chosen:
        jobs.append(("arq", "6. arq baseline, 1 worker", lambda: scenario_arq(bench)))
    if "latency" in chosen:
        for rate in plan.rates:
            title = f"2. steady {rate}/s for {plan.steady_s:g} s"
            jobs.append(
                (f"latency_{rate}", title, lambda rate=rate: scenario_latency(bench, rate))  # type: ignore[misc]
            )
    if "floor" in chosen:
        for rate in plan.rates:
            title = f"2f. gRPC floor {rate}/s (relay, no Redis)"
            jobs.append((f"floor_{rate}", title, lambda rate=rate: scenario_floor(bench, rate)))  # type: ignore[misc]
    if "two_nodes" in chosen:
        title = f"3. drain, 2 nodes, {plan.drain_agents} agents{_submits(bench)}"
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
    if "tls" in chosen:
        jobs.append(
            (
                "tls",
                tls_cost.title(plan),
                lambda: tls_cost.scenario_tls(bench, scenario_drain, scenario_latency),
            )
        )
    results: dict[str, dict[str, Any]] = {}
    for key, title, job in jobs:
        runs = []
        for i in range(plan.runs):
            print(f"{title}: run {i + 1}/{plan.runs} ...", flush=True)
            started = time.monotonic()
            runs.append(job())
            print(f"  done in {time.monotonic() - started:.1f} s", flush=True)
        results[key] = {"title": title, "runs": runs, "aggregate": aggregate(runs)}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one run each")
    parser.add_argument("--runs", type=int, help="runs per scenario (3; --quick: 1)")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated: {','.join(SCENARIOS)}"
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
    parser.add_argument("--log-level", default="INFO", help="the coordinator nodes' log level")
    parser.add_argument(
        "--arq-python",
        default=str(REPO / ".venv" / "bench-arq" / "bin" / "python"),
        help="interpreter with arq installed (make bench creates .venv/bench-arq)",
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.runs:
        plan.runs = args.runs
    if args.drain_tasks:
        plan.drain_tasks = args.drain_tasks
    if args.submit_batch:
        plan.submit_batch = args.submit_batch
    if args.rates:
        plan.rates = tuple(int(r) for r in args.rates.split(","))
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"--scenarios: unknown {', '.join(sorted(unknown))}")
    if "arq" in chosen and not Path(args.arq_python).exists():
        parser.error(f"--arq-python: {args.arq_python} does not exist (run make bench)")

    def on_sigterm(signum: int, frame: object) -> None:
        raise Stop

    signal.signal(signal.SIGTERM, on_sigterm)
    env = environment()
    workdir = Path(tempfile.mkdtemp(prefix="aitbc-bench-"))
    bench = Bench(args, plan, workdir, RedisServer(workdir))
    started = time.monotonic()
    try:
        bench.redis.start()
        results = run_scenarios(bench, chosen)
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
    elapsed = time.monotonic() - started
    rows = table_rows(results)
    checks = targets(results)
    print_table(rows, checks)
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
        path.write_text(json.dumps({"scenario": key, **common, **result}, indent=2) + "\n")
    summary = {
        **common,
        "elapsed_s": round(elapsed, 1),
        "table": [{"scenario": s, "figure": f, "value": v} for s, f, v in rows],
        "targets": checks,
    }
    (args.output_dir / f"summary{suffix}").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{len(results)} scenarios in {elapsed:.0f} s; JSON in {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
