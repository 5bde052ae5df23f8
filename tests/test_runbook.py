"""docs/operations.md cannot rot: every command of the runbook is run, in order, with the real
grpcurl (and redis-cli, aitbc-coordinator) against two live coordinator processes, and its
output is compared with the documented one.

The runbook's syntax, which the parser below relies on:

- Only ```console blocks are run. A line starting with ``$ `` starts a command; the
  following lines continue it while bash says it is incomplete (an open quote such as
  ``-d '{...``, a ``for ... done``) or the line ends with ``\\``. The other lines, up to the
  next command or the end of the block, are its documented output.
- Commands run top to bottom in bash (``set -eo pipefail``); variables one command assigns
  are seen by the next, as in an operator's shell. ``ADDR`` is node A's address and
  ``REDIS_URL`` the Redis of the cluster.
- Output is compared line by line (stdout and stderr together, trailing blanks ignored)
  after replacing what differs between runs (times, task ids, fencing tokens, queue ages)
  in both, and without the submit-to-assignment latencies; a line holding only ``...``
  stands for any number of lines.

The runbook assumes an agent, ``gpu-worker-01``, connected to the cluster: the test runs one
(``RunbookAgent``, on node B) that completes ``summarize`` tasks and fails ``transcode``
tasks.

To refresh the outputs after a deliberate change, run with ``RUNBOOK_RECORD=FILE``: the
runbook is written to FILE with every output replaced by the real one (outputs are then not
compared, only the commands' success); copy what is right back, keeping the ``...`` lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from agent_harness import ScriptedAgent
from aitbc.coordinator.v1 import task_pb2
from auth.auth_support import bearer_interceptors
from coordinator.server import SERVICE_NAMES
from support import RedisServer
from tls_support import Pki, health_over

ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = ROOT / "docs" / "operations.md"
BIN = os.path.dirname(sys.executable)
GRPCURL = shutil.which("grpcurl", path=BIN)
COMMAND_TIMEOUT_S = 30.0

FENCE = re.compile(r"^```(\S*)\s*$")
ELLIPSIS = "..."

# What differs from run to run, replaced in the documented and the real output alike.
VOLATILE = [
    (re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z"), "<time>"),
    (re.compile(r"\b[0-9a-f]{32}\b"), "<task-id>"),
    (re.compile(r"\b\d+:[0-9a-f]{16}\b"), "<fencing-token>"),
    (re.compile(r'("oldestTaskAge": ")[0-9.]+s"'), r'\1<age>"'),
]
# Lines left out of the comparison altogether: a latency is absent (zero) or not, by chance.
UNCOMPARED = re.compile(r'^\s*"(?:avg|p99)SubmitToAssignmentMs": ')


@dataclasses.dataclass
class Step:
    """One command of the runbook and the output documented under it."""

    command: str
    expected: list[str]
    line: int
    """1-based line of the command's ``$ `` in the runbook."""


def is_complete(command: str) -> bool:
    """True when bash would run ``command`` as it stands (no open quote, loop or ``\\``)."""
    if command.endswith("\\"):
        return False
    checked = subprocess.run(["bash", "-n"], input=command, capture_output=True, text=True)
    return checked.returncode == 0


def parse_runbook(text: str) -> list[Step]:
    """The commands of every ```console block, in order, with their documented output."""
    steps: list[Step] = []
    in_console = False
    pending: Step | None = None  # a command still taking continuation lines
    for number, line in enumerate(text.splitlines(), start=1):
        fence = FENCE.match(line)
        if fence:
            if in_console and pending is not None:
                raise ValueError(f"line {pending.line}: the command never ends: {pending.command}")
            in_console = not in_console and fence.group(1) == "console"
            continue
        if not in_console:
            continue
        if pending is not None:
            pending.command += "\n" + line
            if is_complete(pending.command):
                steps.append(pending)
                pending = None
        elif line.startswith("$ "):
            step = Step(command=line[2:], expected=[], line=number)
            if is_complete(step.command):
                steps.append(step)
            else:
                pending = step
        elif steps and steps[-1].line <= number:
            steps[-1].expected.append(line)
        else:
            raise ValueError(f"line {number}: output before any command in a console block")
    return steps


def normalise(lines: list[str]) -> list[str]:
    """Lines without trailing blanks, with the volatile values replaced."""
    result = []
    for line in lines:
        if UNCOMPARED.match(line):
            continue
        for pattern, replacement in VOLATILE:
            line = pattern.sub(replacement, line)
        result.append(line.rstrip())
    while result and not result[-1]:
        result.pop()
    return result


def output_matches(expected: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` matches ``expected`` line by line, ``...`` lines matching any run
    of lines (including none)."""
    # matches[i][j]: expected[i:] matches actual[j:]
    rows, cols = len(expected), len(actual)
    matches = [[False] * (cols + 1) for _ in range(rows + 1)]
    matches[rows][cols] = True
    for i in range(rows - 1, -1, -1):
        wildcard = expected[i].strip() == ELLIPSIS
        for j in range(cols, -1, -1):
            if wildcard:
                matches[i][j] = matches[i + 1][j] or (j < cols and matches[i][j + 1])
            else:
                matches[i][j] = j < cols and expected[i] == actual[j] and matches[i + 1][j + 1]
    return matches[0][0]


async def run_step(step: Step, env: dict[str, str]) -> tuple[int, str, dict[str, str]]:
    """Run one command in bash; returns its exit code, output and the environment after it
    (``set -a`` exports every variable it assigns, the EXIT trap writes them out)."""
    with tempfile.NamedTemporaryFile(prefix="runbook-env-") as env_out:
        script = f"set -eo pipefail -a\ntrap 'env -0 > {env_out.name}' EXIT\n{step.command}\n"
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            script,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(
                f"runbook line {step.line}: still running after {COMMAND_TIMEOUT_S} s: "
                f"{step.command}"
            ) from None
        env_out.seek(0)
        pairs = env_out.read().decode().split("\0")
    after = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
    return process.returncode or 0, output.decode(errors="replace"), after


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


def command_environment(
    address: str, redis_url: str, ca_file: str = "", operator_token: str = ""
) -> dict[str, str]:
    """What an operator's shell would have after the runbook's set-up section."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COORDINATOR_", "REDIS_URL", "NODE_ID", "PYTEST_"))
    }
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "ADDR": address,
            "REDIS_URL": redis_url,
            "CA": ca_file,
            "AUTH": f"authorization: Bearer {operator_token}",
            "LC_ALL": "C",
        }
    )
    return env


def record(steps: list[Step], outputs: list[str], path: Path) -> None:
    """Write the runbook with each documented output replaced by the real one."""
    lines = RUNBOOK.read_text().splitlines()
    # Index of each step's first output line -> (index after its outputs, the real output).
    spans: dict[int, tuple[int, list[str]]] = {}
    for step, output in zip(steps, outputs, strict=True):
        first = step.line + step.command.count("\n")
        spans[first] = (first + len(step.expected), output.rstrip("\n").splitlines())
    result: list[str] = []
    index = 0
    while index < len(lines):
        if index in spans:
            index_after, real = spans.pop(index)
            result.extend(real)
            index = index_after
            continue
        result.append(lines[index])
        index += 1
    path.write_text("\n".join(result) + "\n")


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
    steps = parse_runbook(RUNBOOK.read_text())
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
    outputs: list[str] = []
    try:
        env = command_environment(
            f"localhost:{node_a.port}", redis_url, str(pki.ca_file), operator_token
        )
        for step in steps:
            code, output, env = await run_step(step, env)
            outputs.append(output)
            where = f"docs/operations.md line {step.line}: {step.command}"
            assert code == 0, f"{where}\nexit code {code}, output:\n{output}"
            if recording:
                continue
            expected = normalise(step.expected)
            actual = normalise(output.splitlines())
            assert output_matches(expected, actual), (
                f"{where}\nthe output differs from the documented one:\n"
                + "\n".join(
                    difflib.unified_diff(expected, actual, "documented", "real", lineterm="")
                )
            )
    finally:
        await agent.stop()
        await channel.close()
        if recording:
            record(steps[: len(outputs)], outputs, Path(recording))


def test_the_runbook_covers_every_operation_operators_need() -> None:
    commands = "\n".join(step.command for step in parse_runbook(RUNBOOK.read_text()))
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
    steps = parse_runbook(SAMPLE)
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
        parse_runbook("```console\n$ grpcurl -d '{\n```\n")


def test_output_matching_with_ellipsis_and_volatile_values() -> None:
    documented = normalise(['  "taskId": "6040991ff3a84d87b7d34669d11a9f04",', "  ...", "}"])
    real = normalise(['  "taskId": "0123456789abcdef0123456789abcdef",', "  a", "  b", "}"])
    assert output_matches(documented, real)
    assert output_matches(normalise(["...", "}"]), ["}"])
    assert not output_matches(normalise(["{", "}"]), ["{", "  x", "}"])
    assert not output_matches(["SERVING"], ["NOT_SERVING"])
