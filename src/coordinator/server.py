"""Assembling, starting and stopping one coordinator node.

``create_server(settings)`` builds and starts a node and returns it with its bound port, so
tests can bind port 0 and talk to a real server; ``serve(settings)`` runs a node until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from aitbc.coordinator.v1 import agent_pb2, agent_pb2_grpc, task_pb2, task_pb2_grpc
from coordinator import tls
from coordinator.agents.liveness import LivenessSweeper
from coordinator.agents.registry import AgentRegistry
from coordinator.api.admission import AdmissionInterceptor, AdmissionLimiter
from coordinator.api.agent_service import AgentService
from coordinator.api.auth_interceptor import AuthInterceptor
from coordinator.api.error_mapping import ErrorMappingInterceptor
from coordinator.api.metrics_interceptor import RpcMetricsInterceptor
from coordinator.api.serialized_replies import SerializedRepliesInterceptor
from coordinator.api.task_service import TaskService
from coordinator.auth.audit import Auditor
from coordinator.auth.authenticator import Authenticator
from coordinator.config import Settings
from coordinator.config_checks import check_exposure
from coordinator.delivery.events import EventHub
from coordinator.delivery.streams import AssignmentStreams, QueueLimits
from coordinator.dispatch.dispatcher import Dispatcher
from coordinator.node import reflection
from coordinator.node.gc_pauses import CollectorPolicy
from coordinator.node.health import RedisHealthMonitor
from coordinator.node.health_port import HealthListener
from coordinator.node.metrics import NodeMetrics
from coordinator.node.redis_memory import MemoryWatch
from coordinator.storage import key_tags, page_tokens
from coordinator.storage.connection import Durability, connect_redis
from coordinator.storage.multiplex import MultiplexedConnection
from coordinator.tasks.reaper import TaskReaper
from coordinator.tasks.store import TaskStore

log = logging.getLogger(__name__)

AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
TASK_SERVICE = task_pb2.DESCRIPTOR.services_by_name["TaskService"]
SERVICE_NAMES = (AGENT_SERVICE.full_name, TASK_SERVICE.full_name)

CLIENT_PING_MIN_INTERVAL_MS = 10_000
"""Agents may send keepalive pings every 10 s or more without being told to go away."""


MAX_PENDING_CALLS = 20_000
"""Calls gRPC core may hold for the node per method (room for 10,000 agents reconnecting)."""


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel options for long-lived agent streams and configurable message sizes."""
    return [
        # A second node on the same port must fail, not share it; a node's workers share
        # the port their parent holds (node/workers.py).
        ("grpc.so_reuseport", 1 if settings.share_port else 0),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", CLIENT_PING_MIN_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", 2),
        # A node that cannot keep up queues calls in gRPC core until it takes them. Past
        # grpc.server.max_pending_requests (1,000 per method by default) core drops new calls
        # at random, past the hard limit (3,000) all of them: each drop reaches the client as
        # CANCELLED "CANCELLED", logged nowhere. Queue instead: the client's deadline decides
        # (DEADLINE_EXCEEDED, explicit). Equal limits turn off the random dropping. (Core
        # still drops a call left waiting 30 s, grpc.server_max_unrequested_time_in_server,
        # longer than the SDK's deadlines.) What made calls wait here for seconds was a node
        # whose loop big batches held: those are now admitted by weight and refused beyond it
        # (api/admission.py), so this queue only absorbs bursts of small calls (reconnects).
        ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
    ]


class Coordinator:
    """One running node: the gRPC server, its Redis client and its background tasks."""

    def __init__(self, settings: Settings) -> None:
        check_exposure(settings)  # settings built in code get the protected-mode rule too
        key_tags.use_tag(settings.redis_cluster_tag)  # before any key is built (Redis Cluster)
        # Reads the credential files first: a bad one stops the node before it opens anything.
        self.authenticator = Authenticator.from_settings(settings)
        self.settings = settings
        self.redis = connect_redis(settings)
        # Task scripts, the hot path, share one auto-pipelined connection (redis_multiplex).
        self.multiplexed = MultiplexedConnection.like(
            self.redis, settings.redis_timeout_s, Durability.of(settings)
        )
        self.registry = AgentRegistry(self.redis, settings)
        self.page_token_key = page_tokens.ClusterKey(self.redis)
        self.tasks = TaskStore(self.redis, self.multiplexed, settings)
        self.streams = self._assignment_streams()
        self.metrics = NodeMetrics(settings, connected_agents=lambda: self.streams.session_count)
        self.dispatcher = Dispatcher(
            self.redis,
            self.multiplexed,
            self.registry,
            self.tasks,
            settings,
            self.metrics,
            deliver=self.streams.deliver_local,
            streams_here=self.streams.holds,
        )
        self.tasks.use_dispatch(self.dispatcher)
        self.events = EventHub(
            self.redis,
            settings.node_id,
            on_node_message=self.streams.on_node_message,
            on_reconnect=self._resynchronise,
            sharded=bool(settings.redis_cluster_tag),
        )
        self.reaper = TaskReaper(self.redis, settings, wake_dispatcher=self.dispatcher.request)
        self.admission = AdmissionLimiter.of(settings)
        self.auditor = Auditor(self.metrics.count_audit_event, self.metrics.count_auth_failure)
        self.server = grpc.aio.server(
            interceptors=self._interceptors(), options=server_options(settings)
        )
        # Health checks use their own connection: a busy pool must not look like an outage.
        self.health_redis = connect_redis(settings, max_connections=1)
        self.health = self._health_monitor()
        self.metrics.watch_redis_memory(self.health.memory)
        self.sweeper = LivenessSweeper(
            self.registry, self.redis, settings.node_id, settings.sweep_interval_s
        )
        self._add_services()
        self.health_listener = (
            HealthListener(self.health.servicer, settings)
            if settings.health_port is not None
            else None
        )
        self.health_port: int | None = None
        """The bound health-only port while it is served (COORDINATOR_HEALTH_PORT)."""
        self.port = 0
        self.metrics_port: int | None = None
        """The bound metrics port while metrics are served (COORDINATOR_METRICS_ENABLED)."""
        self._stop_lock = asyncio.Lock()
        self._stopped = False

    def _assignment_streams(self) -> AssignmentStreams:
        """The agents' assignment streams this node holds."""
        settings = self.settings
        return AssignmentStreams(
            self.redis,
            self.tasks,
            settings.node_id,
            resync_s=settings.heartbeat_interval_s,
            limits=QueueLimits(settings.stream_queue_max_events, settings.stream_queue_max_bytes),
            stall_timeout_s=settings.stream_stall_timeout_s,
        )

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The server's interceptors, outermost first."""
        # The metrics interceptor first: it sees the status codes the error mapping chose.
        interceptors: list[grpc.aio.ServerInterceptor] = [
            RpcMetricsInterceptor(self.metrics),
            ErrorMappingInterceptor(on_redis_error=self.metrics.count_redis_error),
        ]
        if self.authenticator is not None:
            # Inside the error mapping, which answers its refusals; before admission, so an
            # unauthenticated caller takes no share of the batch budget.
            interceptors.append(
                AuthInterceptor(
                    self.authenticator,
                    self.auditor,
                    reflection_open=self.settings.reflection == "open",
                )
            )
        interceptors += [
            # Inside the error mapping, which answers its refusals with RetryInfo.
            AdmissionInterceptor(self.admission),
            # Last, so that the others keep the serializer it gives DiscoverAgents.
            SerializedRepliesInterceptor(),
        ]
        return interceptors

    def _health_monitor(self) -> RedisHealthMonitor:
        """grpc.health.v1 following Redis, on the node's own health connection."""
        settings = self.settings
        return RedisHealthMonitor(
            health.aio.HealthServicer(),
            self.health_redis,
            SERVICE_NAMES,
            settings.node_id,
            interval_s=settings.health_check_interval_s,
            timeout_s=settings.redis_timeout_s,
            memory=MemoryWatch(
                warn_ratio=settings.redis_memory_warn_ratio,
                allow_eviction=settings.redis_allow_eviction,
            ),
        )

    def _add_services(self) -> None:
        """The coordinator's services, health and reflection, on the server."""
        agent_pb2_grpc.add_AgentServiceServicer_to_server(
            AgentService(self.registry, self.streams, self.dispatcher, self.settings),
            self.server,
        )
        task_pb2_grpc.add_TaskServiceServicer_to_server(
            TaskService(self.tasks, self.events, self.settings), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self.server)
        reflection.enable(self.server, SERVICE_NAMES, [health.SERVICE_NAME])

    async def start(self) -> int:
        """Bind, start serving and start the background tasks; returns the bound port."""
        await self.health.refuse_evicting_redis()
        if self.settings.metrics_enabled:
            self.metrics_port = self.metrics.start_http()
        try:
            self.port = self._bind()
        except RuntimeError as exc:  # grpc's way of saying the bind failed
            await self.metrics.stop_http()
            raise OSError(
                f"cannot bind {self.settings.address}: is another process using the port? ({exc})"
            ) from None
        await self.server.start()
        if self.health_listener is not None:
            self.health_port = await self.health_listener.start()
        self.streams.start()
        await self.health.start()
        await self.events.start()
        self.dispatcher.start()
        self.reaper.start()
        self.sweeper.start()
        self.page_token_key.start()
        log.info(
            "coordinator serving on %s:%d (%s, Redis %s, health %s, authentication %s)",
            self.settings.host,
            self.port,
            _transport(self.settings),
            _redacted(self.settings.redis_url),
            "SERVING" if self.health.serving else "NOT_SERVING",
            "on" if self.settings.auth_enabled else "off",
        )
        return self.port

    def _bind(self) -> int:
        """TLS on the gRPC port when a certificate is configured (tls.py), else
        plaintext."""
        settings = self.settings
        if not settings.tls_enabled:
            return self.server.add_insecure_port(settings.address)
        files = tls.TlsFiles(
            settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
        )
        credentials = tls.server_credentials(files, settings.client_certs_required)
        return self.server.add_secure_port(settings.address, credentials)

    async def stop(self, grace_s: float | None = None) -> None:
        """Health NOT_SERVING first, refuse new calls, let running calls finish within the
        grace period, then close Redis. Idempotent: later calls wait for the first."""
        async with self._stop_lock:
            if self._stopped:
                return
            grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
            await self.health.stop()
            await self.health.servicer.enter_graceful_shutdown()
            # From here on no call may start: gRPC refuses new calls (UNAVAILABLE) as soon as
            # the server stops, and a StreamAssignments already past gRPC is refused by the
            # streams. The server waits, in the background, for the running calls (at most
            # the grace period), while the node tells its agents to leave.
            self.streams.begin_drain()
            serving = asyncio.create_task(self.server.stop(grace), name="server-stop")
            # Said when it becomes true: the grace period runs from here, whatever the
            # background tasks below take to stop (each may wait on Redis).
            log.info("draining: health NOT_SERVING, new calls refused, grace %.1f s", grace)
            await self.sweeper.stop()
            await self.page_token_key.stop()
            await self.reaper.stop()
            await self.dispatcher.stop()
            # Agents are told to reconnect elsewhere; their tasks wait for them.
            await self.streams.drain()
            await serving
            await self.events.stop()
            await self.streams.stop()
            await self.metrics.stop_http()
            self.metrics_port = None
            if self.health_listener is not None:  # last: probes saw NOT_SERVING while draining
                await self.health_listener.stop()
                self.health_port = None
            await self.health.withdraw()
            await self.multiplexed.aclose()
            await self.redis.aclose()
            await self.health_redis.aclose()
            self._stopped = True
            log.info("coordinator stopped")

    def _resynchronise(self) -> None:
        """After the pub/sub connection (re)connects: look in Redis for what was missed."""
        self.streams.resync_all()
        self.dispatcher.request()


async def create_server(settings: Settings) -> tuple[Coordinator, int]:
    """Build and start a node; returns it and the port it bound (useful with port 0)."""
    coordinator = Coordinator(settings)
    port = await coordinator.start()
    return coordinator, port


async def serve(settings: Settings, on_serving: Callable[[], None] | None = None) -> int:
    """Run one node until SIGTERM or SIGINT, then shut down gracefully; returns 0.
    ``on_serving`` is called once the node serves (a worker tells its parent)."""
    # Handlers first: a signal that arrives while the node starts still drains it.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    coordinator, _ = await create_server(settings)
    if on_serving is not None:
        on_serving()
    # Everything allocated so far (modules, descriptors) lives as long as the process, and
    # so do most streams' objects: keep them out of most of the collector's scans.
    collector = CollectorPolicy()
    collector.install()
    await stop.wait()
    log.info("signal received: shutting down")
    await coordinator.stop()
    collector.uninstall()
    return 0


def _transport(settings: Settings) -> str:
    if settings.client_certs_required:
        return "TLS, client certificates required"
    return "TLS" if settings.tls_enabled else "plaintext"


def _redacted(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
