"""Typed configuration, read once at start-up from the environment and an optional env file.

Real environment variables win over the env file (systemd's ``EnvironmentFile=`` puts the
file's values into the environment anyway). A bad value raises ``ConfigError`` naming the
variable, and the server does not start.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from coordinator import config_values as parse
from coordinator.config_checks import check_settings
from coordinator.config_values import ANY_AGENT_TYPE, ConfigError

DEFAULT_REDIS_URL = "redis://localhost:6379/1"
DEFAULT_AGENT_TYPES = (
    "coordinator",
    "worker",
    "specialist",
    "monitor",
    "gateway",
    "orchestrator",
    "inference",
    "training",
    "processing",
)

DEFAULT_JWT_AUDIENCE = "aitbc-coordinator"
LOOPBACK_HOST = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"
DEFAULT_METRICS_PORT = 9464
"""The Prometheus exporters' customary port (OpenTelemetry's too), away from gRPC's 9001."""


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity, as a container's cpuset sets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux, or a seccomp filter refuses the call
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Settings:
    """Everything the coordinator reads from its environment. Units are in the names."""

    redis_url: str = DEFAULT_REDIS_URL
    redis_url_explicit: bool = False
    """True when REDIS_URL was set: the coordinator then never substitutes a private Redis."""
    host: str = "127.0.0.1"
    """Loopback unless authentication is on (then 0.0.0.0) or COORDINATOR_HOST says."""
    port: int = 9001
    node_id: str = ""
    heartbeat_interval_s: float = 10.0
    liveness_timeout_s: float = 30.0
    inactive_retention_s: float = 86_400.0
    sweep_interval_s: float = 2.0
    agent_types: tuple[str, ...] = DEFAULT_AGENT_TYPES
    max_message_bytes: int = 4 * 1024 * 1024
    shutdown_grace_s: float = 10.0
    health_check_interval_s: float = 1.0
    redis_timeout_s: float = 2.0
    redis_max_connections: int = 256
    redis_allow_eviction: bool = False
    """Serve on a Redis whose maxmemory-policy may evict keys (refused by default)."""
    redis_memory_warn_ratio: float = 0.9
    """Log a warning when Redis' used memory passes this share of its maxmemory."""
    redis_cluster_tag: str = ""
    """Redis Cluster mode: REDIS_URL names a node of the cluster and every key carries the
    hash tag ``{redis_cluster_tag}`` (empty: a single Redis, no tag)."""
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    """Sentinels to ask for the primary (none: REDIS_URL's host is the Redis)."""
    redis_sentinel_master: str = "mymaster"
    redis_sentinel_password: str = ""
    redis_min_replicas: int = 0
    """Replicas that must have a write before it is answered (WAIT); 0: none asked."""
    redis_replica_timeout_ms: int = 500
    keepalive_time_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    log_level: str = "INFO"
    balancing_strategy: str = "least_connections"
    """The cluster's strategy until SetBalancingStrategy stores another one in Redis."""
    max_task_data_bytes: int = 1024 * 1024
    max_struct_depth: int = 32
    """Most levels of objects and lists in a task_data, result or error.details (see
    ``api.wire.MAX_STRUCT_DEPTH``, also the highest value)."""
    idempotency_window_s: float = 86_400.0
    stream_grace_s: float = 15.0
    task_timer_interval_s: float = 0.5
    task_retention_s: float = 7 * 86_400.0
    task_retention_max_tasks: int = 400_000
    """Most finished tasks kept (the oldest go first); 0: only the time bound."""
    metrics_enabled: bool = False
    """Off by default: nodes sharing a host (tests, the README's two-node example) would
    otherwise fight over one metrics port, and an upgrade opens no new unauthenticated port."""
    metrics_port: int = DEFAULT_METRICS_PORT
    health_port: int | None = None
    """A second, plaintext port that serves only grpc.health.v1 (None: no such port).
    Kubernetes' gRPC probes cannot speak TLS; this lets them probe a node whose API port
    requires TLS and credentials, without opening anything else."""
    log_format: str = "text"
    batch_tasks_per_node: int = 2000
    """Tasks a node takes in batch submits (SubmitTasks calls, StreamSubmitTasks messages)
    at once; a call beyond is RESOURCE_EXHAUSTED with RetryInfo (see api/admission.py)."""
    batch_tasks_per_peer: int = 1000
    """The same bound for one client connection."""
    batch_retry_after_s: float = 1.0
    """The retry delay a refused batch submit is told (google.rpc.RetryInfo)."""
    stream_stall_timeout_s: float = 10.0
    """An agent that does not read its StreamAssignments for this long loses the stream."""
    stream_queue_max_events: int = 1000
    stream_queue_max_bytes: int = 16 * 1024 * 1024
    """What a node holds for one stream, waiting to be written (about; see stream_session)."""
    quota_submit_rate: float = 0.0
    """Tasks per second each principal may submit, cluster-wide; 0: no rate limit. Quotas
    apply to authenticated principals only (``coordinator.auth.quotas``)."""
    quota_submit_burst: float = 0.0
    """Most submits of a principal at once (its token bucket's size); 0: twice the rate, at
    least 1 (``quota_submit_burst_effective``)."""
    quota_max_unfinished: int = 0
    """Most tasks of each principal not yet in a final state, cluster-wide; 0: no limit."""
    auth_jwt_hs256_secret_file: str = ""
    """File holding the HS256 secret JWTs are verified with ("" = none)."""
    auth_jwt_public_keys_file: str = ""
    """PEM file of RS256/ES256 public keys JWTs are verified with ("" = none)."""
    auth_jwt_audience: str = DEFAULT_JWT_AUDIENCE
    auth_jwt_issuer: str = ""
    """When set, a JWT's ``iss`` must equal it."""
    auth_token_file: str = ""
    """The static token file (see auth/static_tokens.py; "" = none)."""
    auth_cert_grants_file: str = ""
    """Grants of client-certificate principals (see auth/certificates.py; "" = none)."""
    insecure: bool = False
    """Allows a non-loopback COORDINATOR_HOST (or metrics host) without authentication."""
    reflection: str = "authenticated"
    """With authentication on: "authenticated" (reflection needs a credential) or "open"."""
    metrics_host: str = "127.0.0.1"
    metrics_token_file: str = ""
    """When set, /metrics requires ``Authorization: Bearer <the file's token>``."""

    tls_cert_file: str = ""
    """PEM certificate chain of the gRPC port; with ``tls_key_file``, the port speaks TLS."""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    """PEM CA bundle client certificates must chain to (mutual TLS)."""
    tls_require_client_cert: bool = True
    """Only meaningful with a client CA: gRPC's Python server either requires and verifies
    client certificates or does not ask for them, so false with a CA is refused."""
    workers: int = dataclasses.field(default_factory=default_workers)
    """Processes serving the node's port (node/workers.py; the command line's serve only);
    1: the process itself serves. Default: the cores this process may run on."""
    share_port: bool = False
    """True in a worker: bind the gRPC and health ports with SO_REUSEPORT, which its parent
    holds for the node (never set by configuration: separate nodes must not share a port)."""
    uvloop: bool = True
    """Run the node's event loop on uvloop (COORDINATOR_UVLOOP)."""

    @property
    def tls_enabled(self) -> bool:
        """True when the gRPC port speaks TLS."""
        return bool(self.tls_cert_file)

    @property
    def client_certs_required(self) -> bool:
        """True when every connection must present a client certificate from the client CA
        (mutual TLS); authentication is then on."""
        return self.tls_enabled and bool(self.tls_client_ca_file) and self.tls_require_client_cert

    @property
    def auth_enabled(self) -> bool:
        """True when calls must carry a credential: a JWT key, a token file, or mutual TLS."""
        return bool(
            self.auth_jwt_hs256_secret_file
            or self.auth_jwt_public_keys_file
            or self.auth_token_file
            or self.client_certs_required
        )

    @property
    def any_agent_type(self) -> bool:
        """True when the allow-list is ``*``: any well-formed agent type is accepted."""
        return ANY_AGENT_TYPE in self.agent_types

    @property
    def quota_submit_burst_effective(self) -> float:
        """The token bucket's size: COORDINATOR_QUOTA_SUBMIT_BURST, or by default twice the
        rate and at least 1 (a bucket smaller than one task would admit none)."""
        return self.quota_submit_burst or max(1.0, 2 * self.quota_submit_rate)

    @property
    def address(self) -> str:
        """The host:port the gRPC server binds."""
        if ":" in self.host and not self.host.startswith("["):
            return f"[{self.host}]:{self.port}"  # a bare IPv6 address such as ::
        return f"{self.host}:{self.port}"


def default_node_id() -> str:
    """Host name plus a short random suffix, so two processes on one host differ."""
    host = re.sub(r"[^A-Za-z0-9._:-]", "-", socket.gethostname())[:100] or "node"
    return f"{host}-{secrets.token_hex(3)}"


VARIABLES: dict[str, tuple[str, Any, Callable[[str], Any]]] = {
    "redis_url": ("REDIS_URL", DEFAULT_REDIS_URL, parse.redis_url),
    "host": ("COORDINATOR_HOST", "", parse.host),
    "port": ("COORDINATOR_PORT", 9001, parse.port),
    "heartbeat_interval_s": ("COORDINATOR_HEARTBEAT_INTERVAL_S", 10.0, parse.positive),
    "liveness_timeout_s": ("COORDINATOR_LIVENESS_TIMEOUT_S", 30.0, parse.positive),
    "inactive_retention_s": ("COORDINATOR_INACTIVE_RETENTION_S", 86_400.0, parse.positive),
    "sweep_interval_s": ("COORDINATOR_SWEEP_INTERVAL_S", 2.0, parse.positive),
    "agent_types": ("COORDINATOR_AGENT_TYPES", DEFAULT_AGENT_TYPES, parse.agent_types),
    "max_message_bytes": ("COORDINATOR_MAX_MESSAGE_BYTES", 4 * 1024 * 1024, parse.msg_size),
    "shutdown_grace_s": ("COORDINATOR_SHUTDOWN_GRACE_S", 10.0, parse.non_negative),
    "health_check_interval_s": ("COORDINATOR_HEALTH_CHECK_INTERVAL_S", 1.0, parse.positive),
    "redis_timeout_s": ("COORDINATOR_REDIS_TIMEOUT_S", 2.0, parse.positive),
    "redis_max_connections": ("COORDINATOR_REDIS_MAX_CONNECTIONS", 256, parse.connections),
    "redis_allow_eviction": ("COORDINATOR_REDIS_ALLOW_EVICTION", False, parse.boolean),
    "redis_memory_warn_ratio": ("COORDINATOR_REDIS_MEMORY_WARN_RATIO", 0.9, parse.ratio),
    "redis_cluster_tag": ("COORDINATOR_REDIS_CLUSTER_TAG", "", parse.cluster_tag),
    "redis_sentinels": ("COORDINATOR_REDIS_SENTINELS", (), parse.sentinels),
    "redis_sentinel_master": (
        "COORDINATOR_REDIS_SENTINEL_MASTER",
        "mymaster",
        parse.sentinel_master,
    ),
    "redis_min_replicas": ("COORDINATOR_REDIS_MIN_REPLICAS", 0, parse.replicas),
    "redis_replica_timeout_ms": (
        "COORDINATOR_REDIS_REPLICA_TIMEOUT_MS",
        500,
        parse.replica_timeout_ms,
    ),
    "keepalive_time_s": ("COORDINATOR_KEEPALIVE_TIME_S", 30.0, parse.positive),
    "keepalive_timeout_s": ("COORDINATOR_KEEPALIVE_TIMEOUT_S", 10.0, parse.positive),
    "log_level": ("COORDINATOR_LOG_LEVEL", "INFO", parse.log_level),
    "balancing_strategy": ("COORDINATOR_BALANCING_STRATEGY", "least_connections", parse.strategy),
    "max_task_data_bytes": ("COORDINATOR_MAX_TASK_DATA_BYTES", 1024 * 1024, parse.task_data_size),
    "max_struct_depth": ("COORDINATOR_MAX_STRUCT_DEPTH", 32, parse.struct_depth),
    "idempotency_window_s": ("COORDINATOR_IDEMPOTENCY_WINDOW_S", 86_400.0, parse.positive),
    "stream_grace_s": ("COORDINATOR_STREAM_GRACE_S", 15.0, parse.non_negative),
    "task_timer_interval_s": ("COORDINATOR_TASK_TIMER_INTERVAL_S", 0.5, parse.positive),
    "task_retention_s": ("COORDINATOR_TASK_RETENTION_S", 7 * 86_400.0, parse.positive),
    "task_retention_max_tasks": (
        "COORDINATOR_TASK_RETENTION_MAX_TASKS",
        400_000,
        parse.retained_tasks,
    ),
    "metrics_enabled": ("COORDINATOR_METRICS_ENABLED", False, parse.boolean),
    "metrics_port": ("COORDINATOR_METRICS_PORT", DEFAULT_METRICS_PORT, parse.port),
    "health_port": ("COORDINATOR_HEALTH_PORT", None, parse.port),
    "log_format": ("COORDINATOR_LOG_FORMAT", "text", parse.log_format),
    "batch_tasks_per_node": ("COORDINATOR_BATCH_TASKS_PER_NODE", 2000, parse.batch_tasks),
    "batch_tasks_per_peer": ("COORDINATOR_BATCH_TASKS_PER_PEER", 1000, parse.batch_tasks),
    "batch_retry_after_s": ("COORDINATOR_BATCH_RETRY_AFTER_S", 1.0, parse.positive),
    "stream_stall_timeout_s": ("COORDINATOR_STREAM_STALL_TIMEOUT_S", 10.0, parse.positive),
    "stream_queue_max_events": ("COORDINATOR_STREAM_QUEUE_MAX_EVENTS", 1000, parse.queue_events),
    "stream_queue_max_bytes": (
        "COORDINATOR_STREAM_QUEUE_MAX_BYTES",
        16 * 1024 * 1024,
        parse.queue_bytes,
    ),
    "quota_submit_rate": ("COORDINATOR_QUOTA_SUBMIT_RATE", 0.0, parse.quota_rate),
    "quota_submit_burst": ("COORDINATOR_QUOTA_SUBMIT_BURST", 0.0, parse.quota_burst),
    "quota_max_unfinished": ("COORDINATOR_QUOTA_MAX_UNFINISHED", 0, parse.quota_tasks),
    "auth_jwt_hs256_secret_file": ("COORDINATOR_AUTH_JWT_HS256_SECRET_FILE", "", parse.file_path),
    "auth_jwt_public_keys_file": ("COORDINATOR_AUTH_JWT_PUBLIC_KEYS_FILE", "", parse.file_path),
    "auth_jwt_audience": ("COORDINATOR_AUTH_JWT_AUDIENCE", DEFAULT_JWT_AUDIENCE, parse.name),
    "auth_jwt_issuer": ("COORDINATOR_AUTH_JWT_ISSUER", "", parse.name),
    "auth_token_file": ("COORDINATOR_AUTH_TOKEN_FILE", "", parse.file_path),
    "auth_cert_grants_file": ("COORDINATOR_AUTH_CERT_GRANTS_FILE", "", parse.file_path),
    "insecure": ("COORDINATOR_INSECURE", False, parse.boolean),
    "reflection": ("COORDINATOR_REFLECTION", "authenticated", parse.reflection),
    "metrics_host": ("COORDINATOR_METRICS_HOST", LOOPBACK_HOST, parse.host),
    "metrics_token_file": ("COORDINATOR_METRICS_TOKEN_FILE", "", parse.file_path),
    "tls_cert_file": ("COORDINATOR_TLS_CERT_FILE", "", parse.certificates_file),
    "tls_key_file": ("COORDINATOR_TLS_KEY_FILE", "", parse.private_key_file),
    "tls_client_ca_file": ("COORDINATOR_TLS_CLIENT_CA_FILE", "", parse.certificates_file),
    "tls_require_client_cert": ("COORDINATOR_TLS_REQUIRE_CLIENT_CERT", True, parse.boolean),
    "uvloop": ("COORDINATOR_UVLOOP", True, parse.boolean),
}
"""Settings field -> (environment variable, default, parser). ``node_id`` and ``workers``
have defaults read from the machine; ``redis_url_explicit`` says whether REDIS_URL was set."""


def load_settings(environ: Mapping[str, str], env_file: str | Path | None = None) -> Settings:
    """Build and validate Settings from ``environ`` over the values of ``env_file``."""
    values: dict[str, str] = {}
    if env_file is not None:
        path = Path(env_file)
        if not path.is_file():
            raise ConfigError(f"--env-file: {path} does not exist or is not a file")
        values.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    values.update(environ)
    reader = parse.Reader(values)
    settings = Settings(
        **{field: reader.get(*variable) for field, variable in VARIABLES.items()},
        redis_url_explicit=bool(values.get("REDIS_URL", "").strip()),
        node_id=reader.get("NODE_ID", "", parse.node_id) or default_node_id(),
        workers=reader.get("COORDINATOR_WORKERS", default_workers(), parse.workers),
        # Any text, not stripped or checked: a password.
        redis_sentinel_password=values.get("COORDINATOR_REDIS_SENTINEL_PASSWORD", ""),
    )
    if not settings.host:
        # Listening beyond this machine is the default only when callers must authenticate.
        settings = dataclasses.replace(
            settings, host=ALL_INTERFACES if settings.auth_enabled else LOOPBACK_HOST
        )
    check_settings(settings, values)
    return settings
