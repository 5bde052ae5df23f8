"""The task scenarios against coordinator nodes: the drain (1, and 3 on two nodes), the steady
rates (2) and their gRPC floor through bench/grpc_relay.py (2f). The same agents and
submitters serve all of them; ``bench.args`` and ``bench.plan`` say how they call the node."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from figures import (
    check_all_completed,
    commands_per_task,
    join_times,
    latency_summary,
    load,
    redis_commands,
    tasks_per_call,
)
from harness import Bench, submitter_argv
from processes import CoordinatorNode, cpu_s, free_port, rss_kib, wait_until

from coordinator.storage import keys
from coordinator.storage.scripts import TASK_SCRIPT_NAMES, source

LATENCY_IN_FLIGHT = {"stream": 1, "coalesce": 2}
"""Steady-rate submits, by client: streams (one message in flight each), or calls at once."""


@dataclass
class Usage:
    """What the nodes and Redis used during a run's measured phase."""

    rss_before_kib: dict[str, int]
    rss_after_kib: dict[str, dict[str, int]]
    node_cpu_s: float
    redis_cpu_s: float
    commands: dict[str, int]
    redis_memory_bytes: int = 0
    """Redis' used_memory once the tasks finished and were compacted, less before they
    were submitted: what they keep (``tasks_memory``; the task scripts loaded before)."""
    turn_waits: tuple[int, int] = (0, 0)
    """Requests for a dispatch pass that waited while another node held that partition's
    turn, and their total wait in ms (``tasks:stats``, counted by the scripts)."""


def submits_title(bench: Bench) -> str:
    """How a drain's tasks are submitted, for its title."""
    batch = bench.plan.submit_batch
    if batch <= 1:
        return ", SubmitTask"
    if bench.args.drain_client == "stream":
        return f", StreamSubmitTasks ×{batch}"
    return f", SubmitTasks ×{batch}"


def _start_submitters(
    bench: Bench, nodes: list[CoordinatorNode], submit_options: list[dict[str, Any]]
) -> tuple[list[Path], list[Any]]:
    """One submitter per entry of ``submit_options``, over the nodes in turn, all starting
    half a second from now: their output files and processes."""
    start_at = time.time_ns() + 500_000_000
    outs: list[Path] = []
    children = []
    for i, options in enumerate(submit_options):
        out = bench.next_path(f"submitter{i}")
        outs.append(out)
        address = nodes[i % len(nodes)].address
        argv = submitter_argv(address, out, start_at_ns=start_at, **options)
        children.append(bench.python_child("load_submitter.py", [*argv, *bench.client_argv]))
    return outs, children


def wait_compacted(admin: Any, timeout_s: float) -> None:
    """Wait until every finished task is compacted and archived: none is left in
    ``tasks:finished``."""
    wait_until(
        "the finished tasks compacted", lambda: admin.zcard(keys.TASK_FINISHED) == 0, timeout_s
    )


def tasks_memory(admin: Any) -> int:
    """Redis' used_memory, without the latency histograms it keeps per command name: about
    27 KB each, made at the first call after a reset, about 1 MB for the 40-odd commands a
    drain runs, whatever its number of tasks (CONFIG RESETSTAT frees them; read the command
    counts before)."""
    admin.config_resetstat()
    return int(admin.info("memory")["used_memory"])


def _turn_waits(admin: Any) -> tuple[int, int]:
    """The cluster's count of requests that waited for another node's dispatch turn, and
    their total wait in ms, so far."""
    waits, total_ms = admin.hmget(
        "tasks:stats", ["dispatch_turn_waits", "dispatch_turn_wait_ms_total"]
    )
    return int(waits or 0), int(total_ms or 0)


def measured_phase(
    bench: Bench, nodes: list[CoordinatorNode], submit_options: list[dict[str, Any]]
) -> tuple[list[Path], int, Usage]:
    """Submit, wait until every accepted task is completed, and measure what it used: the
    submitters' output files, the tasks accepted, the usage."""
    rss_before = {n.node_id: rss_kib(n.pid)["VmRSS"] for n in nodes}
    cpu_before = {n.node_id: cpu_s(n.pid) for n in nodes}
    redis_cpu_before = cpu_s(bench.redis.pid)
    admin = bench.coordinator_db()
    try:
        for name in TASK_SCRIPT_NAMES:  # cached once per Redis, whatever the tasks
            admin.script_load(source(name))
        memory_before = tasks_memory(admin)
        waits_before = _turn_waits(admin)
        submit_outs, submitters = _start_submitters(bench, nodes, submit_options)
        bench.wait_exit(submitters, "the submitters", 600)
        # An overloaded node may refuse submits (the submitter counts them as errors): wait
        # for every task it accepted.
        accepted = sum(len(load(o)["records"]) for o in submit_outs)
        bench.wait_counter("tasks_completed", accepted, 300)
        usage = Usage(
            rss_before_kib=rss_before,
            rss_after_kib={n.node_id: rss_kib(n.pid) for n in nodes},
            node_cpu_s=sum(cpu_s(n.pid) - cpu_before[n.node_id] for n in nodes),
            redis_cpu_s=cpu_s(bench.redis.pid) - redis_cpu_before,
            commands=redis_commands(admin),
        )
        usage.turn_waits = tuple(  # type: ignore[assignment]
            after - before for after, before in zip(_turn_waits(admin), waits_before, strict=True)
        )
        # The memory figure is what finished tasks keep: once the reaper has compacted them
        # (background work that waits while tasks wait in line, so mostly after a drain;
        # the CPU figures above are the drain's own, up to its last completion).
        wait_compacted(admin, 300)
        usage.redis_memory_bytes = tasks_memory(admin) - memory_before
    finally:
        admin.close()
    return submit_outs, accepted, usage


def task_run(
    bench: Bench,
    nodes: int,
    submit_options: list[dict[str, Any]],
    expected: int,
    max_concurrency: int,
    population: Population | None = None,
) -> dict[str, Any]:
    """One run: nodes, the plan's agents spread over them (or ``population``'s),
    submitters (one per entry of ``submit_options``, spread over the nodes too), until
    every task is completed."""
    started_nodes = bench.start_nodes(nodes)
    population = population or Population(bench.plan.drain_agents, bench.plan.drain_agents)
    try:
        outs = population.start(bench, started_nodes, max_concurrency)
        bench.wait_ready(outs, 60 + population.agents / 50)
        submit_outs, accepted, usage = measured_phase(bench, started_nodes, submit_options)
        agent_reports = bench.agent_results(outs)
    finally:
        bench.stop_run()
    submits = [load(o) for o in submit_outs]
    result = task_figures(submits, agent_reports, accepted, usage)
    result["submits_refused"] = expected - accepted
    return result


@dataclass(frozen=True)
class Population:
    """The agents of a run: ``agents`` of them in ``processes`` load_agent.py processes
    (one agent per process for a few; many share a process, and a connection per
    ``per_channel``, to fit thousands on the machine), spread over the nodes in turn."""

    agents: int
    processes: int
    per_channel: int = 1
    hold: bool = False
    """Keep every assignment (one task each); else complete them."""
    report: str = ""
    """How raw agents report ('' for the command line's choice)."""
    prefix: str = "agent"
    """Agent ids are ``{prefix}{process}-{n:05d}``: two populations of one run need two."""

    def start(self, bench: Bench, nodes: list[CoordinatorNode], max_concurrency: int) -> list[Path]:
        """Start the processes: the files they will write."""
        outs = []
        for i in range(self.processes):
            count = self.agents // self.processes + (i < self.agents % self.processes)
            outs.append(
                bench.start_agents(
                    nodes[i % len(nodes)].address,
                    f"{self.prefix}{i}",
                    count,
                    max_concurrency=max_concurrency,
                    hold=self.hold,
                    expect=count if self.hold else 0,
                    agents_per_channel=self.per_channel,
                    report=self.report,
                )
            )
        return outs


def task_figures(
    submits: list[dict[str, Any]], agent_reports: list[dict[str, Any]], accepted: int, usage: Usage
) -> dict[str, Any]:
    """A task run's figures from the submitters' and agents' time stamps and the usage."""
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
        "redis_commands_per_task": commands_per_task(usage.commands, accepted),
        # CPU time per task, all nodes together, and Redis: what a task costs, whatever
        # else shares the machine.
        "coordinator_cpu_us_per_task": round(usage.node_cpu_s / accepted * 1e6, 1),
        "redis_cpu_us_per_task": round(usage.redis_cpu_s / accepted * 1e6, 1),
        # Redis memory the finished tasks hold (records and index entries), per task.
        "redis_bytes_per_finished_task": round(usage.redis_memory_bytes / accepted),
        # Requests for a pass that waited while another node held that partition's turn
        # (issue 18: with partitions, nodes that queue their own tasks wait for nobody).
        "dispatch_turn_waits": usage.turn_waits[0],
        "dispatch_turn_wait_ms_total": usage.turn_waits[1],
        "coordinator_rss_kib": {
            node: {"before": usage.rss_before_kib[node], **after}
            for node, after in usage.rss_after_kib.items()
        },
        "tasks_per_agent": dict(sorted(per_agent.items())),
        "tasks_per_call": tasks_per_call(accepted, submits, agent_reports),
        "errors": errors,
    }


def scenario_drain(bench: Bench, nodes: int) -> dict[str, Any]:
    """The plan's drain on ``nodes`` nodes, one submitter per node."""
    plan = bench.plan
    submitters = nodes  # one submitter per node
    options = [
        {"count": plan.drain_tasks // submitters, **scenario_drain_options(bench, submitters)}
        for _ in range(submitters)
    ]
    return task_run(
        bench, nodes, options, plan.drain_tasks, max_concurrency=bench.args.max_concurrency
    )


def scenario_drain_options(bench: Bench, submitters: int = 1) -> dict[str, Any]:
    """How each of ``submitters`` drain submitters calls (all but the count)."""
    plan = bench.plan
    batched = plan.submit_batch > 1
    in_flight = plan.batches_in_flight if batched else plan.in_flight
    return {
        "batch": plan.submit_batch,
        "in_flight": max(1, in_flight // submitters),
        # Batches as StreamSubmitTasks messages: in_flight streams, one message each.
        **({"stream": True} if batched and bench.args.drain_client == "stream" else {}),
    }


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
    """``rate`` tasks/s for the plan's steady duration, one node."""
    expected = int(rate * bench.plan.steady_s)
    options = [latency_submit_options(bench, rate)]
    result = task_run(bench, 1, options, expected, max_concurrency=bench.args.max_concurrency)
    result["rate_per_s"] = rate
    return result


def _through_relay(
    bench: Bench, options: dict[str, Any], expected: int
) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """The plan's agents and one submitter with ``options`` against bench/grpc_relay.py
    instead of a node, until ``expected`` tasks are completed: the submitter's records, the
    agents' reports and the relay's CPU seconds while the tasks went through."""
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
        submitter = bench.python_child(
            "load_submitter.py",
            submitter_argv(address, out, start_at_ns=time.time_ns() + 500_000_000, **options),
        )
        bench.wait_exit([submitter], "the submitter", 300)
        bench.wait_files([Path(f"{ready}.done")], "every completion at the relay", 120)
        relay_cpu = cpu_s(relay.pid) - cpu_before
        agent_reports = bench.agent_results(outs)
    finally:
        bench.stop_run()
    return load(out), agent_reports, relay_cpu


def scenario_floor(bench: Bench, rate: int) -> dict[str, Any]:
    """Scenario 2's load through bench/grpc_relay.py instead of a node: the same agents and
    submitter, the same RPCs, nothing behind them (no Redis). What is left is what Python
    gRPC and these clients cost on this machine, in the same run."""
    expected = int(rate * bench.plan.steady_s)
    submits, agent_reports, relay_cpu = _through_relay(
        bench, latency_submit_options(bench, rate), expected
    )
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


def scenario_drain_floor(bench: Bench) -> dict[str, Any]:
    """Scenario 1's drain (one submitter, as on one node) through bench/grpc_relay.py: the
    most tasks/s these clients and RPCs reach on this machine with nothing behind the
    calls, and what the calls alone cost a grpc.aio server per task."""
    plan = bench.plan
    options = {"count": plan.drain_tasks, **scenario_drain_options(bench)}
    submits, agent_reports, relay_cpu = _through_relay(bench, options, plan.drain_tasks)
    submitted, received, errors = join_times([submits], agent_reports)
    check_all_completed(submitted, received, plan.drain_tasks)
    last_completed = max(c for _, _, c in received.values())
    return {
        "tasks": plan.drain_tasks,
        "completed_per_s": round(
            plan.drain_tasks / ((last_completed - submits["started_ns"]) / 1e9), 1
        ),
        "relay_cpu_us_per_task": round(relay_cpu / plan.drain_tasks * 1e6, 1),
        "tasks_per_call": tasks_per_call(plan.drain_tasks, [submits], agent_reports),
        "errors": errors,
    }
