"""The targets a run is judged by, each with the measured median and whether it is met:
issue 5's (the batched path) and issue 17's (the unary path: one SubmitTask per task, one
CompleteTask per result), the latter against arq, Celery, the gRPC floor and a bare echo
measured in the same run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import many_agents
import tls_cost

Results = dict[str, dict[str, Any]]
Check = dict[str, Any]
UNARY_RATE = 200
"""Issue 17's steady rate, tasks/s."""
UNARY_KEYS = (
    "drain_unary",
    "relay_drain_unary",
    f"latency_unary_{UNARY_RATE}",
    f"floor_unary_{UNARY_RATE}",
    "echo",
)
"""Scenario keys of the unary path; when any of them ran, issue 17's targets are printed."""


def median_of(results: Results, key: str, figure: str) -> float | None:
    """The median over the runs of ``figure`` in scenario ``key`` (None if not measured)."""
    result = results.get(key)
    if result is None or figure not in result["aggregate"]:
        return None
    return float(result["aggregate"][figure]["median"])


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator to 2 decimals, None unless both were measured."""
    return round(numerator / denominator, 2) if numerator and denominator else None


def check(
    name: str,
    unit: str,
    value: float | None,
    limit: float | None,
    test: Callable[[float, float], bool],
    **extra: Any,
) -> Check:
    """One target: met is None when the value (or a limit measured in the run) is missing."""
    met = None if value is None or limit is None else bool(test(float(value), float(limit)))
    return {"target": name, "measured": value, "unit": unit, "limit": limit, "met": met, **extra}


def batched_targets(results: Results) -> list[Check]:
    """Each target of issue 5 with the measured median and whether it is met."""
    checks = []
    drain = median_of(results, "drain", "completed_per_s")
    arq = median_of(results, "arq", "completed_per_s")
    checks.append(check("drain ≥ 2,000 tasks/s (1 node)", "tasks/s", drain, 2000.0, float.__ge__))
    checks.append(check("drain ≥ 1.2× arq", "×", ratio(drain, arq), 1.2, float.__ge__))
    for rate, limit in ((200, 2.0), (1000, 20.0)):
        p99 = median_of(results, f"latency_{rate}", "submit_to_assigned.p99_ms")
        floor = median_of(results, f"floor_{rate}", "submit_to_assigned.p99_ms")
        name = f"submit→assigned p99 ≤ {limit:g} ms at {rate}/s"
        extra = {"grpc_floor": floor} if floor is not None else {}
        checks.append(check(name, "ms", p99, limit, float.__le__, **extra))
    discovery = median_of(results, "discovery", "discover_sequential.p99_ms")
    agents = results.get("discovery", {}).get("runs", [{}])[0].get("agents", 0)
    name = f"discovery p99 ≤ 5 ms ({agents:,} agents)"
    checks.append(check(name, "ms", discovery, 5.0, float.__le__))
    per_task = median_of(results, "drain", "redis_bytes_per_finished_task")
    checks.append(check("≤ 1 KB of Redis per finished task", "B", per_task, 1024.0, float.__le__))
    memory = median_of(results, "streams", "memory_per_agent_kib")
    checks.append(check("≤ 100 KiB per connected idle agent", "KiB", memory, 100.0, float.__le__))
    if "many_agents" in results:
        for name, unit, value, limit, test in many_agents.checks(
            results["many_agents"]["aggregate"]
        ):
            checks.append(check(name, unit, value, limit, test))
    if "tls" in results:
        for c in tls_cost.checks(lambda key, figure: median_of(results, key, figure)):
            name, unit, value, limit, test = c
            checks.append(check(name, unit, value, limit, test))
    return checks


def _figures(**values: float | None) -> str:
    """``name value`` pairs of the figures a target compares ("-" where not measured)."""
    return ", ".join(
        f"{k.replace('_', ' ')} {'-' if v is None else f'{v:g}'}" for k, v in values.items()
    )


def unary_drain_target(results: Results) -> Check:
    """Unary drain ≥ 1.5× arq's drain (the batched drain beside it, and the ceiling: the
    same clients' drain through the relay, with nothing behind the calls)."""
    unary = median_of(results, "drain_unary", "completed_per_s")
    arq = median_of(results, "arq", "completed_per_s")
    batched = median_of(results, "drain", "completed_per_s")
    relay = median_of(results, "relay_drain_unary", "completed_per_s")
    basis = _figures(
        unary_tasks_per_s=unary,
        arq_tasks_per_s=arq,
        relay_tasks_per_s=relay,
        relay_x_arq=ratio(relay, arq),
        batched_tasks_per_s=batched,
        batched_x_arq=ratio(batched, arq),
    )
    return check("unary drain ≥ 1.5× arq", "×", ratio(unary, arq), 1.5, float.__ge__, basis=basis)


def unary_latency_targets(results: Results) -> list[Check]:
    """At 200/s, unary submit→assigned p99 ≤ 1.5× the unary gRPC floor's p99, and below
    Celery's enqueue→started p99 (the batched path's p99 and floor beside them)."""
    assigned = "submit_to_assigned.p99_ms"
    p99 = median_of(results, f"latency_unary_{UNARY_RATE}", assigned)
    floor = median_of(results, f"floor_unary_{UNARY_RATE}", assigned)
    celery = median_of(results, "celery", "steady.submit_to_started.p99_ms")
    basis = _figures(
        unary_p99_ms=p99,
        unary_floor_p99_ms=floor,
        celery_p99_ms=celery,
        batched_p99_ms=median_of(results, f"latency_{UNARY_RATE}", assigned),
        batched_floor_p99_ms=median_of(results, f"floor_{UNARY_RATE}", assigned),
    )
    name = f"unary {UNARY_RATE}/s assigned p99"
    return [
        check(f"{name} ≤ 1.5× floor", "×", ratio(p99, floor), 1.5, float.__le__, basis=basis),
        check(f"{name} < Celery p99", "ms", p99, celery, float.__lt__, basis=basis),
    ]


def unary_cpu_target(results: Results) -> Check:
    """Node CPU per unary task (SubmitTask + CompleteTask, in the unary drain) ≤ 2.5× the
    echo server's CPU per call with as many calls in flight (sequential echo and the
    batched drain's CPU per task beside it)."""
    node_cpu = median_of(results, "drain_unary", "coordinator_cpu_us_per_task")
    echo_cpu = median_of(results, "echo", "concurrent.server_cpu_us_per_call")
    basis = _figures(
        unary_us_per_task=node_cpu,
        echo_us_per_call=echo_cpu,
        echo_sequential_us_per_call=median_of(results, "echo", "sequential.server_cpu_us_per_call"),
        relay_us_per_task=median_of(results, "relay_drain_unary", "relay_cpu_us_per_task"),
        batched_us_per_task=median_of(results, "drain", "coordinator_cpu_us_per_task"),
    )
    value = ratio(node_cpu, echo_cpu)
    return check("node CPU per unary task ≤ 2.5× echo", "×", value, 2.5, float.__le__, basis=basis)


def unary_targets(results: Results) -> list[Check]:
    """Issue 17's targets for the unary path, each with the figures it compares."""
    return [
        unary_drain_target(results),
        *unary_latency_targets(results),
        unary_cpu_target(results),
    ]


def targets(results: Results) -> list[Check]:
    """Issue 5's targets, and issue 17's when a scenario of the unary path ran."""
    checks = batched_targets(results)
    if any(key in results for key in (*UNARY_KEYS, "celery")):
        checks += unary_targets(results)
    return checks
