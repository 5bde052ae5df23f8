"""The benchmark's arithmetic: percentiles, medians over runs, Redis commands per task, and the
joining of submitters' and agents' time stamps by task id (every scenario uses these)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis


def load(path: Path) -> dict[str, Any]:
    """A JSON file a child process wrote."""
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def latency_summary(values_ms: list[float]) -> dict[str, float]:
    """p50, p90, p99 and max of latencies in ms (empty when there are none)."""
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
    """Redis commands per completed task, in total and for the twelve most frequent commands
    (INFO and CONFIG, the harness's own, are left out)."""
    own = {"info", "config", "config|resetstat", "hget", "ping"}
    counted = {k: v for k, v in commands.items() if k not in own}
    top = sorted(counted.items(), key=lambda kv: -kv[1])[:12]
    return {
        "total": round(sum(counted.values()) / max(tasks, 1), 2),
        "by_command": {k: round(v / max(tasks, 1), 2) for k, v in top},
    }


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
    """RuntimeError unless all ``expected`` tasks were submitted and completed."""
    if len(submitted) != expected:
        raise RuntimeError(f"{len(submitted)} of {expected} tasks were submitted")
    missing = [t for t in submitted if t not in received or received[t][2] == 0]
    if missing:
        raise RuntimeError(f"{len(missing)} tasks never completed (e.g. {missing[0]})")
