"""Fault injection: three nodes on one Redis (AOF, fsync always), four agents as separate
processes running the Python SDK (tests/fault_agent.py), three thousand tasks submitted
through the SDK Client with request_ids, while the test SIGKILLs a node and starts it again,
SIGKILLs an agent in the middle of its tasks and starts it again, SIGSTOPs an agent for
longer than its leases and SIGCONTs it, and restarts Redis.

What must hold: every task reaches a final state (COMPLETED, or FAILED after all its
attempts: reported), every task was created once, no task has two completions accepted (by
the coordinator's record or by the agents' own logs), every result is the one its own task's
attempt produced, every completion that was not accepted was refused (never silently lost),
and the stopped agent's reports after SIGCONT are refused. One line gives the figures.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from coordinator.sdk import Client, NewTask, Task, TaskState
from coordinator.storage import keys
from support import REPO, CoordinatorProcess, RedisServer

pytestmark = pytest.mark.faults

TASKS = 3000
SUBMIT_CHUNK = 100
SUBMIT_EVERY_S = 0.9
"""About 110 tasks/s: the faults below all happen while tasks flow."""
LEASE_S = 3.0
MAX_ATTEMPTS = 5
AGENTS = 4
AGENT_SLOTS = 6
SLOW_EVERY = 60
SLOW_WORK_S = 4.0
"""One task in SLOW_EVERY works SLOW_WORK_S: when the stopped agent held one, its retry is
still running when the agent resumes, so the stale completion races a live attempt (the
others' retries are over by then, and any report would be refused as not held)."""
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "EXPIRED")
REFUSED_CODES = ("FAILED_PRECONDITION", "ABORTED", "NOT_FOUND")
"""What a stale report may be refused with: not this attempt's any more, or no such agent."""

NODE_ENV = {
    "COORDINATOR_HEARTBEAT_INTERVAL_S": "0.5",
    "COORDINATOR_LIVENESS_TIMEOUT_S": "2",
    "COORDINATOR_STREAM_GRACE_S": "1",
    "COORDINATOR_TASK_TIMER_INTERVAL_S": "0.1",
    "COORDINATOR_SWEEP_INTERVAL_S": "0.2",
    "COORDINATOR_HEALTH_CHECK_INTERVAL_S": "0.2",
    "COORDINATOR_REDIS_TIMEOUT_S": "1",
    "COORDINATOR_SHUTDOWN_GRACE_S": "1",
}


class AgentProcess:
    """``tests/fault_agent.py`` as a process; each start writes a log of its own."""

    def __init__(self, agent_id: str, addresses: list[str]) -> None:
        self.agent_id = agent_id
        self.addresses = addresses
        self.logs: list[Path] = []
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log_path = Path(tempfile.mkstemp(prefix=f"{self.agent_id}-", suffix=".log")[1])
        self.logs.append(log_path)
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("COORDINATOR_", "REDIS_URL"))
        }
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "tests" / "fault_agent.py"),
                    self.agent_id,
                    ",".join(self.addresses),
                    str(AGENT_SLOTS),
                ],
                env={**env, "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(REPO),
            )

    def log_text(self, index: int = -1) -> str:
        return self.logs[index].read_text(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
        self.kill()
        for path in self.logs:
            path.unlink(missing_ok=True)


LINE = re.compile(r"task_id=(\S+) attempt=(\S+) (.*)$")


@dataclass
class AgentEvents:
    """What the agents' logs say, by (task_id, attempt)."""

    done: set[tuple[str, int]] = field(default_factory=set)
    accepted: set[tuple[str, int]] = field(default_factory=set)
    dropped: set[tuple[str, int]] = field(default_factory=set)
    refused: list[tuple[str, int, str, str]] = field(default_factory=list)
    """(task_id, attempt, action, code) of every report the coordinator refused."""
    started: set[tuple[str, int]] = field(default_factory=set)

    def read(self, text: str) -> AgentEvents:
        for line in text.splitlines():
            found = LINE.search(line)
            if found is None or "-" in (found.group(1), found.group(2)):
                continue
            key = (found.group(1), int(found.group(2)))
            message = found.group(3)
            if message == "handler done":
                self.done.add(key)
            elif message == "task completed":
                self.accepted.add(key)
            elif message.startswith("task dropped"):
                self.dropped.add(key)
            elif message.startswith("task started"):
                self.started.add(key)
            elif " refused: " in message:
                action, rest = message.split(" refused: ", 1)
                self.refused.append((*key, action, rest.split(":", 1)[0]))
        return self

    def in_flight(self, among: set[str] | None = None) -> int:
        """Attempts started and not yet done, reported or dropped (of tasks ``among``)."""
        settled = self.done | self.dropped | {(t, a) for t, a, _, _ in self.refused}
        return sum(1 for t, _ in self.started - settled if among is None or t in among)


def stored_tasks(check: redis.Redis) -> tuple[int, int]:
    """The tasks Redis holds and those of them finished, archived or not, in one MULTI."""
    with check.pipeline(transaction=True) as pipe:
        pipe.zcard(keys.TASK_ALL)
        pipe.llen(keys.TASK_ARCHIVED)
        for state in FINAL_STATES:
            pipe.zcard(keys.tasks_in_state(state))
        listed, archived, *finished = pipe.execute()
    return listed + archived, archived + sum(finished)


async def wait_in_flight(
    agent: AgentProcess, among: Callable[[], set[str]] | None = None, timeout_s: float = 15.0
) -> None:
    """Until the agent is in the middle of at least one task (one of ``among()``)."""
    deadline = time.monotonic() + timeout_s
    while not AgentEvents().read(agent.log_text()).in_flight(among() if among else None):
        assert time.monotonic() < deadline, f"{agent.agent_id} never held such a task"
        await asyncio.sleep(0.02)


@pytest.mark.timeout(240)
async def test_no_task_lost_or_completed_twice_through_node_agent_and_redis_faults(capsys):
    started = time.monotonic()
    store = RedisServer(aof=True)
    nodes: list[CoordinatorProcess] = []
    agents: list[AgentProcess] = []
    try:
        store.start()
        # Each node binds a port of its own choosing (port 0): a port picked free beforehand
        # may be taken meanwhile by another node's outgoing connection. A node that returns
        # binds the port it had.
        ports = [0, 0, 0]

        def node_env(i: int) -> dict[str, str]:
            return {
                "REDIS_URL": store.url(),
                "NODE_ID": f"fault-node-{i}",
                "COORDINATOR_PORT": str(ports[i]),
                **NODE_ENV,
            }

        nodes = [CoordinatorProcess(node_env(i)) for i in range(3)]
        for i, node in enumerate(nodes):
            await asyncio.to_thread(node.wait_serving, 30)
            ports[i] = node.port
        addresses = [f"127.0.0.1:{port}" for port in ports]
        agents = [
            AgentProcess(f"fault-agent-{i}", addresses[i % 3 :] + addresses[: i % 3])
            for i in range(AGENTS)
        ]
        for agent in agents:
            agent.start()
        for agent in agents:
            await _wait(
                lambda agent=agent: "stream open" in agent.log_text(),
                f"{agent.agent_id} to open its stream",
            )

        run = os.urandom(4).hex()
        new_tasks = [
            NewTask(
                "fault",
                {"n": n, "work_s": SLOW_WORK_S if n % SLOW_EVERY == 7 else 0},
                request_id=f"fault-{run}-{n}",
                max_attempts=MAX_ATTEMPTS,
                start_to_close_s=LEASE_S,
            )
            for n in range(TASKS)
        ]
        client = Client(addresses, retry_timeout_s=60)
        results = []

        async def submit() -> None:
            for first in range(0, TASKS, SUBMIT_CHUNK):
                began = time.monotonic()
                results.extend(await client.submit_many(new_tasks[first : first + SUBMIT_CHUNK]))
                await asyncio.sleep(max(0.0, SUBMIT_EVERY_S - (time.monotonic() - began)))

        sigcont_offset = 0
        faults_done: list[str] = []

        async def inject() -> None:
            nonlocal sigcont_offset
            await asyncio.sleep(3)
            # A node dies (the client's first address and some agents' streams) and returns.
            nodes[0].signal(signal.SIGKILL)
            nodes[0].wait(10)
            faults_done.append("node SIGKILL")
            await asyncio.sleep(2)
            nodes.append(CoordinatorProcess(node_env(0)))
            nodes[0], nodes[-1] = nodes[-1], nodes[0]
            await asyncio.to_thread(nodes[0].wait_serving, 30)
            # An agent dies in the middle of its tasks and returns.
            await wait_in_flight(agents[0])
            agents[0].kill()
            faults_done.append("agent SIGKILL")
            await asyncio.sleep(1.5)
            agents[0].start()
            # An agent stops for longer than its leases, then resumes: its reports are stale,
            # one of them while its task's next attempt runs elsewhere.
            await wait_in_flight(
                agents[1],
                among=lambda: {r.task_id for n, r in enumerate(results) if n % SLOW_EVERY == 7},
            )
            agents[1].signal(signal.SIGSTOP)
            await asyncio.sleep(LEASE_S + 3)
            sigcont_offset = len(agents[1].log_text())
            agents[1].signal(signal.SIGCONT)
            faults_done.append("agent SIGSTOP/SIGCONT")
            await asyncio.sleep(2)
            # Redis shuts down (SIGTERM) and starts again from its AOF on the same port.
            await asyncio.to_thread(store.stop)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(store.start)
            faults_done.append("redis restart")

        try:
            await asyncio.gather(submit(), inject())
            submitted_s = time.monotonic() - started
            task_ids = [r.task_id for r in results]
            assert [r for r in results if r.error is not None] == []
            assert len(task_ids) == TASKS and len(set(task_ids)) == TASKS

            # Every task ends (or the test reports which did not).
            check = redis.Redis.from_url(store.url())
            try:
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    if stored_tasks(check)[1] >= TASKS:
                        break
                    await asyncio.sleep(0.2)
                created = stored_tasks(check)[0]
            finally:
                check.close()

            limit = asyncio.Semaphore(64)

            async def read(task_id: str) -> Task:
                async with limit:
                    return await client.get(task_id)

            tasks = await asyncio.gather(*(read(t) for t in task_ids))
        finally:
            await client.close()
        elapsed_s = time.monotonic() - started

        # Let the agents' last reports land in their logs, then read them.
        await asyncio.sleep(0.5)
        events = AgentEvents()
        for agent in agents:
            for index in range(len(agent.logs)):
                events.read(agent.log_text(index))
        stopped_after = AgentEvents().read(agents[1].log_text(-1)[sigcont_offset:])
        killed = AgentEvents().read(agents[0].log_text(0))
    finally:
        for agent in agents:
            agent.close()
        for node in nodes:
            node.close()
        store.close()

    by_state = collections.Counter(t.state.name for t in tasks)
    lost = [t.task_id for t in tasks if t.state.name not in FINAL_STATES]
    out_of_attempts = [t for t in tasks if t.state == TaskState.FAILED]
    completions = {
        t.task_id: [a.attempt for a in t.attempts if a.outcome == TaskState.COMPLETED]
        for t in tasks
    }
    duplicates = [t for t, attempts in completions.items() if len(attempts) > 1]
    duplicates += [
        t.task_id
        for t in tasks
        if sum(1 for tr in t.transitions if tr.state == TaskState.COMPLETED) > 1
    ]
    accepted_by_task = collections.defaultdict(set)
    for task_id, attempt in events.accepted:
        accepted_by_task[task_id].add(attempt)
    duplicates += [t for t, attempts in accepted_by_task.items() if len(attempts) > 1]
    refused_keys = {(t, a) for t, a, _, _ in events.refused}
    completed_attempt = {t: attempts[0] for t, attempts in completions.items() if attempts}
    # A finished handler whose attempt is not the one that completed the task must have had
    # its report refused (or been dropped, or died with the killed agent).
    unexplained = sorted(
        (t, a)
        for t, a in events.done
        if completed_attempt.get(t) != a
        and (t, a) not in refused_keys
        and (t, a) not in events.dropped
        and (t, a) not in killed.done
    )
    duplicate_completions_refused = sum(
        1 for t, a in events.done if completed_attempt.get(t) != a and (t, a) in refused_keys
    )
    # A result must be the one the completing attempt produced: a stale attempt's result
    # accepted in its place is a duplicate result even though one completion is recorded.
    wrong_results = [
        (t.task_id, completed_attempt.get(t.task_id), t.result)
        for t in tasks
        if t.state == TaskState.COMPLETED
        and ((t.result or {}).get("task_id"), (t.result or {}).get("attempt"))
        != (t.task_id, completed_attempt.get(t.task_id))
    ]
    accepted_elsewhere = [
        (t, a) for t, a in events.accepted if completed_attempt.get(t) not in (None, a)
    ]
    stale_refused = [r for r in events.refused if r[3] in REFUSED_CODES]
    stale_after_sigcont = [r for r in stopped_after.refused if r[3] in REFUSED_CODES]
    other_refusals = [r for r in events.refused if r[3] not in REFUSED_CODES]

    with capsys.disabled():
        print(
            f"\nfault injection ({', '.join(faults_done)}): {TASKS} tasks, "
            f"{by_state.get('COMPLETED', 0)} completed, {len(out_of_attempts)} failed after "
            f"{MAX_ATTEMPTS} attempts, lost {len(lost)}, duplicates {len(set(duplicates))}, "
            f"stale results accepted {len(wrong_results) + len(accepted_elsewhere)}, "
            f"stale reports refused {len(stale_refused)} ({len(stale_after_sigcont)} from the "
            f"stopped agent after SIGCONT), duplicate completions refused "
            f"{duplicate_completions_refused}; submitted in {submitted_s:.0f} s, "
            f"all final in {elapsed_s:.0f} s"
        )
        for t in out_of_attempts[:10]:
            print(f"  out of attempts: {t.task_id} after {t.attempt}: {t.error}")

    assert len(faults_done) == 4, faults_done
    assert created == TASKS, f"{created} tasks stored for {TASKS} request_ids"
    assert lost == [], f"{len(lost)} tasks not final: {by_state}"
    assert set(by_state) <= {"COMPLETED", "FAILED"}, by_state
    assert [t.task_id for t in out_of_attempts if t.attempt < MAX_ATTEMPTS] == []
    assert sorted(set(duplicates)) == []
    assert wrong_results == [], "results that are not the completing attempt's own"
    assert accepted_elsewhere == [], "an agent saw a completion accepted that did not count"
    assert unexplained == [], f"{len(unexplained)} finished attempts neither accepted nor refused"
    assert other_refusals == [], f"reports refused for other reasons: {other_refusals[:5]}"
    assert stale_after_sigcont, "the stopped agent's stale reports were not refused after SIGCONT"


async def _wait(predicate, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
