"""Running the commands a Markdown page shows, so that docs cannot drift from the code.

A page's syntax, which the parser relies on:

- Only ```console blocks are run. A line starting with ``$ `` starts a command; the
  following lines continue it while bash says it is incomplete (an open quote such as
  ``-d '{...``, a ``for ... done``) or the line ends with ``\\``. The other lines, up to the
  next command or the end of the block, are its documented output.
- ```python blocks are files: the first line must be ``# file: NAME``, and the runner writes
  the block to NAME in the commands' working folder before the first command runs, so a
  command such as ``$ python my_client.py`` runs exactly what the page shows.
- Every other block (```sh, ```text, ```py, ```dotenv, ```yaml, ```json, a bare fence) is
  shown only, never run: use them for what talks to nothing, a file to copy, a long-running
  foreground process's log, or a command the test environment cannot run (the page then
  says why).
- A command must succeed (exit code 0), unless the page shows it failing: its documented
  output has a line starting with ``ERROR:``, as grpcurl prints an error status.
- Commands run top to bottom in bash (``set -eo pipefail``), each in its own ``bash -c``;
  variables one command assigns are seen by the next, as in an operator's shell. Processes
  a command leaves in the background are killed when the page is done.
- Output is compared line by line (stdout and stderr together, trailing blanks ignored)
  after replacing what differs between runs (times, task ids, fencing tokens, queue ages,
  and whatever the page's test adds) in both, and without the submit-to-assignment
  latencies; a line holding only ``...`` stands for any number of lines.
- A test may rewrite a command before it runs (``rewrites``: e.g. the page's
  ``localhost:9001`` becomes the test node's address); the real output is rewritten back
  before it is compared, so the page reads as an operator would see it.

To refresh the outputs after a deliberate change, run with ``DOCS_RECORD=DIR`` (for
docs/operations.md also ``RUNBOOK_RECORD=FILE``): each page is written to DIR with every
output replaced by the real one (outputs are then not compared, only the commands'
success); copy what is right back, keeping the ``...`` lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BIN = os.path.dirname(sys.executable)
GRPCURL = shutil.which("grpcurl", path=BIN)
COMMAND_TIMEOUT_S = 30.0

FENCE = re.compile(r"^```(\S*)\s*$")
FILE_LINE = re.compile(r"^# file: (\S+)$")
ELLIPSIS = "..."
ERROR_LINE = "ERROR:"  # how grpcurl starts printing a call's error status
AGENT_SERVICE = "aitbc.coordinator.v1.AgentService"
TASK_SERVICE = "aitbc.coordinator.v1.TaskService"

# What differs from run to run, replaced in the documented and the real output alike.
VOLATILE = [
    (re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z"), "<time>"),
    (re.compile(r"\b[0-9a-f]{32}\b"), "<task-id>"),
    (re.compile(r"\b\d+:[0-9a-f]{16}\b"), "<fencing-token>"),
    (re.compile(r'("oldestTaskAge": ")[0-9.]+s"'), r'\1<age>"'),
]
# Lines left out of the comparison altogether: a latency is absent (zero) or not, by chance.
UNCOMPARED = re.compile(r'^\s*"(?:avg|p99)SubmitToAssignmentMs": ')

Volatile = Sequence[tuple[re.Pattern[str], str]]


@dataclasses.dataclass
class Step:
    """One command of a page and the output documented under it."""

    command: str
    expected: list[str]
    line: int
    """1-based line of the command's ``$ `` in the page."""


def is_complete(command: str) -> bool:
    """True when bash would run ``command`` as it stands (no open quote, loop or ``\\``)."""
    if command.endswith("\\"):
        return False
    checked = subprocess.run(["bash", "-n"], input=command, capture_output=True, text=True)
    return checked.returncode == 0


def parse_console(text: str) -> list[Step]:
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


def python_files(text: str) -> dict[str, str]:
    """{file name: source} of every ```python block (each must start with ``# file: NAME``)."""
    files: dict[str, str] = {}
    block: list[str] | None = None
    start = 0
    for number, line in enumerate(text.splitlines(), start=1):
        fence = FENCE.match(line)
        if block is None:
            if fence and fence.group(1) == "python":
                block, start = [], number
            continue
        if fence and not fence.group(1):
            match = FILE_LINE.match(block[0]) if block else None
            if not match:
                raise ValueError(f"line {start}: a ```python block must start with '# file: NAME'")
            files[match.group(1)] = "\n".join(block) + "\n"
            block = None
            continue
        block.append(line)
    return files


def normalise(lines: list[str], extra: Volatile = ()) -> list[str]:
    """Lines without trailing blanks, with the volatile values replaced."""
    result = []
    for line in lines:
        if UNCOMPARED.match(line):
            continue
        for pattern, replacement in [*VOLATILE, *extra]:
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


async def run_step(
    step: Step, env: dict[str, str], cwd: Path = ROOT, groups: list[int] | None = None
) -> tuple[int, str, dict[str, str]]:
    """Run one command in bash; returns its exit code, output and the environment after it
    (``set -a`` exports every variable it assigns, the EXIT trap writes them out). The
    command's process group joins ``groups``, for :func:`kill_groups` to end what it left
    in the background."""
    with tempfile.NamedTemporaryFile(prefix="docs-env-") as env_out:
        script = f"set -eo pipefail -a\ntrap 'env -0 > {env_out.name}' EXIT\n{step.command}\n"
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            script,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
        if groups is not None:
            groups.append(process.pid)
        try:
            output, _ = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_S)
        except TimeoutError:
            kill_groups([process.pid])
            await process.wait()
            raise AssertionError(
                f"line {step.line}: still running after {COMMAND_TIMEOUT_S} s (a background "
                f"process must not write to the terminal): {step.command}"
            ) from None
        env_out.seek(0)
        pairs = env_out.read().decode().split("\0")
    after = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
    return process.returncode or 0, output.decode(errors="replace"), after


def kill_groups(groups: Iterable[int]) -> None:
    """SIGKILL every process left in these process groups (a step's background jobs)."""
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


def command_environment(
    address: str, redis_url: str, ca_file: str = "", operator_token: str = ""
) -> dict[str, str]:
    """What an operator's shell would have after a page's set-up section: ``ADDR`` (a node),
    ``REDIS_URL``, ``A``/``S`` and ``T`` (the two services), ``CA`` and ``AUTH``."""
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
            "A": AGENT_SERVICE,
            "S": AGENT_SERVICE,
            "T": TASK_SERVICE,
            "CA": ca_file,
            "AUTH": f"authorization: Bearer {operator_token}",
            "LC_ALL": "C",
        }
    )
    return env


def rewrite(text: str, rewrites: Mapping[str, str]) -> str:
    """``text`` with each key of ``rewrites`` replaced by its value, in order."""
    for old, new in rewrites.items():
        text = text.replace(old, new)
    return text


def record(page: Path, steps: list[Step], outputs: list[str], path: Path) -> None:
    """Write ``page`` with each documented output replaced by the real one."""
    lines = page.read_text().splitlines()
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


def record_target(page: Path) -> Path | None:
    """Where ``DOCS_RECORD`` (a folder) asks for ``page``'s refreshed copy, if it does."""
    folder = os.environ.get("DOCS_RECORD")
    return Path(folder) / page.name if folder else None


async def run_page(
    page: Path,
    env: dict[str, str],
    *,
    cwd: Path,
    rewrites: Mapping[str, str] | None = None,
    volatile: Volatile | None = None,
    record_to: Path | None = None,
) -> None:
    """Write the page's python files into ``cwd``, then run every console command of
    ``page`` in order there and check each succeeds and prints what the page shows."""
    text = await asyncio.to_thread(page.read_text)
    steps = parse_console(text)
    assert steps, f"{page.name} has no console command to run"
    rewrites = dict(rewrites or {})
    back = {new: old for old, new in rewrites.items()}
    for name, source in python_files(text).items():
        (cwd / name).write_text(rewrite(source, rewrites))
    record_to = record_to or record_target(page)
    outputs: list[str] = []
    groups: list[int] = []
    try:
        for step in steps:
            command = dataclasses.replace(step, command=rewrite(step.command, rewrites))
            code, output, env = await run_step(command, env, cwd, groups)
            output = rewrite(output, back)
            outputs.append(output)
            where = f"{page.relative_to(ROOT)} line {step.line}: {step.command}"
            shows_error = any(line.startswith(ERROR_LINE) for line in step.expected)
            assert code == 0 or shows_error, f"{where}\nexit code {code}, output:\n{output}"
            if record_to:
                continue
            expected = normalise(step.expected, volatile or ())
            actual = normalise(output.splitlines(), volatile or ())
            assert output_matches(expected, actual), (
                f"{where}\nthe output differs from the documented one:\n"
                + "\n".join(
                    difflib.unified_diff(expected, actual, "documented", "real", lineterm="")
                )
            )
    finally:
        kill_groups(groups)
        if record_to:
            record(page, steps[: len(outputs)], outputs, record_to)
