"""Scenario 13 (issue 18, section 4): Redis Cluster mode, three coordinator clusters
(partitions) on a local Redis Cluster of three primaries, draining at once.

Each partition is one node with ``COORDINATOR_REDIS_CLUSTER_TAG`` set to a tag whose slot a
different primary owns, its own agents (one load_agent.py process) and its own submitter:
every key of a partition is on its primary. The three drain at once; then the same three
partitions (same tags, same counts) drain at once on the bench's one plain Redis, in the same
run. Reported: tasks/s per partition and in all, and Redis CPU per task on each primary
(``INFO cpu`` before and after) and on the one Redis.

On this 2-core machine the nodes, agents and submitters share the cores with the Redis
processes, so the throughput figure says what the machine does, not what three hosts would;
Redis CPU per task per shard is the figure that carries over.
"""

from __future__ import annotations

import functools
import itertools
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from figures import join_times, latency_summary, load
from harness import Bench, submitter_argv
from processes import CoordinatorNode, free_port, spawn, stop_process, wait_until
from task_runs import scenario_drain_options

from coordinator.storage import key_tags, keys

PARTITIONS = 3
AGENTS_PER_PARTITION = 2
CLUSTER_DB = 0
"""A Redis Cluster has only database 0."""
ONE_REDIS_DBS = (4, 5, 6)
"""The partitions' databases on the bench's one Redis (1-3: the coordinator, arq, Celery)."""


class RedisClusterServers:
    """Three cluster-enabled redis-servers joined by ``redis-cli --cluster create``."""

    def __init__(self, workdir: Path, primaries: int = PARTITIONS) -> None:
        self.workdir = workdir / "cluster"
        self.workdir.mkdir(exist_ok=True)
        self.ports = [free_port() for _ in range(primaries)]
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None or shutil.which("redis-cli") is None:
            raise RuntimeError("redis-server and redis-cli are needed (make check-redis)")
        for port in self.ports:
            argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled"]
            argv += ["yes", "--cluster-config-file", f"nodes-{port}.conf", "--cluster-port"]
            argv += [str(free_port()), "--save", "", "--appendonly", "no", "--maxclients"]
            argv += ["10000", "--dir", str(self.workdir)]
            log = self.workdir / f"redis-{port}.log"
            self.processes.append(spawn(argv, log))
        for port in self.ports:
            wait_until(f"redis-server on port {port}", lambda p=port: self._pings(p), 10)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        create = ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0"]
        subprocess.run([*create, "--cluster-yes"], check=True, capture_output=True, timeout=60)
        for port in self.ports:
            wait_until(f"cluster_state:ok on {port}", lambda p=port: self._ok(p), 20)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, decode_responses=True, socket_connect_timeout=1)

    def owner_of(self, slot: int) -> int:
        for start, end, primary, *_ in self.client(self.ports[0]).execute_command("CLUSTER SLOTS"):
            if int(start) <= slot <= int(end):
                return int(primary[1])
        raise RuntimeError(f"slot {slot} has no owner")

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/{CLUSTER_DB}"

    def _pings(self, port: int) -> bool:
        try:
            return bool(self.client(port).ping())
        except redis.RedisError:
            return False

    def _ok(self, port: int) -> bool:
        return self.client(port).cluster("INFO").get("cluster_state") == "ok"

    def stop(self) -> None:
        for process in self.processes:
            stop_process(process, 10)
        self.processes.clear()


def partition_tags(cluster: RedisClusterServers) -> list[str]:
    """One tag per primary: ``part-n`` for the smallest n whose slot that primary owns."""
    chosen: dict[int, str] = {}
    for n in itertools.count():
        chosen.setdefault(cluster.owner_of(key_tags.slot_of(f"part-{n}")), f"part-{n}")
        if len(chosen) == len(cluster.ports):
            return [chosen[port] for port in cluster.ports]
    raise AssertionError("unreachable")


@dataclass
class Partition:
    """One coordinator cluster of the run: its name, its Redis, its processes."""

    name: str
    url: str
    tag: str
    """Its hash tag on the Redis Cluster; "" on the one Redis (a database of its own)."""
    shard: str
    """The Redis holding its keys: ``primary-1`` (the first node of the cluster) ..., or
    ``one-redis``."""
    stats: redis.Redis
    """A client of that Redis (its tag's keys)."""
    node: CoordinatorNode | None = None
    agents_out: Path | None = None
    submit_out: Path | None = None

    def completed(self) -> int:
        key_tags.use_tag(self.tag)
        try:
            return int(self.stats.hget(keys.TASK_STATS, "tasks_completed") or 0)
        finally:
            key_tags.use_tag("")


def title(bench: Bench) -> str:
    tasks = bench.plan.cluster_tasks
    return (
        f"13. Redis Cluster: {PARTITIONS} coordinator clusters × {tasks:,} tasks on "
        f"{PARTITIONS} primaries, then on one Redis"
    )


def start_partitions(bench: Bench, partitions: list[Partition]) -> None:
    """A node and its agents for each partition, all with their streams open."""
    env = {
        "COORDINATOR_HEARTBEAT_INTERVAL_S": "1800",
        "COORDINATOR_LIVENESS_TIMEOUT_S": "3600",
        "COORDINATOR_LOG_LEVEL": bench.args.log_level,
    }
    for i, part in enumerate(partitions):
        node_env = {**env, "COORDINATOR_REDIS_CLUSTER_TAG": part.tag}
        node_id = f"bench-{part.name}-{part.shard}"
        part.node = CoordinatorNode(bench.workdir, node_id, part.url, node_env)
        bench.nodes.append(part.node)
        part.node.start()
        part.agents_out = bench.start_agents(
            part.node.address,
            f"p{i}-",
            AGENTS_PER_PARTITION,
            max_concurrency=bench.args.max_concurrency,
        )
    outs = [p.agents_out for p in partitions if p.agents_out is not None]
    bench.wait_ready(outs, 60)


def drain_at_once(bench: Bench, partitions: list[Partition]) -> None:
    """One submitter per partition, all starting together; wait until all completed."""
    start_at = time.time_ns() + 500_000_000
    options = {"count": bench.plan.cluster_tasks, **scenario_drain_options(bench)}
    submitters = []
    for part in partitions:
        assert part.node is not None
        part.submit_out = bench.next_path(f"submitter-{part.name}")
        argv = submitter_argv(part.node.address, part.submit_out, start_at_ns=start_at, **options)
        submitters.append(bench.python_child("load_submitter.py", argv))
    bench.wait_exit(submitters, "the submitters", 600)
    for part in partitions:
        accepted = len(load(part.submit_out)["records"]) if part.submit_out else 0

        def done(p: Partition = part, n: int = accepted) -> bool:
            bench.check_children()
            return p.completed() >= n

        wait_until(f"{accepted} tasks completed in {part.name}", done, 300)


def run_partitions(
    bench: Bench, partitions: list[Partition], cpu: dict[str, Callable[[], float]]
) -> dict[str, Any]:
    """Start, drain at once, and the figures: per partition, per shard, in all."""
    try:
        start_partitions(bench, partitions)
        before = {shard: read() for shard, read in cpu.items()}
        drain_at_once(bench, partitions)
        used = {shard: read() - before[shard] for shard, read in cpu.items()}
        outs = [p.agents_out for p in partitions if p.agents_out is not None]
        reports = bench.agent_results(outs)
    finally:
        bench.stop_run()
    return figures(partitions, reports, used)


def figures(
    partitions: list[Partition], reports: list[dict[str, Any]], cpu_used_s: dict[str, float]
) -> dict[str, Any]:
    """Tasks/s of each partition and of all, Redis CPU µs per task of each shard."""
    result: dict[str, Any] = {}
    starts, ends, tasks_on = [], [], dict.fromkeys(cpu_used_s, 0)
    for part, report in zip(partitions, reports, strict=True):
        assert part.submit_out is not None
        submit = load(part.submit_out)
        submitted, received, errors = join_times([submit], [report])
        if len(received) < len(submitted):
            missing = len(submitted) - len(received)
            raise RuntimeError(f"{part.name}: {missing} tasks not completed")
        first, last = submit["started_ns"], max(c for _, _, c in received.values())
        starts.append(first)
        ends.append(last)
        tasks_on[part.shard] += len(submitted)
        result[part.name] = {
            "shard": part.shard,
            "tasks": len(submitted),
            "completed_per_s": round(len(submitted) / ((last - first) / 1e9), 1),
            "submit_to_completed": latency_summary(
                [(received[t][2] - s) / 1e6 for t, s in submitted.items()]
            ),
            "errors": errors,
        }
    total = sum(tasks_on.values())
    result["all"] = {
        "tasks": total,
        "completed_per_s": round(total / ((max(ends) - min(starts)) / 1e9), 1),
        "redis_cpu_us_per_task": round(sum(cpu_used_s.values()) / total * 1e6, 1),
    }
    result["shards"] = {
        shard: {
            "tasks": tasks_on[shard],
            "redis_cpu_us_per_task": round(s / tasks_on[shard] * 1e6, 1),
        }
        for shard, s in cpu_used_s.items()
        if tasks_on[shard]
    }
    return result


def info_cpu_s(client: redis.Redis) -> float:
    """CPU seconds (user + system) a Redis has used since it started (INFO cpu)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


_runs = itertools.count()


def scenario_cluster(bench: Bench) -> dict[str, Any]:
    """One run: the three partitions on the Redis Cluster and on the one plain Redis, in
    turn (the one Redis first every other run: the machine's noise drifts)."""
    if next(_runs) % 2:
        one_redis = on_one_redis(bench)
        return {"cluster": on_redis_cluster(bench), "one_redis": one_redis}
    return {"cluster": on_redis_cluster(bench), "one_redis": on_one_redis(bench)}


def on_redis_cluster(bench: Bench) -> dict[str, Any]:
    """The three partitions on a new Redis Cluster of three primaries, one on each."""
    cluster = RedisClusterServers(bench.workdir)
    try:
        cluster.start()
        tags = partition_tags(cluster)
        shard = {port: f"primary-{i + 1}" for i, port in enumerate(cluster.ports)}
        partitions = []
        for n, tag in enumerate(tags):
            owner = cluster.owner_of(key_tags.slot_of(tag))
            stats = cluster.client(owner)
            partitions.append(Partition(f"part-{n}", cluster.url(), tag, shard[owner], stats))
        cpu = {
            shard[port]: functools.partial(info_cpu_s, cluster.client(port))
            for port in cluster.ports
        }
        return run_partitions(bench, partitions, cpu)
    finally:
        cluster.stop()


def on_one_redis(bench: Bench) -> dict[str, Any]:
    """The same three partitions on the bench's one Redis, each in a database of its own
    (without a tag: cluster mode needs a Redis Cluster)."""
    partitions = []
    for n, db in enumerate(ONE_REDIS_DBS):
        stats = bench.redis.client(db)
        stats.flushdb()
        partitions.append(Partition(f"part-{n}", bench.redis.url(db), "", "one-redis", stats))
    cpu = {"one-redis": functools.partial(info_cpu_s, bench.redis.client(0))}
    try:
        return run_partitions(bench, partitions, cpu)
    finally:
        for part in partitions:
            part.stats.flushdb()
            part.stats.close()


def table_rows(title: str, agg: dict[str, Any], fmt: Any) -> list[tuple[str, str, str]]:
    """Tasks/s per partition and in all, Redis CPU per task per shard, both layouts."""
    rows = []
    for layout, name in (("cluster", "Redis Cluster"), ("one_redis", "one Redis")):
        names = sorted({k.split(".")[1] for k in agg if k.startswith(f"{layout}.part-")})
        per_part = ", ".join(fmt(agg, f"{layout}.{name}.completed_per_s", 0) for name in names)
        rows.append(
            (
                title,
                f"{name}: tasks/s in all (per partition)",
                f"{fmt(agg, f'{layout}.all.completed_per_s', 0)} ({per_part})",
            )
        )
        shards = sorted({k.split(".")[2] for k in agg if k.startswith(f"{layout}.shards.")})
        per_shard = ", ".join(
            fmt(agg, f"{layout}.shards.{s}.redis_cpu_us_per_task", 0) for s in shards
        )
        rows.append(
            (
                title,
                f"{name}: Redis CPU µs per task, all (per shard)",
                f"{fmt(agg, f'{layout}.all.redis_cpu_us_per_task', 0)} ({per_shard})",
            )
        )
    return rows
