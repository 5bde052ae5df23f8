"""The harness every scenario runs in: the plan (how big each scenario is) and ``Bench``, the
shared redis-server with whatever nodes, agents and submitters the current run started."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from figures import load
from processes import (
    REPO,
    CoordinatorNode,
    RedisServer,
    log_tail,
    spawn,
    stop_process,
    wait_until,
)

BENCH = REPO / "bench"
RESULTS_DIR = BENCH / "results"
COORDINATOR_DB = 1
ARQ_DB = 2
CELERY_DB = 3


class Stop(Exception):
    """Raised by the SIGTERM handler so that ``finally`` blocks clean up."""


@dataclass
class Plan:
    """How big each scenario is: the full run or the --quick smoke run."""

    runs: int
    drain_tasks: int
    drain_agents: int
    in_flight: int
    """Unary calls at once (SubmitTask, arq's enqueue_job)."""
    submit_batch: int
    """Tasks per SubmitTasks call in the coordinator's drains."""
    batches_in_flight: int
    """SubmitTasks calls at once in the coordinator's drains."""
    rates: tuple[int, ...]
    steady_s: float
    discovery_agents: int
    discovery_calls: int
    stream_agents: int
    stream_processes: int
    many_agents: tuple[int, ...]
    """Agents connected (over 2 nodes) in each run of the many-agents scenario (issue 18)."""
    many_processes: int
    """Agent processes of a many-agents run (at most one per agent), over the 2 nodes."""
    cluster_tasks: int
    """Tasks of each of the three partitions of the Redis Cluster scenario (bench/cluster.py)."""


FULL = Plan(
    runs=3,
    drain_tasks=20_000,
    drain_agents=4,
    in_flight=128,
    submit_batch=100,
    batches_in_flight=4,
    rates=(200, 1000),
    steady_s=15.0,
    discovery_agents=10_000,
    discovery_calls=1000,
    stream_agents=2000,
    stream_processes=4,
    many_agents=(4, 1000, 10_000),
    many_processes=4,
    cluster_tasks=3000,
)
QUICK = Plan(
    runs=1,
    drain_tasks=1000,
    drain_agents=4,
    in_flight=64,
    submit_batch=50,
    batches_in_flight=2,
    rates=(200,),
    steady_s=2.0,
    discovery_agents=1000,
    discovery_calls=200,
    stream_agents=100,
    stream_processes=2,
    many_agents=(4, 40),
    many_processes=2,
    cluster_tasks=300,
)


@dataclass
class Bench:
    """The shared redis-server and whatever children the current run has started."""

    args: argparse.Namespace
    plan: Plan
    workdir: Path
    redis: RedisServer
    nodes: list[CoordinatorNode] = field(default_factory=list)
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    counter: int = 0
    node_env: dict[str, str] = field(default_factory=dict)
    """More environment for the nodes (bench/tls_cost.py: TLS files)."""
    client_argv: list[str] = field(default_factory=list)
    """More arguments for the agents and submitters (bench/tls_cost.py: CA and token)."""
    keep_logs: bool = False
    """A node exited badly: keep the workdir (its logs) when the benchmark ends."""

    def coordinator_db(self) -> redis.Redis:
        """A client of the coordinator's database (close it after use)."""
        return self.redis.client(COORDINATOR_DB)

    def next_path(self, stem: str) -> Path:
        """A new, numbered file name in the workdir for a child's output."""
        self.counter += 1
        return self.workdir / f"{self.counter:04d}-{stem}.json"

    def start_nodes(self, count: int) -> list[CoordinatorNode]:
        """Empty the coordinator's database, then start ``count`` nodes and wait until each serves."""
        self.coordinator_db().flushdb()
        env = {
            # The bench's agents never heartbeat: keep them live for the whole run.
            "COORDINATOR_HEARTBEAT_INTERVAL_S": "1800",
            "COORDINATOR_LIVENESS_TIMEOUT_S": "3600",
            "COORDINATOR_LOG_LEVEL": self.args.log_level,
            **self.node_env,
        }
        for i in range(count):
            node = CoordinatorNode(
                self.workdir, f"bench-node-{i + 1}", self.redis.url(COORDINATOR_DB), env
            )
            self.nodes.append(node)
            node.start()
        return list(self.nodes)

    def python_child(
        self, script: str, argv: list[str], python: str | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``bench/SCRIPT`` with ARGV (its output goes to a log in the workdir)."""
        self.counter += 1
        log = self.workdir / f"{self.counter:04d}-{Path(script).stem}.log"
        child = spawn([python or sys.executable, str(BENCH / script), *argv], log)
        self.children.append(child)
        return child

    def signal_agents(self) -> None:
        """SIGTERM to the agent processes still running: they write their time stamps."""
        for child in self.children:
            if "load_agent.py" in " ".join(map(str, child.args)) and child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def agent_results(self, outs: Sequence[Path]) -> list[dict[str, Any]]:
        """SIGTERM to the agent processes, which then write their time stamps: those."""
        self.signal_agents()
        self.wait_files(outs, "the agents' results", 60)
        return [load(o) for o in outs]

    def wait_exit(
        self, children: Sequence[subprocess.Popen[bytes]], what: str, timeout_s: float
    ) -> None:
        """Wait until every one of ``children`` has exited with 0."""

        def exited() -> bool:
            self.check_children()
            for child in children:
                if child.poll() not in (None, 0):
                    raise RuntimeError(f"{what} exited with {child.returncode}")
            return all(child.poll() == 0 for child in children)

        wait_until(what, exited, timeout_s)

    def start_agents(
        self,
        address: str,
        prefix: str,
        agents: int,
        max_concurrency: int,
        hold: bool = False,
        expect: int = 0,
        agents_per_channel: int = 1,
        report: str = "",
    ) -> Path:
        """Start one load_agent.py process of ``agents`` agents: the file it will write.
        ``agents_per_channel`` agents share a connection; ``report`` overrides how raw
        agents report (``--agent-report``)."""
        out = self.next_path(prefix)
        argv = [
            "--address",
            address,
            "--prefix",
            prefix,
            "--agents",
            str(agents),
            "--max-concurrency",
            str(max_concurrency),
            "--mode",
            self.args.agent_mode,
            "--expect",
            str(expect),
            "--agents-per-channel",
            str(agents_per_channel),
            "--out",
            str(out),
        ]
        if self.args.agent_mode == "raw":
            argv += ["--report", report or self.args.agent_report]
        argv += self.client_argv
        self.python_child("load_agent.py", [*argv, "--hold"] if hold else argv)
        return out

    def wait_ready(self, outs: Sequence[Path], timeout_s: float) -> None:
        """Wait until the agents writing ``outs`` have their streams open."""

        def ready() -> bool:
            self.check_children()
            return all(Path(f"{o}.ready").exists() for o in outs)

        wait_until("the agents' streams", ready, timeout_s)

    def check_children(self) -> None:
        """RuntimeError when a node of the run has exited."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"{node.node_id} exited:\n{log_tail(node.log)}")

    def wait_files(self, outs: Sequence[Path], what: str, timeout_s: float) -> None:
        def written() -> bool:
            self.check_children()
            for child in self.children:
                if child.poll() not in (None, 0):
                    raise RuntimeError(f"{child.args!r} exited with {child.returncode}")
            return all(o.exists() for o in outs)

        wait_until(what, written, timeout_s)

    def wait_counter(self, name: str, expected: int, timeout_s: float) -> None:
        """Wait until tasks:stats[name] reaches ``expected`` (polled every 20 ms)."""
        client = self.coordinator_db()

        def reached() -> bool:
            self.check_children()
            return int(client.hget("tasks:stats", name) or 0) >= expected

        try:
            wait_until(f"{expected} tasks {name.removeprefix('tasks_')}", reached, timeout_s)
        finally:
            client.close()

    def stop_run(self) -> None:
        """Stop the run's agents, submitters and nodes (agents first: they write results)."""
        for child in self.children:
            stop_process(child, timeout_s=30)
        self.children.clear()
        for node in self.nodes:
            code = node.stop()
            if code not in (0, None):
                print(
                    f"warning: {node.node_id} exited with {code} (its log: {node.log})",
                    file=sys.stderr,
                )
                self.keep_logs = True
        self.nodes.clear()


def submitter_argv(address: str, out: Path, **options: Any) -> list[str]:
    """load_submitter.py's arguments: each option ``name=value`` as ``--name value``."""
    argv = ["--address", address, "--out", str(out)]
    for name, value in options.items():
        flag = f"--{name.replace('_', '-')}"
        argv += [flag] if value is True else [flag, str(value)]
    return argv
