#!/usr/bin/env python3
"""Discovery at scale: DiscoverAgents(capabilities=[needle]) latency with N registered agents.

Starts its own redis-server and one coordinator node (``python -m coordinator serve``) on
free loopback ports, registers N agents through the real gRPC API (M of them with the
capability ``needle``), then times DiscoverAgents for the needle: sequentially (one call in
flight) and with P calls in flight. Every reply must hold exactly the M needle agents.
Prints a table and writes JSON (default bench/results/discovery_scale.json).

    python bench/discovery_scale.py                  # 10,000 agents, 50 matches, 2,000 calls
    python bench/discovery_scale.py --quick          # small run, writes *.quick.json
    make bench-discovery ARGS="--agents 20000"

Both child processes are stopped at the end, also on Ctrl-C, SIGTERM or an error, and die
with this script if it is killed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from processes import CoordinatorNode, RedisServer, cpu_s, log_tail, rss_kib

from aitbc.coordinator.v1 import agent_pb2, agent_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
NEEDLE = "needle"
P99_TARGET_MS = 5.0

CAPABILITIES = (
    "text-generation",
    "embedding",
    "ocr",
    "translation",
    "speech-to-text",
    "image-generation",
    "summarization",
    "code-review",
    "classification",
    "retrieval",
)
SERVICES = ("gpu-inference", "cpu-batch", "storage", "stream-relay", "validator")
AGENT_TYPES = ("worker", "inference", "training", "processing", "specialist", "gateway")
ZONES = ("eu-1", "eu-2", "us-1", "us-2", "ap-1")
CHAINS = ("ait-main", "ait-test", "ait-dev")


class Stop(Exception):
    """Raised by the SIGTERM handler so that ``finally`` blocks clean up."""


# ---------------------------------------------------------------------------------- processes


@dataclass
class Children:
    """The redis-server and coordinator node this script owns (bench/processes.py)."""

    workdir: Path
    redis: RedisServer = field(init=False)
    node: CoordinatorNode | None = None

    def __post_init__(self) -> None:
        self.redis = RedisServer(self.workdir)

    @property
    def redis_url(self) -> str:
        return self.redis.url(1)

    @property
    def address(self) -> str:
        assert self.node is not None
        return self.node.address

    def start_redis(self) -> None:
        self.redis.start()

    def start_coordinator(self, liveness_s: float, log_level: str) -> None:
        env = {
            # Agents here never heartbeat: keep them ACTIVE and fully fresh for the run.
            "COORDINATOR_HEARTBEAT_INTERVAL_S": str(liveness_s / 2),
            "COORDINATOR_LIVENESS_TIMEOUT_S": str(liveness_s),
            "COORDINATOR_LOG_LEVEL": log_level,
        }
        self.node = CoordinatorNode(self.workdir, "bench-node", self.redis_url, env)
        self.node.start()

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.node.log, lines) if self.node is not None else "(no log)"

    def stop(self) -> dict[str, int | None]:
        """Coordinator first (SIGTERM, graceful), then Redis; returns their exit codes."""
        codes = {
            "coordinator": self.node.stop() if self.node is not None else None,
            "redis": self.redis.stop(),
        }
        self.node = None
        return codes


# ---------------------------------------------------------------------------------- workload


def make_agents(count: int, matches: int, seed: int) -> list[agent_pb2.RegisterAgentRequest]:
    """``count`` varied registrations; exactly ``matches`` of them have the needle capability."""
    rng = random.Random(seed)
    needles = set(rng.sample(range(count), matches))
    requests = []
    for i in range(count):
        capabilities = rng.sample(CAPABILITIES, rng.randint(1, 4))
        if i in needles:
            capabilities.insert(rng.randint(0, len(capabilities)), NEEDLE)
        labels = {"zone": rng.choice(ZONES), "chain": rng.choice(CHAINS)}
        if rng.random() < 0.3:
            labels["tier"] = rng.choice(("gold", "silver", "bronze"))
        requests.append(
            agent_pb2.RegisterAgentRequest(
                agent_id=f"agent-{i:06d}",
                agent_type=rng.choice(AGENT_TYPES),
                capabilities=capabilities,
                services=rng.sample(SERVICES, rng.randint(0, 2)),
                endpoints={"grpc": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:7000"},
                metadata={"version": f"1.{rng.randint(0, 9)}.{rng.randint(0, 20)}"},
                labels=labels,
                max_concurrency=rng.choice((1, 2, 4, 8)),
            )
        )
    return requests


async def register_all(
    stub: agent_pb2_grpc.AgentServiceStub,
    requests: Sequence[agent_pb2.RegisterAgentRequest],
    in_flight: int,
) -> float:
    """Register every agent with ``in_flight`` concurrent calls; returns the wall time in s."""
    queue = iter(requests)

    async def worker() -> None:
        for request in queue:
            reply = await stub.RegisterAgent(request, timeout=30)
            if not reply.created:
                raise RuntimeError(f"{request.agent_id} was already registered")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - started


async def heartbeat_all(
    stub: agent_pb2_grpc.AgentServiceStub,
    agent_ids: Sequence[str],
    in_flight: int,
    pids: dict[str, int],
    admin: redis.Redis,
) -> dict[str, Any]:
    """One Heartbeat from every agent, ``in_flight`` at a time: what a heartbeat costs Redis
    and the node (CPU µs and Redis commands per heartbeat), which is what an idle agent costs
    them every heartbeat interval. These agents have no stream open, so each heartbeat is
    recorded and answered FAILED_PRECONDITION (open the stream): the same script as for a
    connected agent, which checks the stream either way."""
    queue = iter(agent_ids)

    async def worker() -> None:
        for agent_id in queue:
            try:
                await stub.Heartbeat(agent_pb2.HeartbeatRequest(agent_id=agent_id), timeout=30)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise

    admin.config_resetstat()
    cpu_before = {name: cpu_s(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    wall_s = time.perf_counter() - started
    used = {name: cpu_s(pid) - cpu_before[name] for name, pid in pids.items()}
    stats = admin.info("commandstats")
    commands = sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_config")
    count = len(agent_ids)
    return {
        "heartbeats": count,
        "in_flight": in_flight,
        "heartbeats_per_s": round(count / wall_s, 1),
        **{f"{name}_cpu_us_per_heartbeat": round(s / count * 1e6, 1) for name, s in used.items()},
        "redis_commands_per_heartbeat": round(commands / count, 2),
    }


def percentile(sorted_ms: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return sorted_ms[max(0, math.ceil(q * len(sorted_ms)) - 1)]


def summary(latencies_ms: list[float], wall_s: float) -> dict[str, float | int]:
    ordered = sorted(latencies_ms)
    return {
        "calls": len(ordered),
        "min_ms": round(ordered[0], 3),
        "p50_ms": round(percentile(ordered, 0.50), 3),
        "p90_ms": round(percentile(ordered, 0.90), 3),
        "p99_ms": round(percentile(ordered, 0.99), 3),
        "max_ms": round(ordered[-1], 3),
        "mean_ms": round(sum(ordered) / len(ordered), 3),
        "calls_per_s": round(len(ordered) / wall_s, 1),
    }


async def timed_calls(
    call: Callable[[], Awaitable[Any]],
    check: Callable[[Any], None],
    calls: int,
    in_flight: int,
) -> dict[str, float | int]:
    """``calls`` calls, ``in_flight`` at a time; each reply is checked."""
    latencies: list[float] = []
    remaining = iter(range(calls))

    async def worker() -> None:
        for _ in remaining:
            started = time.perf_counter_ns()
            reply = await call()
            latencies.append((time.perf_counter_ns() - started) / 1e6)
            check(reply)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return summary(latencies, time.perf_counter() - started)


def evalsha_usec_per_call(client: redis.Redis) -> float | None:
    """Mean time Redis spent per EVALSHA (the Lua scripts) since the last CONFIG RESETSTAT."""
    stats = client.info("commandstats")
    entry = stats.get("cmdstat_evalsha")
    return round(float(entry["usec_per_call"]), 1) if entry else None


async def run_benchmark(children: Children, args: argparse.Namespace) -> dict[str, Any]:
    assert children.node is not None
    pid = children.node.pid
    admin = redis.Redis.from_url(children.redis_url)
    results: dict[str, Any] = {}
    try:
        # The node's own keys (presence, sweep and reaper locks) may already be there.
        if any(not key.startswith(b"coordinator:") for key in admin.scan_iter(count=1000)):
            raise RuntimeError("the benchmark's Redis database is not empty")
        requests = make_agents(args.agents, args.matches, args.seed)
        expected = sorted(r.agent_id for r in requests if NEEDLE in r.capabilities)
        assert len(expected) == args.matches

        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        async with grpc.aio.insecure_channel(children.address, options=options) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            rss_before = rss_kib(pid)

            print(
                f"registering {args.agents:,} agents ({args.register_in_flight} in flight) ...",
                flush=True,
            )
            register_s = await register_all(stub, requests, args.register_in_flight)
            rss_after_register = rss_kib(pid)
            results["registration"] = {
                "agents": args.agents,
                "in_flight": args.register_in_flight,
                "seconds": round(register_s, 2),
                "agents_per_s": round(args.agents / register_s, 1),
            }
            if admin.scard("agents:all") != args.agents:
                raise RuntimeError("agents:all does not hold every registered agent")
            print(f"one heartbeat from each of {args.agents:,} agents ...", flush=True)
            results["heartbeat"] = await heartbeat_all(
                stub,
                [r.agent_id for r in requests],
                args.register_in_flight,
                {"coordinator": pid, "redis": children.redis.pid},
                admin,
            )

            request = agent_pb2.DiscoverAgentsRequest(
                capabilities=[NEEDLE], page_size=min(max(args.matches, 1), 1000)
            )

            def check(reply: agent_pb2.DiscoverAgentsResponse) -> None:
                ids = [a.agent_id for a in reply.agents]
                if reply.total_size != args.matches or len(ids) != min(args.matches, 1000):
                    raise RuntimeError(
                        f"DiscoverAgents returned {len(ids)} agents (total_size "
                        f"{reply.total_size}); expected {args.matches}"
                    )
                if args.matches <= 1000 and sorted(ids) != expected:
                    raise RuntimeError("DiscoverAgents returned agents without the needle")

            def discover() -> Awaitable[agent_pb2.DiscoverAgentsResponse]:
                return stub.DiscoverAgents(request, timeout=10)

            def check_health(reply: health_pb2.HealthCheckResponse) -> None:
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    raise RuntimeError("the coordinator is not SERVING")

            def health_check() -> Awaitable[health_pb2.HealthCheckResponse]:
                return health.Check(health_pb2.HealthCheckRequest(), timeout=10)

            print(f"warming up ({args.warmup} calls) ...", flush=True)
            await timed_calls(discover, check, args.warmup, 1)
            await timed_calls(health_check, check_health, args.warmup, 1)

            print(
                f"timing {args.calls:,} health checks (the floor of one gRPC round trip) ...",
                flush=True,
            )
            results["baseline_health_check"] = await timed_calls(
                health_check, check_health, args.calls, 1
            )

            print(f"timing {args.calls:,} discoveries, 1 in flight ...", flush=True)
            admin.config_resetstat()
            results["discover_sequential"] = await timed_calls(discover, check, args.calls, 1)
            results["discover_sequential"]["redis_evalsha_usec_per_call"] = evalsha_usec_per_call(
                admin
            )

            print(f"timing {args.calls:,} discoveries, {args.parallel} in flight ...", flush=True)
            admin.config_resetstat()
            results["discover_parallel"] = await timed_calls(
                discover, check, args.calls, args.parallel
            )
            results["discover_parallel"]["in_flight"] = args.parallel
            results["discover_parallel"]["redis_evalsha_usec_per_call"] = evalsha_usec_per_call(
                admin
            )
            rss_after_discover = rss_kib(pid)

        results["coordinator_rss_kb"] = {
            "before_register": rss_before["VmRSS"],
            "after_register": rss_after_register["VmRSS"],
            "after_discovery": rss_after_discover["VmRSS"],
            "peak": rss_after_discover["VmHWM"],
        }
        memory = admin.info("memory")
        results["redis_used_memory_bytes"] = int(memory["used_memory"])
        results["redis_used_memory_dataset_bytes"] = int(memory["used_memory_dataset"])
    finally:
        admin.close()
    return results


# ---------------------------------------------------------------------------------- report


def environment() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *argv], capture_output=True, text=True, check=False
        ).stdout.strip()

    return {
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "redis_server": redis_version.split(" v=")[1].split()[0]
        if " v=" in redis_version
        else redis_version,
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        # Figures of different commits (or of one commit at different hours on a shared
        # machine) differ: record which code ran. The health check row is the machine's floor.
        "git_commit": git("rev-parse", "--short", "HEAD") or "unknown",
        "src_uncommitted_changes": bool(git("status", "--short", "src")),
        "note": "client, coordinator and redis-server share the machine",
    }


def print_report(report: dict[str, Any]) -> None:
    r = report["results"]
    cfg = report["config"]
    rss = r["coordinator_rss_kb"]
    reg = r["registration"]
    print()
    print(f"Discovery of {cfg['matches']} of {cfg['agents']:,} agents by one capability")
    print(f"({report['environment']['cpus']} CPUs: {report['environment']['cpu']})")
    print()
    print(
        f"{'':30} {'calls':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'calls/s':>9}"
    )
    rows = [
        ("health check, 1 in flight", r["baseline_health_check"]),
        ("DiscoverAgents, 1 in flight", r["discover_sequential"]),
        (
            f"DiscoverAgents, {r['discover_parallel']['in_flight']} in flight",
            r["discover_parallel"],
        ),
    ]
    for name, s in rows:
        print(
            f"{name:30} {s['calls']:>7} {s['p50_ms']:>8.2f} {s['p90_ms']:>8.2f} "
            f"{s['p99_ms']:>8.2f} {s['max_ms']:>8.2f} {s['calls_per_s']:>9.1f}"
        )
    print()
    print(
        f"Redis time per discovery script (EVALSHA): {r['discover_sequential']['redis_evalsha_usec_per_call']} us"
    )
    print(
        f"registration: {reg['agents']:,} agents in {reg['seconds']:.1f} s = "
        f"{reg['agents_per_s']:,.0f} agents/s ({reg['in_flight']} in flight)"
    )
    if "heartbeat" in r:  # absent from older results
        hb = r["heartbeat"]
        print(
            f"one heartbeat from each agent: {hb['heartbeats_per_s']:,.0f}/s; per heartbeat "
            f"{hb['redis_cpu_us_per_heartbeat']} us Redis CPU, "
            f"{hb['coordinator_cpu_us_per_heartbeat']} us node CPU, "
            f"{hb['redis_commands_per_heartbeat']} Redis commands"
        )
    print(
        f"coordinator RSS: {rss['before_register'] / 1024:.1f} MiB before registering, "
        f"{rss['after_register'] / 1024:.1f} MiB after, {rss['after_discovery'] / 1024:.1f} MiB "
        f"after discovery (peak {rss['peak'] / 1024:.1f} MiB)"
    )
    print(f"Redis used_memory: {r['redis_used_memory_bytes'] / 1024 / 1024:.1f} MiB")
    verdict = "met" if report["p99_target_met"] else "NOT met"
    print(f"target p99 <= {P99_TARGET_MS:g} ms (1 in flight): {verdict}")


# ---------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--agents", type=int, help="agents to register (default 10000; --quick 1000)"
    )
    parser.add_argument(
        "--matches", type=int, default=50, help="agents with the needle capability (default 50)"
    )
    parser.add_argument(
        "--calls", type=int, help="timed discoveries per variant (default 2000; --quick 200)"
    )
    parser.add_argument(
        "--warmup", type=int, help="untimed discoveries first (default 200; --quick 20)"
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=16,
        help="calls in flight in the parallel variant (default 16)",
    )
    parser.add_argument(
        "--register-in-flight",
        type=int,
        default=64,
        help="concurrent RegisterAgent calls (default 64)",
    )
    parser.add_argument(
        "--seed", type=int, default=7, help="seed of the generated agents (default 7)"
    )
    parser.add_argument(
        "--log-level", default="INFO", help="coordinator log level (default INFO, as in production)"
    )
    parser.add_argument("--quick", action="store_true", help="a small run for a smoke test")
    parser.add_argument(
        "--output", type=Path, help="JSON file (default bench/results/discovery_scale[.quick].json)"
    )
    args = parser.parse_args(argv)
    small = args.quick
    args.agents = args.agents if args.agents is not None else (1000 if small else 10_000)
    args.calls = args.calls if args.calls is not None else (200 if small else 2000)
    args.warmup = args.warmup if args.warmup is not None else (20 if small else 200)
    if args.output is None:
        args.output = RESULTS_DIR / (
            "discovery_scale.quick.json" if small else "discovery_scale.json"
        )
    if not 0 < args.matches <= args.agents:
        parser.error("--matches must be from 1 to --agents")
    if args.calls < 1 or args.warmup < 0 or args.parallel < 1 or args.register_in_flight < 1:
        parser.error("--calls, --parallel and --register-in-flight must be at least 1")
    return args


def _raise_stop(signum: int, frame: object) -> None:
    raise Stop(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_stop)
    workdir = Path(tempfile.mkdtemp(prefix="aitbc-bench-"))
    children = Children(workdir)
    # Generous liveness: registered agents never heartbeat during the run.
    liveness_s = 3600.0
    exit_codes: dict[str, int | None] = {}
    load_at_start = round(os.getloadavg()[0], 2)
    try:
        children.start_redis()
        children.start_coordinator(liveness_s, args.log_level)
        print(
            f"redis-server on {children.redis.port}, coordinator on {children.address}", flush=True
        )
        results = asyncio.run(run_benchmark(children, args))
    except (KeyboardInterrupt, Stop) as exc:
        print(
            f"\ninterrupted ({str(exc) or 'Ctrl-C'}): stopping the coordinator and redis-server",
            file=sys.stderr,
        )
        return 130
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(f"coordinator log (last lines):\n{children.log_tail()}", file=sys.stderr)
        return 1
    finally:
        # No second Ctrl-C or SIGTERM may interrupt the clean-up itself.
        previous = {
            sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        exit_codes = children.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(workdir, ignore_errors=True)

    report = {
        "benchmark": "discovery_scale",
        "command": " ".join(
            ["python", "bench/discovery_scale.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": {
            "agents": args.agents,
            "matches": args.matches,
            "calls": args.calls,
            "warmup": args.warmup,
            "parallel": args.parallel,
            "seed": args.seed,
            "coordinator_log_level": args.log_level,
            "coordinator_liveness_timeout_s": liveness_s,
            "query": {"capabilities": [NEEDLE], "page_size": min(args.matches, 1000)},
        },
        "environment": {"load_average_1m_at_start": load_at_start, **environment()},
        "results": results,
        "p99_target_ms": P99_TARGET_MS,
        "p99_target_met": results["discover_sequential"]["p99_ms"] <= P99_TARGET_MS,
        "coordinator_exit_code": exit_codes.get("coordinator"),
    }
    print_report(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\nwrote {args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output}"
    )
    if exit_codes.get("coordinator") != 0:
        print(
            f"warning: the coordinator exited with {exit_codes.get('coordinator')} on SIGTERM",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
