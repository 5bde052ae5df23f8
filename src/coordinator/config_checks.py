"""The checks that settings make sense together, run by ``config.load_settings`` after each
variable was parsed on its own (``config_values``): limits that depend on each other, ports
that must differ, TLS files that go together, and the exposure rule (no authentication, no
listening beyond loopback). Each failure is a ConfigError naming the variable to change."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlparse

from coordinator import tls
from coordinator.config_values import ConfigError

if TYPE_CHECKING:
    from coordinator.config import Settings


def check_settings(settings: Settings, values: Mapping[str, str]) -> None:
    """Every check below; ``values`` are the raw variables (some checks ask what was set)."""
    _check_limits(settings)
    _check_tls(settings, values)
    check_exposure(settings)
    _check_ports(settings)
    _check_worker_ports(settings)
    _check_redis_failover(settings)
    check_redis_cluster(settings)


def _check_limits(settings: Settings) -> None:
    """Sizes and times that bound one another."""
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
    if settings.health_check_interval_s + settings.redis_timeout_s > 4.0:
        raise ConfigError(
            "COORDINATOR_HEALTH_CHECK_INTERVAL_S: with COORDINATOR_REDIS_TIMEOUT_S it must stay "
            "under 4 s so that health follows Redis within 5 s"
        )


def _check_ports(settings: Settings) -> None:
    """The gRPC, health and metrics ports are three different ports."""
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


def _check_worker_ports(settings: Settings) -> None:
    """With N workers, worker K serves metrics on COORDINATOR_METRICS_PORT + K: the range
    must fit and leave the gRPC and health ports alone."""
    if not settings.metrics_enabled or settings.workers == 1 or settings.metrics_port == 0:
        return
    last = settings.metrics_port + settings.workers - 1
    if last > 65535:
        raise ConfigError(
            f"COORDINATOR_METRICS_PORT: workers serve metrics on {settings.metrics_port} to "
            f"{last} (one port each, COORDINATOR_WORKERS={settings.workers}): past 65535"
        )
    for name, port in (
        ("COORDINATOR_PORT", settings.port),
        ("COORDINATOR_HEALTH_PORT", settings.health_port),
    ):
        if port and settings.metrics_port <= port <= last:
            raise ConfigError(
                f"COORDINATOR_METRICS_PORT: workers serve metrics on {settings.metrics_port} "
                f"to {last} (one port each, COORDINATOR_WORKERS={settings.workers}), which "
                f"includes {name} ({port})"
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


def _check_redis_failover(settings: Settings) -> None:
    """Sentinels need a TCP primary; a replica wait must end before the Redis timeout."""
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


def check_redis_cluster(settings: Settings) -> None:
    """Cluster mode: REDIS_URL is a TCP node of the cluster, database 0 (the only one a Redis
    Cluster has), and no Sentinel (a cluster elects its own primaries)."""
    if not settings.redis_cluster_tag:
        return
    url = urlparse(settings.redis_url)
    if url.scheme == "unix":
        raise ConfigError(
            "COORDINATOR_REDIS_CLUSTER_TAG: REDIS_URL must name a node of the Redis Cluster as "
            "redis://host:port or rediss://host:port, not a unix socket"
        )
    db = parse_qs(url.query).get("db", [url.path.strip("/") or "0"])[0]
    if db != "0":
        raise ConfigError(
            "COORDINATOR_REDIS_CLUSTER_TAG: a Redis Cluster has only database 0; REDIS_URL "
            f"asks for database {db} (write redis://host:port/0 or leave the database out)"
        )
    if settings.redis_sentinels:
        raise ConfigError(
            "COORDINATOR_REDIS_CLUSTER_TAG: cannot be used with COORDINATOR_REDIS_SENTINELS "
            "(a Redis Cluster fails over by itself; REDIS_URL names one of its nodes)"
        )
