#!/usr/bin/env python3
"""The Celery side of the baselines: no-op tasks through Celery with Redis as the broker.

Runs with the interpreter of .venv/bench-celery (``make bench`` creates that venv from
bench/celery-requirements.txt, exact pins), so it imports nothing from the coordinator.

    celery_baseline.py worker --redis-port P --db D --expect N --out FILE
        one Celery worker, ``--pool=solo`` (one task at a time, in the worker's own process);
        the task records when it started, ``task_postrun`` when it ended; writes FILE once N
        tasks have ended. No result backend (nothing stores the no-op's result).
    celery_baseline.py submit --redis-port P --db D --count N --out FILE
        sends N tasks one after the other (``apply_async`` blocks until the broker has it),
        after one warm-up task that opens the broker connection (the worker expects N + 1);
    celery_baseline.py submit ... --rate R --duration S
        or task i when it falls due, at start + i/R, for S seconds; writes FILE.

Time stamps are ``time.time_ns``, comparable across processes on one machine; a submit's
is taken when the task fell due (paced) or just before ``apply_async``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import task_postrun, worker_ready

app = Celery("bench")
STARTED: dict[str, int] = {}


@app.task(name="noop", bind=True, ignore_result=True)
def noop(self: Any) -> None:
    """The no-op task: records when it started."""
    STARTED[self.request.id] = time.time_ns()


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` at once (the harness waits for the file to exist)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.rename(path)


def configure(args: argparse.Namespace) -> None:
    """Redis as the broker; the worker's housekeeping chatter off, as in any benchmark."""
    app.conf.update(
        broker_url=f"redis://127.0.0.1:{args.redis_port}/{args.db}",
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )


def run_worker(args: argparse.Namespace) -> None:
    """One solo worker until SIGTERM; FILE once ``--expect`` tasks have ended."""
    out = Path(args.out)
    ended: dict[str, int] = {}

    @worker_ready.connect
    def ready(**_: Any) -> None:
        write_json(Path(f"{out}.ready"), {"ready": True})

    @task_postrun.connect
    def after(task_id: str, **_: Any) -> None:
        ended[task_id] = time.time_ns()
        if len(ended) == args.expect:
            records = [[task, STARTED.get(task, 0), t] for task, t in ended.items()]
            write_json(out, {"records": records})

    app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--loglevel=WARNING",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
        ]
    )


def submit(args: argparse.Namespace) -> None:
    """Send the tasks (as fast as possible, or paced at ``--rate``); write FILE."""
    records: list[tuple[str, int, int]] = []
    count = int(args.rate * args.duration) if args.rate else args.count
    noop.delay()  # the broker connection is made before the measured phase
    started = time.time_ns()
    for i in range(count):
        submitted = time.time_ns()
        if args.rate:
            due = started + int(i * 1e9 / args.rate)
            if due > submitted:
                time.sleep((due - submitted) / 1e9)
            submitted = due
        result = noop.apply_async()
        records.append((result.id, submitted, time.time_ns()))
    finished = time.time_ns()
    write_json(
        Path(args.out),
        {"requested": count, "started_ns": started, "finished_ns": finished, "records": records},
    )


def main() -> int:
    """Run the worker or the submitter."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=("worker", "submit"))
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--db", type=int, default=3)
    parser.add_argument("--out", required=True)
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0.0, help="tasks/s; 0: as fast as possible")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds, with --rate")
    args = parser.parse_args()
    configure(args)
    if args.role == "worker":
        run_worker(args)
    else:
        submit(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
