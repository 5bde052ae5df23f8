"""A health probe client: ``python -m coordinator health`` exits 0 only when SERVING.

For container HEALTHCHECKs and scripts; Kubernetes uses its native gRPC probes instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass(frozen=True)
class HealthResult:
    """What a probe saw: ``serving`` is True only for SERVING."""

    serving: bool
    status: str


def check(channel: grpc.Channel, service: str = "", timeout_s: float = 3.0) -> HealthResult:
    """Ask the standard health service about ``service`` ("" is the whole server)."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        return HealthResult(serving=False, status=code.name)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return HealthResult(
        serving=response.status == health_pb2.HealthCheckResponse.SERVING, status=status
    )


def probe(
    address: str,
    service: str = "",
    timeout_s: float = 3.0,
    credentials: grpc.ChannelCredentials | None = None,
    options: tuple[tuple[str, str], ...] = (),
) -> HealthResult:
    """``check`` over a fresh channel to ``address``: TLS with ``credentials``, else
    plaintext."""
    if credentials is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, credentials, options=options)
    with channel:
        return check(channel, service, timeout_s)
