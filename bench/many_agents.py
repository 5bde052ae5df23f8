"""Scenario 12 (issue 18): dispatch with many agents connected, each holding a
StreamAssignments open, spread over 2 nodes (agents share processes and connections to fit
the machine). For each count of the plan (4, 1,000 and 10,000 in a full run):

- (a) one task to each of that many agents, submitted half through each node; every agent
  keeps its task (max_concurrency 1): first submit -> last assignment received, and
  assignments/s;
- (b) then, with those agents still connected (and full), the plan's drain (20,000 tasks)
  done by the drain's 4 agents (max_concurrency 100) as in scenario 1, but on 2 nodes:
  what the connected agents cost every pass;

each with node and Redis CPU and Redis commands per task. A pass reads only the least
loaded agents it may assign to (``agents:available``): none of these should grow with the
number of agents connected."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from figures import commands_per_task, join_times, latency_summary, load, redis_commands
from harness import Bench, submitter_argv
from processes import CoordinatorNode, cpu_s
from task_runs import Population, measured_phase, scenario_drain_options, task_figures

NODES = 2
PER_CHANNEL = 25
"""Agents sharing one connection when they are many (a connection each would take 20,000
sockets for 10,000 agents on one machine)."""


def title(bench: Bench) -> str:
    counts = ", ".join(f"{n:,}" for n in bench.plan.many_agents)
    return f"12. many agents ({counts}) over 2 nodes: one task each, then the drain beside them"


def holders(bench: Bench, agents: int) -> Population:
    """``agents`` agents that keep every task, in at most the plan's processes (many share
    connections)."""
    processes = min(bench.plan.many_processes, agents)
    per_channel = PER_CHANNEL if agents > processes else 1
    return Population(agents, processes, per_channel=per_channel, hold=True, prefix="held")


def submit_one_each(
    bench: Bench, nodes: list[CoordinatorNode], agents: int
) -> tuple[list[Path], float, float, dict[str, int], int]:
    """Submit ``agents`` tasks, half through each node, and wait until each agent has its
    own: the submitters' files, node and Redis CPU seconds, the Redis commands (and, as
    ``walk_bound_fallbacks``, the tasks whose assignment script found no agent near on
    its rotation or ring: round robin, consistent hash)."""
    cpu_before = [cpu_s(n.pid) for n in nodes]
    redis_cpu_before = cpu_s(bench.redis.pid)
    admin = bench.coordinator_db()
    try:
        admin.config_resetstat()
        start_at = time.time_ns() + 500_000_000
        outs, submitters = [], []
        for i, node in enumerate(nodes):
            count = agents // NODES + (i < agents % NODES)
            out = bench.next_path(f"submitter{i}")
            outs.append(out)
            options = {"count": count, "start_at_ns": start_at, **scenario_drain_options(bench)}
            if bench.args.strategy == "consistent_hash":
                options["routing_keys"] = True  # else it chooses as least connections
            argv = submitter_argv(node.address, out, **options)
            submitters.append(bench.python_child("load_submitter.py", argv))
        bench.wait_exit(submitters, "the submitters", 300)
        bench.wait_counter("tasks_distributed", agents, 300)
        node_cpu = sum(cpu_s(n.pid) - b for n, b in zip(nodes, cpu_before, strict=True))
        commands = redis_commands(admin)
        fallbacks = int(admin.hget("tasks:stats", "walk_bound_fallbacks") or 0)
        return outs, node_cpu, cpu_s(bench.redis.pid) - redis_cpu_before, commands, fallbacks
    finally:
        admin.close()


def one_each_figures(
    agents: int,
    submits: list[dict[str, Any]],
    reports: list[dict[str, Any]],
    cpu: tuple[float, float],
    commands: dict[str, int],
) -> dict[str, Any]:
    """(a)'s figures; RuntimeError unless each agent got exactly one task."""
    submitted, received, errors = join_times(submits, reports)
    if len(received) != agents or len({a for a, _, _ in received.values()}) != agents:
        raise RuntimeError(f"{len(received)} tasks did not reach {agents} agents, one each")
    first_submit = min(s["started_ns"] for s in submits)
    elapsed_s = (max(r for _, r, _ in received.values()) - first_submit) / 1e9
    last_reply = max(t for s in submits for _, _, t in s["records"])
    node_cpu_s, redis_cpu_s = cpu
    return {
        "agents": agents,
        "first_submit_to_last_assigned_s": round(elapsed_s, 3),
        "first_submit_to_last_reply_s": round((last_reply - first_submit) / 1e9, 3),
        "assignments_per_s": round(agents / elapsed_s, 1),
        "submit_to_assigned": latency_summary(
            [(received[t][1] - s) / 1e6 for t, s in submitted.items()]
        ),
        "coordinator_cpu_us_per_task": round(node_cpu_s / agents * 1e6, 1),
        "redis_cpu_us_per_task": round(redis_cpu_s / agents * 1e6, 1),
        "redis_commands_per_task": commands_per_task(commands, agents),
        "errors": errors,
    }


def with_agents(bench: Bench, agents: int) -> dict[str, Any]:
    """(a) and (b) with ``agents`` agents connected."""
    plan = bench.plan
    nodes = bench.start_nodes(NODES)
    try:
        held = holders(bench, agents).start(bench, nodes, max_concurrency=1)
        bench.wait_ready(held, 60 + agents / 50)
        submit_outs, node_cpu, redis_cpu, commands, fallbacks = submit_one_each(
            bench, nodes, agents
        )
        bench.wait_files([o.with_name(o.name + ".received") for o in held], "one each", 120)
        workers = Population(plan.drain_agents, plan.drain_agents)
        worker_outs = workers.start(bench, nodes, bench.args.max_concurrency)
        bench.wait_ready(worker_outs, 60)
        options = [
            {"count": plan.drain_tasks // NODES, **scenario_drain_options(bench, NODES)}
            for _ in range(NODES)
        ]
        drain_outs, accepted, usage = measured_phase(bench, nodes, options)
        reports = bench.agent_results(held + worker_outs)
    finally:
        bench.stop_run()
    each = one_each_figures(
        agents,
        [load(o) for o in submit_outs],
        reports[: len(held)],
        (node_cpu, redis_cpu),
        commands,
    )
    each["walk_bound_fallbacks"] = fallbacks
    drain = task_figures([load(o) for o in drain_outs], reports[len(held) :], accepted, usage)
    keep = (
        "tasks",
        "completed_per_s",
        "coordinator_cpu_us_per_task",
        "redis_cpu_us_per_task",
        "redis_commands_per_task",
        "submit_to_assigned",
        "errors",
    )
    return {"one_each": each, "drain": {"agents_connected": agents, **{k: drain[k] for k in keep}}}


def scenario_many_agents(bench: Bench) -> dict[str, Any]:
    """One run: for each count of agents, one task each, then the drain beside them."""
    return {f"agents_{agents}": with_agents(bench, agents) for agents in bench.plan.many_agents}


def table_rows(title: str, agg: dict[str, Any], fmt: Any) -> list[tuple[str, str, str]]:
    """The rows of the printed table: per count of agents, one each and the drain."""
    rows = []
    counts = sorted({int(k.split(".")[0].removeprefix("agents_")) for k in agg})
    for n in counts:
        each, drain = f"agents_{n}.one_each", f"agents_{n}.drain"
        if f"{each}.first_submit_to_last_assigned_s" in agg:
            rows.append(
                (
                    title,
                    f"{n:,} agents: one each, s (assignments/s)",
                    f"{fmt(agg, f'{each}.first_submit_to_last_assigned_s', 2)}"
                    f" ({fmt(agg, f'{each}.assignments_per_s', 0)})",
                )
            )
            rows.append(
                (
                    title,
                    f"{n:,} agents: one each, node / Redis CPU µs, Redis commands per task",
                    f"{fmt(agg, f'{each}.coordinator_cpu_us_per_task', 0)} / "
                    f"{fmt(agg, f'{each}.redis_cpu_us_per_task', 0)}, "
                    f"{fmt(agg, f'{each}.redis_commands_per_task.total', 1)}",
                )
            )
        rows.append(
            (
                title,
                f"{n:,} agents connected: drain tasks/s; node / Redis CPU µs, commands per task",
                f"{fmt(agg, f'{drain}.completed_per_s', 0)}; "
                f"{fmt(agg, f'{drain}.coordinator_cpu_us_per_task', 0)} / "
                f"{fmt(agg, f'{drain}.redis_cpu_us_per_task', 0)}, "
                f"{fmt(agg, f'{drain}.redis_commands_per_task.total', 1)}",
            )
        )
    return rows


def checks(agg: dict[str, Any]) -> list[tuple[str, str, float | None, float, Any]]:
    """Issue 18's targets as (name, unit, value, limit, test) from this scenario's
    aggregate (value None where not measured)."""
    counts = sorted({int(k.split(".")[0].removeprefix("agents_")) for k in agg})
    if not counts:
        return []

    def median(figure: str) -> float | None:
        entry = agg.get(figure)
        return None if entry is None else float(entry["median"])

    few, many = counts[0], counts[-1]
    each = median(f"agents_{many}.one_each.first_submit_to_last_assigned_s")
    drain_few = median(f"agents_{few}.drain.completed_per_s")
    drain_many = median(f"agents_{many}.drain.completed_per_s")
    commands_few = median(f"agents_{few}.drain.redis_commands_per_task.total")
    commands_many = median(f"agents_{many}.drain.redis_commands_per_task.total")
    compared = few < many  # one count alone compares with nothing
    share = round(drain_many / drain_few, 2) if compared and drain_few and drain_many else None
    drift = (
        round(abs(commands_many / commands_few - 1), 3)
        if compared and commands_few and commands_many
        else None
    )
    return [
        (f"one task to each of {many:,} agents ≤ 2 s", "s", each, 2.0, float.__le__),
        (f"drain with {many:,} agents ≥ 70 % of with {few}", "×", share, 0.7, float.__ge__),
        (
            f"Redis commands per task at {many:,} agents within 10 % of at {few}",
            "Δ",
            drift,
            0.1,
            float.__le__,
        ),
    ]
