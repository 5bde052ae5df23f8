#!/usr/bin/env python3
"""Idle watchers (issue 14, defect 16): what ``--watchers`` WatchTask streams on tasks that
never change cost a node. The scenario measures the node's CPU and Redis's commands per
second over a window with no watcher, then over the same window with every watcher open.

As a script this is the watching client: it submits ``--watchers`` tasks that no agent can
take (so they never change), writes OUT.submitted, waits for OUT.go, opens one WatchTask per
task over ``--channels`` connections, writes OUT.ready once each stream has its first
message, and holds them until SIGTERM; then writes OUT (messages and errors counted). (OUT.go
is polled in a thread: the loop stays free.) The
harness (bench/run_benchmarks.py, scenario ``watchers``) imports ``scenario_watchers``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from aitbc.coordinator.v1 import task_pb2, task_pb2_grpc

UNTAKEN_CAPABILITY = "watch-only"
"""No agent has it: the watched tasks stay PENDING."""


# ------------------------------------------------------------------------- the client


async def watch(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    channels = [grpc.aio.insecure_channel(args.address) for _ in range(args.channels)]
    stubs = [task_pb2_grpc.TaskServiceStub(c) for c in channels]
    requirements = task_pb2.TaskRequirements(capabilities=[UNTAKEN_CAPABILITY])
    task_ids: list[str] = []
    while len(task_ids) < args.watchers:
        size = min(1000, args.watchers - len(task_ids))
        reply = await stubs[0].SubmitTasks(
            task_pb2.SubmitTasksRequest(
                tasks=[
                    task_pb2.SubmitTaskRequest(task_type="watched", requirements=requirements)
                    for _ in range(size)
                ]
            ),
            timeout=60,
        )
        task_ids += [r.task_id for r in reply.results]
    touch(f"{out}.submitted")
    await asyncio.to_thread(wait_for_file, f"{out}.go")
    messages = 0
    errors: dict[str, int] = {}
    opened = 0
    all_open = asyncio.Event()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def watcher(i: int, task_id: str) -> None:
        nonlocal messages, opened
        call = stubs[i % len(stubs)].WatchTask(task_pb2.WatchTaskRequest(task_id=task_id))
        first = True
        try:
            async for _ in call:
                messages += 1
                if first:
                    first = False
                    opened += 1
                    if opened == len(task_ids):
                        all_open.set()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1

    watchers = [asyncio.create_task(watcher(i, t)) for i, t in enumerate(task_ids)]
    await all_open.wait()
    touch(f"{out}.ready")
    await stop.wait()
    for task in watchers:
        task.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    for channel in channels:
        await channel.close()
    return {"watchers": len(task_ids), "messages": messages, "errors": errors}


def touch(path: str) -> None:
    Path(path).touch()


def wait_for_file(path: str) -> None:
    while not Path(path).exists():
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = asyncio.run(watch(args))
    out = Path(args.out)
    out.with_suffix(".tmp").write_text(json.dumps(result))
    out.with_suffix(".tmp").rename(out)
    return 0


# ------------------------------------------------------------------------- the scenario

FULL = {"watchers": 1000, "window_s": 10.0}
QUICK = {"watchers": 100, "window_s": 2.0}


def _window(bench: Any, node_pid: int, seconds: float) -> dict[str, float]:
    """Node CPU % and Redis commands/s over ``seconds`` (the two INFO calls left out)."""
    from processes import cpu_s

    client = bench.coordinator_db()
    try:
        cpu_before = cpu_s(node_pid)
        commands_before = int(client.info("stats")["total_commands_processed"])
        time.sleep(seconds)
        commands = int(client.info("stats")["total_commands_processed"]) - commands_before - 1
        cpu = cpu_s(node_pid) - cpu_before
    finally:
        client.close()
    return {
        "node_cpu_percent": round(100 * cpu / seconds, 1),
        "redis_commands_per_s": round(commands / seconds, 1),
    }


def scenario_watchers(bench: Any) -> dict[str, Any]:
    """One run: a node, no agent, the watching client; idle then watched windows."""
    from processes import wait_until

    sizes = QUICK if bench.args.quick else FULL
    (node,) = bench.start_nodes(1)
    try:
        out = bench.next_path("watchers")
        bench.python_child(
            "watchers.py",
            ["--address", node.address, "--watchers", str(sizes["watchers"]), "--out", str(out)],
        )
        bench.wait_files([Path(f"{out}.submitted")], "the watched tasks", 60)
        time.sleep(1.0)  # the submits' dispatch passes end
        idle = _window(bench, node.pid, sizes["window_s"])
        Path(f"{out}.go").touch()
        wait_until("every watcher", lambda: Path(f"{out}.ready").exists(), 120)
        time.sleep(1.0)
        watched = _window(bench, node.pid, sizes["window_s"])
        for child in bench.children:
            if "watchers.py" in " ".join(map(str, child.args)) and child.poll() is None:
                child.send_signal(signal.SIGTERM)
        bench.wait_files([out], "the watching client's report", 60)
    finally:
        bench.stop_run()
    report = json.loads(out.read_text())
    return {
        "watchers": report["watchers"],
        "window_s": sizes["window_s"],
        "no_watchers": idle,
        "with_watchers": watched,
        # Each watcher got its first message and nothing more: its task never changed.
        "watch_messages": report["messages"],
        "errors": report["errors"],
    }


def table_rows(title: str, agg: dict[str, Any], fmt: Any) -> list[tuple[str, str, str]]:
    """The rows of the printed table (``fmt`` is the harness's)."""
    cpu = (
        f"{fmt(agg, 'no_watchers.node_cpu_percent')} → {fmt(agg, 'with_watchers.node_cpu_percent')}"
    )
    commands = (
        f"{fmt(agg, 'no_watchers.redis_commands_per_s')} → "
        f"{fmt(agg, 'with_watchers.redis_commands_per_s')}"
    )
    return [
        (title, "node CPU %: no watcher → idle watchers", cpu),
        (title, "Redis commands/s: no watcher → idle watchers", commands),
    ]


if __name__ == "__main__":
    sys.exit(main())
