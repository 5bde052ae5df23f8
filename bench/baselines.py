"""The baselines beside the coordinator, in the same run on the same redis-server: the drain
through arq (6) and through Celery, and a bare grpc.aio echo server (the CPU yardstick of one
unary call). arq and Celery run in venvs of their own (``make bench`` makes them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from figures import commands_per_task, latency_summary, load, redis_commands
from harness import ARQ_DB, CELERY_DB, Bench
from processes import cpu_s, free_port, wait_until
from targets import UNARY_RATE


def scenario_arq(bench: Bench) -> dict[str, Any]:
    """The plan's drain through one arq worker (max_jobs=100, poll_delay=0.01), db 2."""
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


def _celery_phase(bench: Bench, name: str, count: int, submit_options: list[str]) -> dict[str, Any]:
    """One fresh solo worker and one submitter of ``count`` tasks (plus the submitter's
    warm-up task): the tasks' time stamps joined by id, and the submit rate."""
    python = bench.args.celery_python
    db = bench.redis.client(CELERY_DB)
    db.flushdb()
    port = ["--redis-port", str(bench.redis.port), "--db", str(CELERY_DB)]
    try:
        worker_out = bench.next_path(f"celery-worker-{name}")
        argv = ["worker", *port, "--expect", str(count + 1), "--out", str(worker_out)]
        bench.python_child("celery_baseline.py", argv, python)
        wait_until("the Celery worker", lambda: Path(f"{worker_out}.ready").exists(), 60)
        submit_out = bench.next_path(f"celery-submitter-{name}")
        argv = ["submit", *port, *submit_options, "--out", str(submit_out)]
        submitter = bench.python_child("celery_baseline.py", argv, python)
        bench.wait_exit([submitter], "the Celery submitter", 600)
        bench.wait_files([worker_out], "the Celery tasks", 600)
    finally:
        bench.stop_run()
        db.close()
    submits = load(submit_out)
    ended = {task: (started, end) for task, started, end in load(worker_out)["records"]}
    submitted = {task: t for task, t, _ in submits["records"]}
    if len(submitted) != count or not set(submitted) <= set(ended):
        raise RuntimeError(f"Celery {name}: {len(submitted)} sent, {len(ended)} ended")
    first = submits["started_ns"]
    last_reply = max(t for _, _, t in submits["records"])
    last_end = max(ended[task][1] for task in submitted)
    return {
        "tasks": count,
        "submit_per_s": round(count / ((last_reply - first) / 1e9), 1),
        "completed_per_s": round(count / ((last_end - first) / 1e9), 1),
        "submit_to_started": latency_summary(
            [(ended[t][0] - s) / 1e6 for t, s in submitted.items()]
        ),
        "submit_to_completed": latency_summary(
            [(ended[t][1] - s) / 1e6 for t, s in submitted.items()]
        ),
    }


def scenario_celery(bench: Bench) -> dict[str, Any]:
    """The plan's drain through one Celery worker (``--pool=solo``), then the steady rate of
    issue 17 (enqueue → task started), each with a fresh worker, db 3."""
    plan = bench.plan
    drain = _celery_phase(bench, "drain", plan.drain_tasks, ["--count", str(plan.drain_tasks)])
    steady_tasks = int(UNARY_RATE * plan.steady_s)
    paced = ["--rate", str(UNARY_RATE), "--duration", str(plan.steady_s)]
    steady = _celery_phase(bench, "steady", steady_tasks, paced)
    return {**drain, "steady": {"rate_per_s": UNARY_RATE, **steady}}


def _echo_phase(bench: Bench, calls: int, in_flight: int) -> dict[str, Any]:
    """A fresh echo server and one client of ``calls`` calls, ``in_flight`` at once: the
    server's CPU per measured call, and the client's figures."""
    port = free_port()
    ready = bench.workdir / f"echo-{port}.ready"
    server = bench.python_child(
        "grpc_echo.py", ["server", "--port", str(port), "--ready-file", str(ready)]
    )
    try:
        wait_until("the echo server", ready.exists, 30)
        out = bench.next_path(f"echo-client-{in_flight}")
        argv = [
            "client",
            "--address",
            f"127.0.0.1:{port}",
            "--calls",
            str(calls),
            "--in-flight",
            str(in_flight),
            "--out",
            str(out),
        ]
        bench.python_child("grpc_echo.py", argv)
        bench.wait_files([Path(f"{out}.warm")], "the echo client's warm-up", 60)
        cpu_before = cpu_s(server.pid)
        Path(f"{out}.go").write_text("yes\n")
        bench.wait_files([Path(f"{out}.calls_done")], "the echo calls", 600)
        server_cpu_s = cpu_s(server.pid) - cpu_before
        bench.wait_files([out], "the echo client's figures", 60)
    finally:
        bench.stop_run()
    client = load(out)
    return {**client, "server_cpu_us_per_call": round(server_cpu_s / client["calls"] * 1e6, 1)}


def scenario_echo(bench: Bench) -> dict[str, Any]:
    """A bare grpc.aio unary echo, its server's CPU per call: with as many calls in flight as
    the unary drain submits (the target's yardstick), and one at a time."""
    plan = bench.plan
    return {
        "concurrent": _echo_phase(bench, plan.drain_tasks, plan.in_flight),
        "sequential": _echo_phase(bench, max(500, plan.drain_tasks // 4), 1),
    }
