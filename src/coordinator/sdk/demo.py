"""The demo agent and submit commands (``python -m coordinator agent`` / ``submit``): a task
goes round without writing any code."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from coordinator.sdk.agent import Agent
from coordinator.sdk.client import Client
from coordinator.sdk.context import TaskContext
from coordinator.sdk.credentials import TlsOptions
from coordinator.sdk.errors import PermanentError, RpcError, TaskNotCompleted

DEFAULT_SLEEP_S = 1.0


def _show(data: Any) -> str:
    return json.dumps(data, separators=(", ", ": "), sort_keys=True)


async def demo_handler(task: TaskContext) -> dict[str, Any]:
    """``echo`` returns its input; ``sleep`` waits ``data["seconds"]`` (the agent extends the
    lease meanwhile); ``fail`` raises (``data["permanent"]`` true: no retry); anything else
    gets a generic answer."""
    print(
        f"[{task.agent_id}] task {task.task_id} attempt {task.attempt}: {task.task_type} {_show(task.data)}",
        flush=True,
    )
    if task.task_type == "echo":
        result = dict(task.data)
    elif task.task_type == "sleep":
        seconds = task.data.get("seconds", DEFAULT_SLEEP_S)
        await asyncio.sleep(float(seconds))
        result = {"slept_s": seconds}
    elif task.task_type == "fail":
        permanent = bool(task.data.get("permanent"))
        print(
            f"[{task.agent_id}] task {task.task_id} fails ({'permanent' if permanent else 'retryable'})",
            flush=True,
        )
        if permanent:
            raise PermanentError("the demo was asked to fail for good")
        raise RuntimeError("the demo was asked to fail")
    else:
        result = {"handled_by": task.agent_id, "task_type": task.task_type, "data": task.data}
    print(f"[{task.agent_id}] task {task.task_id} done: {_show(result)}", flush=True)
    return result


def _show_connection_and_lease_logs() -> None:
    """Connection events (registered, stream open, reconnecting) and lease renewals, one
    short line each; the handler prints the tasks themselves."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(agent_id)s] %(message)s"))
    for name in ("coordinator.sdk.agent", "coordinator.sdk.lease"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.propagate = False
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")


def run_demo_agent(
    addresses: Sequence[str],
    agent_id: str,
    *,
    agent_type: str,
    capabilities: Sequence[str],
    max_concurrency: int,
    deregister_on_stop: bool,
    tls: TlsOptions | None = None,
    token_file: str | None = None,
) -> int:
    """Run the demo agent until SIGTERM or Ctrl-C; exit code 0, or 1 if it was refused."""
    _show_connection_and_lease_logs()
    agent = Agent(
        agent_id,
        demo_handler,
        addresses=addresses,
        agent_type=agent_type,
        capabilities=capabilities,
        max_concurrency=max_concurrency,
        deregister_on_stop=deregister_on_stop,
        tls=tls,
        token_file=token_file,
    )
    print(
        f"[{agent_id}] demo agent connecting to {', '.join(addresses)}; task types: echo, sleep, fail, any other",
        flush=True,
    )
    try:
        agent.run_forever()
    except RpcError as exc:
        print(f"[{agent_id}] refused: {exc}", file=sys.stderr)
        return 1
    return 0


async def _submit(
    addresses: Sequence[str],
    task_type: str,
    data: dict[str, Any],
    priority: str,
    wait: bool,
    timeout_s: float,
    lease_s: float | None,
    tls: TlsOptions | None,
    token_file: str | None,
) -> int:
    async with Client(addresses, tls=tls, token_file=token_file) as client:
        task = await client.submit(task_type, data, priority=priority, start_to_close_s=lease_s)
        print(f"submitted task {task.task_id} ({task.task_type}, {task.priority.name})", flush=True)
        if not wait:
            return 0
        try:
            result = await client.wait(task.task_id, timeout_s=timeout_s)
        except TaskNotCompleted as exc:
            print(f"{exc.task.state.name}: {exc}", file=sys.stderr)
            return 1
        print(_show(result))
        return 0


def submit_command(
    addresses: Sequence[str],
    task_type: str,
    data_json: str,
    *,
    priority: str,
    wait: bool,
    timeout_s: float,
    lease_s: float | None = None,
    tls: TlsOptions | None = None,
    token_file: str | None = None,
) -> int:
    """Submit one task, print its id and, with ``wait``, its result (exit 1 if it failed)."""
    try:
        data = json.loads(data_json)
    except json.JSONDecodeError as exc:
        print(f"--data: not JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(data, dict):
        print("--data: must be a JSON object, e.g. '{\"x\": 1}'", file=sys.stderr)
        return 2
    try:
        return asyncio.run(
            _submit(addresses, task_type, data, priority, wait, timeout_s, lease_s, tls, token_file)
        )
    except (RpcError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"error: no result within {timeout_s} s", file=sys.stderr)
        return 1
