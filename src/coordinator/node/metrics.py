"""The node's Prometheus metrics, served over plain HTTP on a port of their own (on loopback
unless COORDINATOR_METRICS_HOST says otherwise, behind a bearer token when
COORDINATOR_METRICS_TOKEN_FILE is set).

Each node has its own ``CollectorRegistry`` (not prometheus_client's global one), so several
nodes in one process (the tests) each count only their own calls. What the node counts
itself (RPCs, assignment latency, Redis errors, its open streams) lives in the registry;
what belongs to the cluster (tasks by state, queue depth) is read from Redis when scraped,
so every node reports the same, current numbers.

prometheus_client serves the registry from a thread and collects synchronously in it, while
the node's Redis client belongs to the asyncio loop. The Redis-backed collector therefore
has a small synchronous Redis client of its own: a scrape costs one pipelined round trip of
ZCARDs, answers are never staler than the scrape, and nothing runs when nobody scrapes
(a cache refreshed by a periodic task would cost Redis work all the time and still lag).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from wsgiref.simple_server import WSGIServer

import redis
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import make_wsgi_app
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from coordinator.auth import audit
from coordinator.auth.files import WatchedFile
from coordinator.config import Settings
from coordinator.node.metrics_http import (
    METRICS_TOKEN_VARIABLE,
    bearer_protected,
    read_token,
    serve_wsgi,
)
from coordinator.node.redis_memory import MemoryWatch
from coordinator.storage import keys
from coordinator.storage.connection import connect_redis_sync
from coordinator.tasks.models import PRIORITIES_MOST_URGENT_FIRST, TaskState

log = logging.getLogger(__name__)

NAMESPACE = "aitbc_coordinator"

REDIS_ERROR_KINDS = ("unavailable", "refused_writes")
"""Redis could not be reached (or timed out, or was loading), or it answered but refused
writes (a replica, maxmemory, MISCONF)."""

ASSIGNMENT_WAYS = ("submit", "pass")
"""How a task was assigned: in the round trip that queued it, or by a dispatch pass."""

RPC_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
"""From half a millisecond (a health check) to the Redis timeout and beyond."""

ASSIGNMENT_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
"""From an idle cluster's few milliseconds to tasks that waited a minute for a free agent."""


class NodeMetrics:
    """The metrics of one node, in its own registry."""

    def __init__(self, settings: Settings, connected_agents: Callable[[], int]) -> None:
        self._settings = settings
        # No "*_created" timestamp series beside every counter and histogram: they double
        # the scrape and Prometheus does not read them from the text format. (Process-wide,
        # like the library's own switch, PROMETHEUS_DISABLE_CREATED_SERIES.)
        disable_created_metrics()
        self.registry = CollectorRegistry()
        self._count_rpcs()
        self.submit_to_assignment = Histogram(
            "submit_to_assignment_seconds",
            "From a task's submission to its first assignment, observed by the assigning node.",
            namespace=NAMESPACE,
            buckets=ASSIGNMENT_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.dispatch_turn_wait = Histogram(
            "dispatch_turn_wait_seconds",
            "How long a request for a dispatch pass waited while another node held that"
            " partition's turn, observed by the node whose pass served it.",
            namespace=NAMESPACE,
            buckets=RPC_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.assignments = self._counter_by(
            "assignments",
            "Assignments this node made, by way: 'submit' (in the round trip that queued the"
            " task) or 'pass' (a dispatch pass).",
            "way",
            ASSIGNMENT_WAYS,
        )
        # Counted on every assignment: the labelled children are looked up once, not per count.
        self._assignments_by_way = {way: self.assignments.labels(way) for way in ASSIGNMENT_WAYS}
        self.audit_events = self._counter_by(
            "audit_events",
            "Audited events, by action: operator actions (purge_queue, set_strategy,"
            " deregister_agent, update_agent_status, cancel_task) and refusals"
            " (permission_denied, unauthenticated).",
            "action",
            audit.ACTIONS,
        )
        self.auth_failures = Counter(
            "auth_failures",
            "Calls and batch entries refused UNAUTHENTICATED or PERMISSION_DENIED, by RPC.",
            ["rpc", "code"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.redis_errors = self._counter_by(
            "redis_errors",
            "Calls answered UNAVAILABLE because of Redis, by kind.",
            "kind",
            REDIS_ERROR_KINDS,
        )
        self._describe_node(settings, connected_agents)
        self._http: tuple[WSGIServer, threading.Thread] | None = None
        self._tasks_collector: TaskIndexCollector | None = None

    def _count_rpcs(self) -> None:
        """The RPC counters and durations (the interceptor in ``api/metrics_interceptor``)."""
        self.rpc_handled = Counter(
            "rpc_handled",
            "RPCs handled, by method and final status code (server streams count when they end).",
            ["service", "method", "type", "code"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.rpc_duration = Histogram(
            "rpc_duration_seconds",
            "Time to answer a unary RPC, whatever its status code.",
            ["service", "method"],
            namespace=NAMESPACE,
            buckets=RPC_LATENCY_BUCKETS_S,
            registry=self.registry,
        )

    def _describe_node(self, settings: Settings, connected_agents: Callable[[], int]) -> None:
        """What is read when scraped: open streams, the node's id, the process."""
        Gauge(
            "connected_agents",
            "Agents with an open StreamAssignments on this node.",
            namespace=NAMESPACE,
            registry=self.registry,
        ).set_function(connected_agents)
        Info("node", "The node's NODE_ID.", namespace=NAMESPACE, registry=self.registry).info(
            {"node_id": settings.node_id}
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def watch_redis_memory(self, memory: MemoryWatch) -> None:
        """Gauges of Redis' used memory and its maxmemory, as the health checks last read them
        (``node.redis_memory``): an alert on their ratio sees Redis fill up before it refuses
        writes."""
        for name, documentation, read in (
            (
                "redis_used_memory_bytes",
                "Redis' used_memory at the last health check.",
                "used_bytes",
            ),
            (
                "redis_maxmemory_bytes",
                "Redis' maxmemory (0: no limit) at the last health check.",
                "max_bytes",
            ),
        ):
            Gauge(name, documentation, namespace=NAMESPACE, registry=self.registry).set_function(
                functools.partial(_memory_reading, memory, read)
            )

    def _counter_by(
        self, name: str, documentation: str, label: str, values: Sequence[str]
    ) -> Counter:
        """A counter with one label, each of whose ``values`` has its series from the
        start, at 0 (a rate over a series that appears late misses its first count)."""
        counter = Counter(name, documentation, [label], namespace=NAMESPACE, registry=self.registry)
        for value in values:
            counter.labels(value)
        return counter

    def count_redis_error(self, kind: str) -> None:
        """One call failed because of Redis; ``kind`` is one of REDIS_ERROR_KINDS."""
        self.redis_errors.labels(kind).inc()

    def count_audit_event(self, action: str) -> None:
        """One audited event; ``action`` is one of ``audit.ACTIONS``."""
        self.audit_events.labels(action).inc()

    def count_auth_failure(self, rpc: str, code: str) -> None:
        """A call or batch entry of ``rpc`` (Service/Method) was refused with ``code``."""
        self.auth_failures.labels(rpc, code).inc()

    def count_assignment(self, way: str) -> None:
        """This node assigned a task; ``way`` is one of ASSIGNMENT_WAYS."""
        self._assignments_by_way[way].inc()

    def observe_submit_to_assignment_ms(self, latency_ms: int) -> None:
        """A task was assigned for the first time, ``latency_ms`` after it was submitted."""
        self.submit_to_assignment.observe(max(0, latency_ms) / 1000)

    def observe_dispatch_turn_wait_ms(self, waited_ms: int) -> None:
        """A pass served requests that had waited ``waited_ms`` for its turn."""
        self.dispatch_turn_wait.observe(waited_ms / 1000)

    def start_http(self) -> int:
        """Serve ``/metrics`` on COORDINATOR_METRICS_HOST:COORDINATOR_METRICS_PORT, behind a
        bearer token when COORDINATOR_METRICS_TOKEN_FILE is set; returns the port."""
        host = self._settings.metrics_host.strip("[]")  # getaddrinfo takes an IPv6 address bare
        app = make_wsgi_app(self.registry)
        if self._settings.metrics_token_file:
            app = bearer_protected(
                app,
                WatchedFile(self._settings.metrics_token_file, METRICS_TOKEN_VARIABLE, read_token),
            )
        collector = TaskIndexCollector(self._settings)
        self.registry.register(collector)
        try:
            server, thread = serve_wsgi(app, host, self._settings.metrics_port)
        except OSError as exc:
            self.registry.unregister(collector)
            collector.close()
            raise OSError(
                f"cannot bind the metrics port {host}:{self._settings.metrics_port} "
                f"(COORDINATOR_METRICS_PORT): {exc.strerror or exc}"
            ) from None
        self._http = (server, thread)
        self._tasks_collector = collector
        port = int(server.server_address[1])
        log.info(
            "metrics served on http://%s:%d/metrics%s",
            self._settings.metrics_host,
            port,
            " (bearer token required)" if self._settings.metrics_token_file else "",
        )
        return port

    def http_address(self) -> tuple[str, int]:
        """The address the metrics endpoint is bound to (while it is served)."""
        assert self._http is not None, "metrics are not served"
        host, port = self._http[0].server_address[:2]
        return str(host), int(port)

    async def stop_http(self) -> None:
        """Stop serving and close the collector's Redis client (idempotent)."""
        http, self._http = self._http, None
        if http is not None:
            server, thread = http
            # shutdown() waits for the serving loop, which polls every 0.5 s: not on the loop.
            await asyncio.to_thread(server.shutdown)
            server.server_close()
            await asyncio.to_thread(thread.join)
        collector, self._tasks_collector = self._tasks_collector, None
        if collector is not None:
            self.registry.unregister(collector)
            collector.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _memory_reading(memory: MemoryWatch, field: str) -> float:
    """One field of the last Redis memory reading, 0 before the first."""
    return float(getattr(memory.last, field)) if memory.last else 0.0


class TaskIndexCollector(Collector):
    """Tasks by state and queued tasks by priority: index sizes read from Redis per scrape.

    While Redis cannot be read these two metrics are left out of the scrape (absent, not
    stale); everything else is still served.
    """

    def __init__(self, settings: Settings) -> None:
        self._redis = connect_redis_sync(settings, f"aitbc-coordinator:{settings.node_id}:metrics")

    def describe(self) -> Iterator[Metric]:
        """The families, without reading Redis (the registry calls this on register)."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        """The families with the sizes Redis holds now."""
        states = [state.name for state in TaskState]
        priorities = [priority.name for priority in PRIORITIES_MOST_URGENT_FIRST]
        try:
            # One MULTI: a task that compaction archives meanwhile is counted once.
            with self._redis.pipeline(transaction=True) as pipe:
                for state in states:
                    pipe.zcard(keys.tasks_in_state(state))
                pipe.hgetall(keys.TASK_ARCHIVED_STATES)
                for priority in priorities:
                    pipe.zcard(keys.task_queue(priority))
                sizes = pipe.execute()
        except redis.RedisError as exc:
            log.warning("metrics: cannot read the task indexes from Redis (%r)", exc)
            return
        tasks, queued = self._families()
        archived = {_text(k): int(v) for k, v in sizes[len(states)].items()}
        for state, size in zip(states, sizes[: len(states)], strict=True):
            tasks.add_metric([state], size + archived.get(state, 0))
        for priority, size in zip(priorities, sizes[len(states) + 1 :], strict=True):
            queued.add_metric([priority], size)
        yield from (tasks, queued)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                f"{NAMESPACE}_tasks",
                "Tasks in each state, in the whole cluster (finished ones until their retention ends).",
                labels=["state"],
            ),
            GaugeMetricFamily(
                f"{NAMESPACE}_queue_depth",
                "PENDING tasks ready to run, by priority, in the whole cluster.",
                labels=["priority"],
            ),
        )

    def close(self) -> None:
        """Close the collector's Redis connections."""
        self._redis.close()
