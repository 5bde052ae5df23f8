"""Typed configuration, read once at start-up from the environment and an optional env file.

Real environment variables win over the env file (systemd's ``EnvironmentFile=`` puts the
file's values into the environment anyway). A bad value raises ``ConfigError`` naming the
variable, and the server does not start.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

from coordinator import config_values as parse
from coordinator.auth import tls
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
        redis_url=reader.get("REDIS_URL", DEFAULT_REDIS_URL, parse.redis_url),
        redis_url_explicit=bool(values.get("REDIS_URL", "").strip()),
        host=reader.get("COORDINATOR_HOST", "", parse.host),
        port=reader.get("COORDINATOR_PORT", 9001, parse.port),
        node_id=reader.get("NODE_ID", "", parse.node_id) or default_node_id(),
        heartbeat_interval_s=reader.get("COORDINATOR_HEARTBEAT_INTERVAL_S", 10.0, parse.positive),
        liveness_timeout_s=reader.get("COORDINATOR_LIVENESS_TIMEOUT_S", 30.0, parse.positive),
        inactive_retention_s=reader.get(
            "COORDINATOR_INACTIVE_RETENTION_S", 86_400.0, parse.positive
        ),
        sweep_interval_s=reader.get("COORDINATOR_SWEEP_INTERVAL_S", 2.0, parse.positive),
        agent_types=reader.get("COORDINATOR_AGENT_TYPES", DEFAULT_AGENT_TYPES, parse.agent_types),
        max_message_bytes=reader.get(
            "COORDINATOR_MAX_MESSAGE_BYTES", 4 * 1024 * 1024, parse.msg_size
        ),
        shutdown_grace_s=reader.get("COORDINATOR_SHUTDOWN_GRACE_S", 10.0, parse.non_negative),
        health_check_interval_s=reader.get(
            "COORDINATOR_HEALTH_CHECK_INTERVAL_S", 1.0, parse.positive
        ),
        redis_timeout_s=reader.get("COORDINATOR_REDIS_TIMEOUT_S", 2.0, parse.positive),
        redis_max_connections=reader.get(
            "COORDINATOR_REDIS_MAX_CONNECTIONS", 256, parse.connections
        ),
        redis_allow_eviction=reader.get("COORDINATOR_REDIS_ALLOW_EVICTION", False, parse.boolean),
        redis_memory_warn_ratio=reader.get("COORDINATOR_REDIS_MEMORY_WARN_RATIO", 0.9, parse.ratio),
        redis_sentinels=reader.get("COORDINATOR_REDIS_SENTINELS", (), parse.sentinels),
        redis_sentinel_master=reader.get(
            "COORDINATOR_REDIS_SENTINEL_MASTER", "mymaster", parse.sentinel_master
        ),
        redis_sentinel_password=values.get("COORDINATOR_REDIS_SENTINEL_PASSWORD", ""),
        redis_min_replicas=reader.get("COORDINATOR_REDIS_MIN_REPLICAS", 0, parse.replicas),
        redis_replica_timeout_ms=reader.get(
            "COORDINATOR_REDIS_REPLICA_TIMEOUT_MS", 500, parse.replica_timeout_ms
        ),
        keepalive_time_s=reader.get("COORDINATOR_KEEPALIVE_TIME_S", 30.0, parse.positive),
        keepalive_timeout_s=reader.get("COORDINATOR_KEEPALIVE_TIMEOUT_S", 10.0, parse.positive),
        log_level=reader.get("COORDINATOR_LOG_LEVEL", "INFO", parse.log_level),
        balancing_strategy=reader.get(
            "COORDINATOR_BALANCING_STRATEGY", "least_connections", parse.strategy
        ),
        max_task_data_bytes=reader.get(
            "COORDINATOR_MAX_TASK_DATA_BYTES", 1024 * 1024, parse.task_data_size
        ),
        max_struct_depth=reader.get("COORDINATOR_MAX_STRUCT_DEPTH", 32, parse.struct_depth),
        idempotency_window_s=reader.get(
            "COORDINATOR_IDEMPOTENCY_WINDOW_S", 86_400.0, parse.positive
        ),
        stream_grace_s=reader.get("COORDINATOR_STREAM_GRACE_S", 15.0, parse.non_negative),
        task_timer_interval_s=reader.get("COORDINATOR_TASK_TIMER_INTERVAL_S", 0.5, parse.positive),
        task_retention_s=reader.get("COORDINATOR_TASK_RETENTION_S", 7 * 86_400.0, parse.positive),
        metrics_enabled=reader.get("COORDINATOR_METRICS_ENABLED", False, parse.boolean),
        metrics_port=reader.get("COORDINATOR_METRICS_PORT", DEFAULT_METRICS_PORT, parse.port),
        health_port=reader.get("COORDINATOR_HEALTH_PORT", None, parse.port),
        log_format=reader.get("COORDINATOR_LOG_FORMAT", "text", parse.log_format),
        batch_tasks_per_node=reader.get(
            "COORDINATOR_BATCH_TASKS_PER_NODE", 2000, parse.batch_tasks
        ),
        batch_tasks_per_peer=reader.get(
            "COORDINATOR_BATCH_TASKS_PER_PEER", 1000, parse.batch_tasks
        ),
        batch_retry_after_s=reader.get("COORDINATOR_BATCH_RETRY_AFTER_S", 1.0, parse.positive),
        stream_stall_timeout_s=reader.get(
            "COORDINATOR_STREAM_STALL_TIMEOUT_S", 10.0, parse.positive
        ),
        stream_queue_max_events=reader.get(
            "COORDINATOR_STREAM_QUEUE_MAX_EVENTS", 1000, parse.queue_events
        ),
        stream_queue_max_bytes=reader.get(
            "COORDINATOR_STREAM_QUEUE_MAX_BYTES", 16 * 1024 * 1024, parse.queue_bytes
        ),
        quota_submit_rate=reader.get("COORDINATOR_QUOTA_SUBMIT_RATE", 0.0, parse.quota_rate),
        quota_submit_burst=reader.get("COORDINATOR_QUOTA_SUBMIT_BURST", 0.0, parse.quota_burst),
        quota_max_unfinished=reader.get("COORDINATOR_QUOTA_MAX_UNFINISHED", 0, parse.quota_tasks),
        auth_jwt_hs256_secret_file=reader.get(
            "COORDINATOR_AUTH_JWT_HS256_SECRET_FILE", "", parse.file_path
        ),
        auth_jwt_public_keys_file=reader.get(
            "COORDINATOR_AUTH_JWT_PUBLIC_KEYS_FILE", "", parse.file_path
        ),
        auth_jwt_audience=reader.get(
            "COORDINATOR_AUTH_JWT_AUDIENCE", DEFAULT_JWT_AUDIENCE, parse.name
        ),
        auth_jwt_issuer=reader.get("COORDINATOR_AUTH_JWT_ISSUER", "", parse.name),
        auth_token_file=reader.get("COORDINATOR_AUTH_TOKEN_FILE", "", parse.file_path),
        auth_cert_grants_file=reader.get("COORDINATOR_AUTH_CERT_GRANTS_FILE", "", parse.file_path),
        insecure=reader.get("COORDINATOR_INSECURE", False, parse.boolean),
        reflection=reader.get("COORDINATOR_REFLECTION", "authenticated", parse.reflection),
        metrics_host=reader.get("COORDINATOR_METRICS_HOST", LOOPBACK_HOST, parse.host),
        metrics_token_file=reader.get("COORDINATOR_METRICS_TOKEN_FILE", "", parse.file_path),
        tls_cert_file=reader.get("COORDINATOR_TLS_CERT_FILE", "", parse.certificates_file),
        tls_key_file=reader.get("COORDINATOR_TLS_KEY_FILE", "", parse.private_key_file),
        tls_client_ca_file=reader.get(
            "COORDINATOR_TLS_CLIENT_CA_FILE", "", parse.certificates_file
        ),
        tls_require_client_cert=reader.get(
            "COORDINATOR_TLS_REQUIRE_CLIENT_CERT", True, parse.boolean
        ),
    )
    if settings.stream_queue_max_bytes < settings.max_message_bytes:
        raise ConfigError(
            "COORDINATOR_STREAM_QUEUE_MAX_BYTES: must hold at least one message of "
            "COORDINATOR_MAX_MESSAGE_BYTES "
            f"({settings.stream_queue_max_bytes} < {settings.max_message_bytes})"
        )
    if settings.quota_submit_burst and not settings.quota_submit_rate:
        raise ConfigError(
            "COORDINATOR_QUOTA_SUBMIT_BURST: needs COORDINATOR_QUOTA_SUBMIT_RATE above 0 "
            "(without a rate there is no token bucket)"
        )
    _check_tls(settings, values)
    if not settings.host:
        # Listening beyond this machine is the default only when callers must authenticate.
        settings = dataclasses.replace(
            settings, host=ALL_INTERFACES if settings.auth_enabled else LOOPBACK_HOST
        )
    check_exposure(settings)
    if settings.health_port is not None and settings.health_port != 0:
        if settings.health_port == settings.port:
            raise ConfigError(
                "COORDINATOR_HEALTH_PORT: must differ from COORDINATOR_PORT "
                f"(both are {settings.port})"
            )
        if settings.metrics_enabled and settings.health_port == settings.metrics_port:
            raise ConfigError(
                "COORDINATOR_HEALTH_PORT: must differ from COORDINATOR_METRICS_PORT "
                f"(both are {settings.metrics_port})"
            )
    if settings.metrics_enabled and settings.metrics_port == settings.port != 0:
        raise ConfigError(
            "COORDINATOR_METRICS_PORT: must differ from COORDINATOR_PORT "
            f"(both are {settings.port})"
        )
    if settings.liveness_timeout_s <= settings.heartbeat_interval_s:
        raise ConfigError(
            "COORDINATOR_LIVENESS_TIMEOUT_S: must be greater than COORDINATOR_HEARTBEAT_INTERVAL_S "
            f"({settings.liveness_timeout_s} <= {settings.heartbeat_interval_s})"
        )
    if settings.max_task_data_bytes > settings.max_message_bytes - 64 * 1024:
        raise ConfigError(
            "COORDINATOR_MAX_TASK_DATA_BYTES: must leave 64 KiB of COORDINATOR_MAX_MESSAGE_BYTES "
            "for the rest of a message "
            f"({settings.max_task_data_bytes} > {settings.max_message_bytes} - 65536)"
        )
    _check_redis_failover(settings)
    if settings.health_check_interval_s + settings.redis_timeout_s > 4.0:
        raise ConfigError(
            "COORDINATOR_HEALTH_CHECK_INTERVAL_S: with COORDINATOR_REDIS_TIMEOUT_S it must stay "
            "under 4 s so that health follows Redis within 5 s"
        )
    return settings


def _check_redis_failover(settings: Settings) -> None:
    if settings.redis_sentinels and settings.redis_url.startswith("unix:"):
        raise ConfigError(
            "COORDINATOR_REDIS_SENTINELS: sentinels name a primary by host and port; REDIS_URL "
            "must be redis:// or rediss:// (its host is then ignored), not unix://"
        )
    if (
        settings.redis_min_replicas
        and settings.redis_replica_timeout_ms >= settings.redis_timeout_s * 1000
    ):
        raise ConfigError(
            "COORDINATOR_REDIS_REPLICA_TIMEOUT_MS: must be below COORDINATOR_REDIS_TIMEOUT_S "
            f"({settings.redis_replica_timeout_ms} ms >= {settings.redis_timeout_s:g} s), "
            "or the wait for replicas would read as Redis being unreachable"
        )


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches: localhost, 127.0.0.0/8, ::1."""
    bare = host.strip("[]")
    if bare.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(settings: Settings) -> None:
    """Like Redis' protected mode: without authentication the node listens on loopback only,
    unless COORDINATOR_INSECURE=true says the network is trusted. ConfigError otherwise;
    the same for the metrics endpoint without a bearer token."""
    if settings.insecure:
        return
    if not settings.auth_enabled and not is_loopback(settings.host):
        raise ConfigError(
            f"COORDINATOR_HOST: {settings.host} is not a loopback address and no authentication "
            "is configured, so anyone who reaches the port would own the cluster. Configure "
            "COORDINATOR_AUTH_TOKEN_FILE, COORDINATOR_AUTH_JWT_HS256_SECRET_FILE, "
            "COORDINATOR_AUTH_JWT_PUBLIC_KEYS_FILE or client certificates, bind 127.0.0.1, or "
            "set COORDINATOR_INSECURE=true on a network you trust"
        )
    if (
        settings.metrics_enabled
        and not settings.metrics_token_file
        and not is_loopback(settings.metrics_host)
    ):
        raise ConfigError(
            f"COORDINATOR_METRICS_HOST: {settings.metrics_host} is not a loopback address and "
            "COORDINATOR_METRICS_TOKEN_FILE is not set; set a token file, bind 127.0.0.1, or set "
            "COORDINATOR_INSECURE=true"
        )


def _check_tls(settings: Settings, values: Mapping[str, str]) -> None:
    """The TLS variables make sense together (each file was checked on its own already)."""
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        missing = (
            "COORDINATOR_TLS_KEY_FILE" if settings.tls_cert_file else "COORDINATOR_TLS_CERT_FILE"
        )
        raise ConfigError(
            f"{missing}: COORDINATOR_TLS_CERT_FILE and COORDINATOR_TLS_KEY_FILE go together; "
            "set both or neither"
        )
    if settings.tls_enabled:
        try:
            tls.check_pair(
                tls.read_certificates(settings.tls_cert_file),
                tls.read_private_key(settings.tls_key_file),
            )
        except ValueError as exc:
            raise ConfigError(
                f"COORDINATOR_TLS_KEY_FILE: {exc} in COORDINATOR_TLS_CERT_FILE"
            ) from None
    if settings.tls_client_ca_file and not settings.tls_enabled:
        raise ConfigError(
            "COORDINATOR_TLS_CLIENT_CA_FILE: needs TLS (COORDINATOR_TLS_CERT_FILE and "
            "COORDINATOR_TLS_KEY_FILE)"
        )
    require_given = values.get("COORDINATOR_TLS_REQUIRE_CLIENT_CERT", "").strip() != ""
    if require_given and not settings.tls_client_ca_file:
        raise ConfigError(
            "COORDINATOR_TLS_REQUIRE_CLIENT_CERT: needs COORDINATOR_TLS_CLIENT_CA_FILE (and TLS)"
        )
    if settings.tls_client_ca_file and not settings.tls_require_client_cert:
        raise ConfigError(
            "COORDINATOR_TLS_REQUIRE_CLIENT_CERT: false is not supported: gRPC's Python server "
            "either requires and verifies client certificates or does not ask for them; unset "
            "COORDINATOR_TLS_CLIENT_CA_FILE to accept clients without certificates"
        )
