#!/usr/bin/env python3
"""Fairness under one heavy client (issue 14, defect 15): a steady 100/s submitter (one
SubmitTask per task) and an agent, while ``--callers`` flood callers, each on its own
connection, send SubmitTasks calls of 1,000 tasks of 3 KB in a loop. Reported: the steady
tasks' submit→assigned and submit→reply latencies during the flood, and how many flood
calls the node accepted and refused (RESOURCE_EXHAUSTED with RetryInfo).

The flood's tasks require a capability no agent has, so they stay queued: what is measured
is the node's fairness between callers, not the agent's queue.

As a script this is one flood caller process (``--callers`` connections); the harness
(bench/run_benchmarks.py, scenario ``flood``) imports ``scenario_flood``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct
from google.rpc import error_details_pb2, status_pb2

from aitbc.coordinator.v1 import task_pb2, task_pb2_grpc

FLOOD_CAPABILITY = "flood-only"
"""No agent has it: the flood's tasks stay queued."""


# ------------------------------------------------------------------------- the flood caller


def retry_delay_s(exc: grpc.aio.AioRpcError) -> float:
    """The RetryInfo delay of a refusal, 0 without one."""
    raw = dict(exc.trailing_metadata() or ()).get("grpc-status-details-bin")
    if not isinstance(raw, bytes):
        return 0.0
    info = error_details_pb2.RetryInfo()
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Unpack(info):
            return info.retry_delay.ToNanoseconds() / 1e9
    return 0.0


def flood_request(tasks: int, task_bytes: int) -> task_pb2.SubmitTasksRequest:
    data = Struct()
    data.update({"blob": "x" * task_bytes})
    requirements = task_pb2.TaskRequirements(capabilities=[FLOOD_CAPABILITY])
    return task_pb2.SubmitTasksRequest(
        tasks=[
            task_pb2.SubmitTaskRequest(task_type="flood", task_data=data, requirements=requirements)
            for _ in range(tasks)
        ]
    )


async def flood(args: argparse.Namespace) -> dict[str, Any]:
    request = flood_request(args.tasks, args.task_bytes)
    channels = [grpc.aio.insecure_channel(args.address) for _ in range(args.callers)]
    for channel in channels:
        await channel.channel_ready()
    counts: dict[str, int] = {"accepted_calls": 0, "accepted_tasks": 0, "refused_calls": 0}
    errors: dict[str, int] = {}
    delay_s = (args.start_at_ns - time.time_ns()) / 1e9
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    deadline = time.monotonic() + args.duration

    async def caller(channel: grpc.aio.Channel) -> None:
        stub = task_pb2_grpc.TaskServiceStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = await stub.SubmitTasks(request, timeout=60)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    counts["refused_calls"] += 1
                    if not args.ignore_retry_info:
                        await asyncio.sleep(retry_delay_s(exc))
                else:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                continue
            counts["accepted_calls"] += 1
            counts["accepted_tasks"] += sum(1 for r in reply.results if r.task_id)

    await asyncio.gather(*(caller(c) for c in channels))
    for channel in channels:
        await channel.close()
    return {**counts, "errors": errors}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--callers", type=int, default=8, help="connections, one call each")
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per SubmitTasks call")
    parser.add_argument("--task-bytes", type=int, default=3000)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--start-at-ns", type=int, default=0)
    parser.add_argument(
        "--ignore-retry-info", action="store_true", help="call again at once when refused"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = asyncio.run(flood(args))
    out = Path(args.out)
    out.with_suffix(".tmp").write_text(json.dumps(result))
    out.with_suffix(".tmp").rename(out)
    return 0


# ------------------------------------------------------------------------- the scenario

FULL = {"callers": 8, "duration_s": 15.0, "rate": 100}
QUICK = {"callers": 2, "duration_s": 3.0, "rate": 100}


def _summary(values_ms: list[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    if not ordered:
        return {}

    def at(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)

    return {"p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99), "max_ms": at(1.0)}


def scenario_flood(bench: Any) -> dict[str, Any]:
    """One run: a node, one agent (capability bench), the steady submitter and the flood."""
    from processes import cpu_s

    sizes = QUICK if bench.args.quick else FULL
    duration_s = sizes["duration_s"]
    (node,) = bench.start_nodes(1)
    try:
        (agent_out,) = [bench.start_agents(node.address, "steady", 1, max_concurrency=100)]
        bench.wait_ready([agent_out], 60)
        cpu_before = cpu_s(node.pid)
        redis_cpu_before = cpu_s(bench.redis.pid)
        start_at = time.time_ns() + 1_000_000_000
        steady_out = bench.next_path("steady")
        steady = bench.python_child(
            "load_submitter.py",
            [
                "--address",
                node.address,
                "--out",
                str(steady_out),
                "--rate",
                str(sizes["rate"]),
                "--duration",
                str(duration_s),
                "--start-at-ns",
                str(start_at),
                "--channels",
                "1",
            ],
        )
        flood_out = bench.next_path("flood")
        flooder = bench.python_child(
            "flood.py",
            [
                "--address",
                node.address,
                "--callers",
                str(sizes["callers"]),
                "--duration",
                str(duration_s),
                "--start-at-ns",
                str(start_at),
                "--out",
                str(flood_out),
            ],
        )
        bench.wait_exit([steady, flooder], "the steady submitter and the flood", 120 + duration_s)
        steady_run = json.loads(steady_out.read_text())
        accepted = len(steady_run["records"])
        bench.wait_counter("tasks_completed", accepted, 120)
        node_cpu_s = cpu_s(node.pid) - cpu_before
        redis_cpu_s = cpu_s(bench.redis.pid) - redis_cpu_before
        (agent,) = bench.agent_results([agent_out])
    finally:
        bench.stop_run()
    flooded = json.loads(flood_out.read_text())
    received = {task_id: r for task_id, _, r, _ in agent["records"]}
    submitted = {task_id: s for task_id, s, _ in steady_run["records"]}
    missing = [t for t in submitted if t not in received]
    if missing:
        raise RuntimeError(f"{len(missing)} steady tasks never reached the agent")
    return {
        "callers": sizes["callers"],
        "duration_s": duration_s,
        "steady_rate_per_s": sizes["rate"],
        "steady_tasks": accepted,
        "steady_submit_to_reply": _summary(
            [(replied - due) / 1e6 for _, due, replied in steady_run["records"]]
        ),
        "steady_submit_to_assigned": _summary(
            [(received[t] - s) / 1e6 for t, s in submitted.items()]
        ),
        "flood_calls_accepted": flooded["accepted_calls"],
        "flood_calls_refused": flooded["refused_calls"],
        "flood_tasks_accepted": flooded["accepted_tasks"],
        # Over the flood and the wait for the last steady task.
        "node_cpu_percent": round(100 * node_cpu_s / duration_s, 1),
        "redis_cpu_percent": round(100 * redis_cpu_s / duration_s, 1),
        "errors": {
            **{f"steady {k}": v for k, v in steady_run["errors"].items()},
            **{f"flood {k}": v for k, v in flooded["errors"].items()},
        },
    }


def table_rows(title: str, agg: dict[str, Any], fmt: Any) -> list[tuple[str, str, str]]:
    """The rows of the printed table (``fmt`` is the harness's)."""
    rows = []
    for what, label in (
        ("steady_submit_to_reply", "steady 100/s: SubmitTask reply"),
        ("steady_submit_to_assigned", "steady 100/s: submit→assigned"),
    ):
        value = " / ".join(fmt(agg, f"{what}.{p}_ms", 2) for p in ("p50", "p99", "max"))
        rows.append((title, f"{label} p50/p99/max ms", value))
    calls = f"{fmt(agg, 'flood_calls_accepted', 0)} / {fmt(agg, 'flood_calls_refused', 0)}"
    rows.append((title, "flood calls accepted / refused", calls))
    rows.append((title, "flood tasks accepted", fmt(agg, "flood_tasks_accepted", 0)))
    return rows


if __name__ == "__main__":
    sys.exit(main())
