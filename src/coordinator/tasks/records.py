"""A task's stored hash and the domain Task: how ``lua/submit_task.lua`` and the other
task scripts lay a task out in Redis (``task:{task_id}``), read back into a Task."""

from __future__ import annotations

import json
from typing import Any

from coordinator.strategies import Strategy
from coordinator.tasks.models import (
    Attempt,
    Priority,
    Requirements,
    RetryPolicy,
    Task,
    TaskError,
    TaskState,
    TaskSubmission,
    Transition,
)


def decode_task(record: dict[str, str]) -> Task:
    """A Task from its stored hash."""
    lease = record.get("lease_expires_at_ms", "")
    return Task(
        task_id=record["task_id"],
        task_type=record.get("task_type", ""),
        state=TaskState[record["state"]],
        priority=Priority[record["priority"]],
        task_data=json.loads(record.get("task_data") or "{}"),
        requirements=Requirements.from_json(record["requirements"]),
        max_attempts=int(record["max_attempts"]),
        attempt=int(record["attempt"]),
        agent_id=record.get("agent_id", ""),
        schedule_to_start_s=int(record["schedule_to_start_ms"]) / 1000,
        start_to_close_s=int(record["start_to_close_ms"]) / 1000,
        retry_policy=RetryPolicy.from_json(record["retry"]),
        request_id=record.get("request_id", ""),
        strategy=Strategy.parse(record["strategy"]) if record.get("strategy") else None,
        routing_key=record.get("routing_key", ""),
        result=json.loads(record["result"]) if record.get("result") else None,
        error=TaskError.from_dict(json.loads(record["error"])) if record.get("error") else None,
        attempts=tuple(_attempt(a) for a in json.loads(record.get("attempts") or "[]")),
        transitions=tuple(_transition(t) for t in json.loads(record.get("transitions") or "[]")),
        created_at_ms=int(record["created_at_ms"]),
        updated_at_ms=int(record["updated_at_ms"]),
        lease_expires_at_ms=int(float(lease)) if lease else None,
        dead_lettered=record.get("dead_lettered") == "1",
        fencing_token=record.get("fencing_token", ""),
        seq=int(record.get("seq") or 0),
        submitted_by=record.get("submitted_by", ""),
    )


def as_submitted(
    s: TaskSubmission, task_id: str, created_at_ms: int, seq: int, submitted_by: str
) -> Task:
    """The task exactly as ``lua/submit_task.lua`` stored it, without reading it back.

    Requirements, durations and the retry policy go through their stored form (sorted
    lists, whole milliseconds), so this equals what GetTask returns (tests/tasks/test_task_lifecycle.py compares them).
    """
    return Task(
        task_id=task_id,
        task_type=s.task_type,
        state=TaskState.PENDING,
        priority=s.priority,
        task_data=s.task_data,
        requirements=Requirements.from_json(s.requirements.to_json()),
        max_attempts=s.max_attempts,
        attempt=0,
        agent_id="",
        schedule_to_start_s=round(s.schedule_to_start_s * 1000) / 1000,
        start_to_close_s=round(s.start_to_close_s * 1000) / 1000,
        retry_policy=RetryPolicy.from_json(s.retry_policy.to_json()),
        request_id=s.request_id,
        strategy=s.strategy,
        routing_key=s.routing_key,
        result=None,
        error=None,
        attempts=(),
        transitions=(Transition(TaskState.PENDING, created_at_ms, 0, "", "submitted"),),
        created_at_ms=created_at_ms,
        updated_at_ms=created_at_ms,
        lease_expires_at_ms=None,
        dead_lettered=False,
        fencing_token="",
        seq=seq,
        submitted_by=submitted_by,
    )


def _attempt(data: dict[str, Any]) -> Attempt:
    def ms(name: str) -> int | None:
        return int(data[name]) if name in data else None

    return Attempt(
        attempt=int(data["attempt"]),
        agent_id=data["agent_id"],
        node_id=data.get("node_id", ""),
        assigned_at_ms=int(data["assigned_at_ms"]),
        started_at_ms=ms("started_at_ms"),
        ended_at_ms=ms("ended_at_ms"),
        outcome=TaskState[data["outcome"]] if "outcome" in data else None,
        error=TaskError.from_dict(data["error"]) if "error" in data else None,
    )


def _transition(data: dict[str, Any]) -> Transition:
    return Transition(
        state=TaskState[data["state"]],
        at_ms=int(data["at_ms"]),
        attempt=int(data["attempt"]),
        agent_id=data.get("agent_id", ""),
        reason=data.get("reason", ""),
    )
