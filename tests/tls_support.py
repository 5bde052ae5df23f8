"""Throw-away certificate authorities (trustme) written to files, as a node reads them."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import grpc
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVER_NAMES = ("localhost", "127.0.0.1")


@dataclass
class Pki:
    """One CA with a server certificate and key for localhost, in ``directory``."""

    ca: trustme.CA
    directory: Path
    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def create(
        cls, directory: Path, *, expired: bool = False, names: tuple[str, ...] = SERVER_NAMES
    ) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        if expired:
            past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
            server = ca.issue_cert(
                *names, not_before=past - datetime.timedelta(days=1), not_after=past
            )
        else:
            server = ca.issue_cert(*names)
        pki = cls(
            ca=ca,
            directory=directory,
            ca_file=directory / "ca.pem",
            cert_file=directory / "server.pem",
            key_file=directory / "server-key.pem",
        )
        ca.cert_pem.write_to_path(str(pki.ca_file))
        server.private_key_pem.write_to_path(str(pki.key_file))
        server.cert_chain_pems[0].write_to_path(str(pki.cert_file))
        for extra in server.cert_chain_pems[1:]:
            extra.write_to_path(str(pki.cert_file), append=True)
        return pki

    def client(self, name: str, *roles: str) -> tuple[Path, Path]:
        """A client certificate (SAN ``name``, O = each role) and its key, as files."""
        issued = self.ca.issue_cert(
            name, common_name=name, organization_name=",".join(roles) or None
        )
        cert = self.directory / f"client-{name}.pem"
        key = self.directory / f"client-{name}-key.pem"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        return cert, key

    def node_settings(self, *, client_ca: bool = False) -> dict[str, object]:
        """Settings overrides for a TLS node with these files."""
        overrides: dict[str, object] = {
            "tls_cert_file": str(self.cert_file),
            "tls_key_file": str(self.key_file),
        }
        if client_ca:
            overrides["tls_client_ca_file"] = str(self.ca_file)
        return overrides

    def channel_credentials(
        self, client: tuple[Path, Path] | None = None
    ) -> grpc.ChannelCredentials:
        """Credentials trusting this CA, with a client certificate when given."""
        cert, key = client if client else (None, None)
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=key.read_bytes() if key else None,
            certificate_chain=cert.read_bytes() if cert else None,
        )


async def health_over(
    port: int, credentials: grpc.ChannelCredentials | None, timeout_s: float = 5.0
) -> str:
    """The status ("SERVING") or error code name a fresh channel (TLS with ``credentials``,
    plaintext without) gets from a health check of the node on ``port``."""
    return (await health_check(port, credentials, timeout_s))[0]


async def health_check(
    port: int, credentials: grpc.ChannelCredentials | None, timeout_s: float = 5.0
) -> tuple[str, str]:
    """``health_over``'s answer and the error's details ("" when it answered)."""
    address = f"localhost:{port}"
    if credentials is None:
        channel = grpc.aio.insecure_channel(address)
    else:
        channel = grpc.aio.secure_channel(address, credentials)
    async with channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, exc.details() or ""
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status), ""
