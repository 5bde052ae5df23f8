"""A plaintext port that serves only grpc.health.v1 (COORDINATOR_HEALTH_PORT).

Kubernetes' native gRPC probes cannot speak TLS, and an exec probe that runs a TLS client
costs about half a CPU-second each time. So a node whose API port requires TLS and
credentials can open this second port for its probes: the same HealthServicer object (the
same statuses, NOT_SERVING as soon as the node drains), and nothing else: no reflection,
no coordinator service, no credentials to check.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from coordinator.config import Settings

log = logging.getLogger(__name__)


class HealthListener:
    """The health-only server of one node; ``port`` is bound after ``start``."""

    def __init__(self, servicer: health.aio.HealthServicer, settings: Settings) -> None:
        assert settings.health_port is not None
        host = settings.address.rsplit(":", 1)[0]
        self._address = f"{host}:{settings.health_port}"
        # Like the gRPC port: the workers of one node share it, separate nodes do not.
        reuse_port = 1 if settings.share_port else 0
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", reuse_port)])
        health_pb2_grpc.add_HealthServicer_to_server(servicer, self._server)
        self.port = 0

    async def start(self) -> int:
        """Bind and serve; OSError naming COORDINATOR_HEALTH_PORT when the bind fails."""
        try:
            self.port = self._server.add_insecure_port(self._address)
        except RuntimeError as exc:
            raise OSError(
                f"cannot bind the health port {self._address} (COORDINATOR_HEALTH_PORT): {exc}"
            ) from None
        await self._server.start()
        log.info(
            "health-only port serving on %s", self._address.rsplit(":", 1)[0] + f":{self.port}"
        )
        return self.port

    async def stop(self) -> None:
        """Stop at once: the node has drained by the time this is called."""
        await self._server.stop(0)
