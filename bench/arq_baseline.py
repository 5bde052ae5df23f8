#!/usr/bin/env python3
"""The arq side of the baseline scenario: the same no-op drain through arq (a Redis job queue).

Runs with the interpreter of .venv/bench-arq (arq 0.28 needs redis-py < 6, the coordinator
8.1; ``make bench`` creates that venv), so it imports nothing from the coordinator.

    arq_baseline.py worker --redis-port P --db D --expect N --out FILE
        one arq Worker (max_jobs=100, poll_delay=0.01); records when each job started and
        when its result was recorded (after_job_end); writes FILE once N jobs have ended.
    arq_baseline.py submit --redis-port P --db D --count N --in-flight C --out FILE
        enqueues N jobs, C enqueue_job calls at once; writes FILE.

Time stamps are ``time.time_ns``, comparable across processes on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker, func


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.rename(path)


def run_worker(args: argparse.Namespace) -> None:
    started: dict[str, int] = {}
    ended: dict[str, int] = {}
    out = Path(args.out)

    async def noop(ctx: dict[str, Any]) -> None:
        started[ctx["job_id"]] = time.time_ns()

    async def after_job_end(ctx: dict[str, Any]) -> None:
        ended[ctx["job_id"]] = time.time_ns()
        if len(ended) == args.expect:
            records = [[job, started.get(job, 0), t] for job, t in ended.items()]
            write_json(out, {"records": records})

    async def on_startup(ctx: dict[str, Any]) -> None:
        write_json(Path(f"{out}.ready"), {"ready": True})  # a few bytes: blocking is fine

    worker = Worker(
        functions=[func(noop, name="noop")],
        redis_settings=RedisSettings(port=args.redis_port, database=args.db),
        max_jobs=args.max_jobs,
        poll_delay=args.poll_delay,
        on_startup=on_startup,
        after_job_end=after_job_end,
        handle_signals=True,
    )
    worker.run()


async def submit(args: argparse.Namespace) -> None:
    pool = await create_pool(RedisSettings(port=args.redis_port, database=args.db))
    records: list[tuple[str, int, int]] = []
    errors = 0
    numbers = iter(range(args.count))

    async def enqueue() -> None:
        nonlocal errors
        for _ in numbers:
            submitted = time.time_ns()
            job = await pool.enqueue_job("noop")
            if job is None:
                errors += 1
                continue
            records.append((job.job_id, submitted, time.time_ns()))

    started = time.time_ns()
    await asyncio.gather(*(enqueue() for _ in range(args.in_flight)))
    finished = time.time_ns()
    await pool.aclose()
    write_json(
        Path(args.out),
        {
            "requested": args.count,
            "started_ns": started,
            "finished_ns": finished,
            "records": records,
            "errors": {"not_enqueued": errors} if errors else {},
        },
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=("worker", "submit"))
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--db", type=int, default=2)
    parser.add_argument("--out", required=True)
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--max-jobs", type=int, default=100)
    parser.add_argument("--poll-delay", type=float, default=0.01)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=128)
    args = parser.parse_args()
    if args.role == "worker":
        run_worker(args)
    else:
        asyncio.run(submit(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
