"""docs/operations.md cannot rot: every command of the runbook is run, in order, with the real
grpcurl (and redis-cli, aitbc-coordinator) against two live coordinator processes, and its
output is compared with the documented one.

The page's syntax, the comparison and how to refresh outputs are those of every docs page:
tests/docs_support.py (``RUNBOOK_RECORD=FILE`` writes this page's refreshed copy to FILE).
``ADDR`` is node A's address and ``REDIS_URL`` the Redis of the cluster.

The runbook assumes an agent, ``gpu-worker-01``, connected to the cluster: the test runs one
(``RunbookAgent``, on node B) that completes ``summarize`` tasks and fails ``transcode``
tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from agent_harness import ScriptedAgent
from aitbc.coordinator.v1 import task_pb2
from auth.auth_support import bearer_interceptors
from coordinator.server import SERVICE_NAMES
from docs_support import (
    DOCS,
    GRPCURL,
    ROOT,
    command_environment,
    normalise,
    output_matches,
    parse_console,
    run_page,
)
from support import RedisServer
from tls_support import Pki, health_over

RUNBOOK = DOCS / "operations.md"


class RunbookAgent:
    """The agent the runbook assumes: ``gpu-worker-01`` completes ``summarize`` tasks and
    fails ``transcode`` tasks for good; each assignment is handled once (repeats of an
    assignment are at-least-once deliveries)."""

    def __init__(self, channel) -> None:
        self.agent = ScriptedAgent(
            channel,
            "gpu-worker-01",
            agent_type="inference",
            capabilities=("text-generation",),
            max_concurrency=2,
        )
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.agent.start()
        self._worker = asyncio.create_task(self._work())

    async def _work(self) -> None:
        seen: set[tuple[str, int]] = set()
        while True:
            assignment = await self.agent.assignments.get()
            if (assignment.task_id, assignment.attempt) in seen:
                continue
            seen.add((assignment.task_id, assignment.attempt))
            await self.agent.acknowledge(assignment)
            if assignment.task_type == "summarize":
                await self.agent.complete(assignment, summary="A fox.")
            else:
                await self.agent.tasks.FailTask(
                    task_pb2.FailTaskRequest(
                        task_id=assignment.task_id,
                        agent_id=self.agent.agent_id,
                        fencing_token=assignment.fencing_token,
                        error=task_pb2.TaskError(
                            message="no video codec on this host",
                            type="UnsupportedCodec",
                            retryable=False,
                            details=Struct(),
                        ),
                    )
                )

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        await self.agent.stop()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own: the runbook lists every client connected to Redis,
    which on the session Redis could include other tests' nodes."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


async def test_every_runbook_command_runs_and_prints_what_is_documented(
    spawn_node, private_redis, tmp_path
) -> None:
    """Against two nodes with TLS and token authentication, as deployed: the commands use an
    operator's token, the agent a token that may act as gpu-worker-01 only."""
    assert GRPCURL, f"grpcurl is not installed next to {sys.executable} (pip install -e '.[dev]')"
    redis_url = private_redis.url(1)
    pki = Pki.create(tmp_path / "tls", names=("localhost",))
    operator_token, agent_token = secrets.token_hex(32), secrets.token_hex(32)
    tokens = tmp_path / "tokens.csv"
    tokens.write_text(
        f"sha256:{hashlib.sha256(operator_token.encode()).hexdigest()},ops-runbook,operator,\n"
        f"sha256:{hashlib.sha256(agent_token.encode()).hexdigest()},gpu-fleet,agent,"
        "gpu-worker-01\n"
    )
    secured = {
        "REDIS_URL": redis_url,
        "COORDINATOR_TLS_CERT_FILE": str(pki.cert_file),
        "COORDINATOR_TLS_KEY_FILE": str(pki.key_file),
        "COORDINATOR_AUTH_TOKEN_FILE": str(tokens),
    }
    node_a = spawn_node({"NODE_ID": "node-a", **secured})
    node_b = spawn_node({"NODE_ID": "node-b", **secured})
    for node in (node_a, node_b):
        for _ in range(200):
            if await health_over(node.port, pki.channel_credentials(), 1.0) == "SERVING":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"node on {node.port} never SERVING:\n{node.logs()}")

    channel = grpc.aio.secure_channel(
        f"localhost:{node_b.port}",
        pki.channel_credentials(),
        interceptors=bearer_interceptors(agent_token),
    )
    agent = RunbookAgent(channel)
    await agent.start()
    recording = os.environ.get("RUNBOOK_RECORD")
    try:
        env = command_environment(
            f"localhost:{node_a.port}", redis_url, str(pki.ca_file), operator_token
        )
        await run_page(RUNBOOK, env, cwd=ROOT, record_to=Path(recording) if recording else None)
    finally:
        await agent.stop()
        await channel.close()


def test_the_runbook_covers_every_operation_operators_need() -> None:
    commands = "\n".join(step.command for step in parse_console(RUNBOOK.read_text()))
    health = "grpc.health.v1.Health/Check"
    wanted = {
        "list": r'grpcurl -cacert \$CA -H "\$AUTH" \$ADDR list',
        "describe": r'grpcurl -cacert \$CA -H "\$AUTH" \$ADDR describe ',
        "health of the whole server": (
            rf'grpcurl -cacert \$CA -H "\$AUTH" \$ADDR {re.escape(health)}'
        ),
        **{
            f"health of {name}": rf"\{{\"service\": \"{re.escape(name)}\"\}}.*{re.escape(health)}"
            for name in SERVICE_NAMES
        },
        "the health command": r"aitbc-coordinator health --address \$ADDR --ca-file \$CA",
        "register": r"\$A/RegisterAgent",
        "discover": r"\$A/DiscoverAgents",
        "submit": r"\$T/SubmitTask",
        "watch": r"\$T/WatchTask",
        "stats": r"\$T/GetStats",
        "change the strategy": r"\$T/SetBalancingStrategy",
        "purge": r"\$T/PurgeQueue",
        "dead letters": r"\"dead_letter\": true.*\$T/ListTasks",
        "drain": r"AGENT_STATUS_MAINTENANCE.*\$A/UpdateAgentStatus",
        "undrain": r"\"status\": \"AGENT_STATUS_ACTIVE\".*\$A/UpdateAgentStatus",
        "live nodes": r"--scan --pattern 'coordinator:nodes:\*'",
    }
    missing = [what for what, pattern in wanted.items() if not re.search(pattern, commands)]
    assert not missing, f"docs/operations.md has no command for: {missing}"


def test_the_runbook_names_the_real_services() -> None:
    text = RUNBOOK.read_text()
    assert f"A={SERVICE_NAMES[0]}" in text
    assert f"T={SERVICE_NAMES[1]}" in text


SAMPLE = """\
Text with a $ line that is not in a console block.

```sh
$ not run
```

```console
$ echo one
one
$ grpcurl -d '{
  "a": 1
}' x y
{
  "b": 2
}
$ for n in 1 2; do
  echo $n
done
1
2
$ echo a \\
    b
a b
```
"""


def test_parser_joins_continuation_lines_and_keeps_outputs() -> None:
    steps = parse_console(SAMPLE)
    assert [s.command.splitlines()[0] for s in steps] == [
        "echo one",
        "grpcurl -d '{",
        "for n in 1 2; do",
        "echo a \\",
    ]
    assert steps[1].command.endswith("}' x y")
    assert steps[1].expected == ["{", '  "b": 2', "}"]
    assert steps[2].expected == ["1", "2"]
    assert steps[3].expected == ["a b"]
    assert steps[0].line == 8


def test_parser_refuses_a_command_left_open() -> None:
    with pytest.raises(ValueError, match="line 2: the command never ends"):
        parse_console("```console\n$ grpcurl -d '{\n```\n")


def test_output_matching_with_ellipsis_and_volatile_values() -> None:
    documented = normalise(['  "taskId": "6040991ff3a84d87b7d34669d11a9f04",', "  ...", "}"])
    real = normalise(['  "taskId": "0123456789abcdef0123456789abcdef",', "  a", "  b", "}"])
    assert output_matches(documented, real)
    assert output_matches(normalise(["...", "}"]), ["}"])
    assert not output_matches(normalise(["{", "}"]), ["{", "  x", "}"])
    assert not output_matches(["SERVING"], ["NOT_SERVING"])
