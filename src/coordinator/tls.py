"""The gRPC port's TLS credentials, following their files: a rotation needs no restart.

gRPC asks ``CertificateFiles.fetch`` before every new TLS handshake (Python's
``dynamic_ssl_server_credentials``). It compares the files' stamps (inode, size, mtime; a
Kubernetes Secret update swaps a symlink, which changes the inode) with those of the
configuration in use and re-reads them only when they differ. New files that do not parse,
or a key that does not belong to the certificate (cert-manager and certbot write the two
files one after the other), leave the configuration in use in place; the problem is logged
once per set of stamps, and the next handshake after the second file lands picks up both.
Connections already open keep the certificate they were made with.

What a failed handshake looks like: gRPC's Python server exposes no hook for handshake
failures (no callback, no status, nothing in a call context, since no call starts), so this
module cannot log them once with the reason. gRPC core logs each at INFO, visible with
``GRPC_VERBOSITY=INFO``: "Handshake failed with error SSL_ERROR_SSL: ... WRONG_VERSION_NUMBER"
for a plaintext client, "PEER_DID_NOT_RETURN_A_CERTIFICATE" without a client certificate,
"CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate" for a client certificate
of another CA. The client gets UNAVAILABLE with the reason in the details when it is its own
check that failed ("Tls handshake failed ... CERTIFICATE_VERIFY_FAILED: certificate has
expired", "... unable to get local issuer certificate" for an unknown CA), and "Socket
closed" when the server refused it (plaintext client, missing or foreign client
certificate).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

log = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class TlsFiles:
    """The server's PEM files: its certificate chain and key and, for mutual TLS, the CA
    bundle client certificates must chain to."""

    cert_file: str
    key_file: str
    client_ca_file: str = ""

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(p for p in (self.cert_file, self.key_file, self.client_ca_file) if p)


def read_certificates(path: str) -> bytes:
    """The PEM bytes of ``path`` after checking it holds at least one certificate;
    ValueError saying what is wrong (OSError when it cannot be read)."""
    data = _read(path)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{path} holds no PEM certificate") from None
    if not certificates:
        raise ValueError(f"{path} holds no PEM certificate")
    return data


def read_private_key(path: str) -> bytes:
    """The PEM bytes of an unencrypted private key file; ValueError saying what is wrong."""
    data = _read(path)
    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(
            f"{path} holds an encrypted private key; give an unencrypted one"
        ) from None
    except ValueError:
        raise ValueError(f"{path} holds no PEM private key") from None
    return data


def check_pair(chain_pem: bytes, key_pem: bytes) -> None:
    """ValueError unless the key is the private key of the chain's first certificate."""
    leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    key = serialization.load_pem_private_key(key_pem, password=None)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if key.public_key().public_bytes(encoding, public) != leaf.public_key().public_bytes(
        encoding, public
    ):
        raise ValueError("the private key does not belong to the certificate")


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def certificate_configuration(files: TlsFiles) -> grpc.ServerCertificateConfiguration:
    """Read and check the files; ValueError or OSError when they are not usable together."""
    chain = read_certificates(files.cert_file)
    key = read_private_key(files.key_file)
    check_pair(chain, key)
    client_ca = read_certificates(files.client_ca_file) if files.client_ca_file else None
    return grpc.ssl_server_certificate_configuration([(key, chain)], client_ca)


class CertificateFiles:
    """The certificate configuration in use and the stamps of the files it came from."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()  # gRPC may call fetch from several core threads
        self._stamp = self._stamps()
        self.initial = certificate_configuration(files)
        self._refused: Stamp | None = None
        self.reloads = 0
        """Times new files were taken into use (for tests and logs)."""

    def _stamps(self) -> Stamp:
        stamps = []
        for path in self.files.paths:
            try:
                status = os.stat(path)
            except OSError:
                stamps.append((-1, -1, -1))  # a file being replaced: looks changed
            else:
                stamps.append((status.st_ino, status.st_size, status.st_mtime_ns))
        return tuple(stamps)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake: a new configuration when the files
        changed and are usable, None (keep the current one) otherwise. Never raises: an
        exception here would fail the handshake."""
        try:
            with self._lock:
                stamp = self._stamps()
                if stamp == self._stamp or stamp == self._refused:
                    return None
                try:
                    configuration = certificate_configuration(self.files)
                except (OSError, ValueError) as exc:
                    self._refused = stamp
                    log.warning(
                        "TLS files changed but cannot be used yet (%s); still serving the "
                        "previous certificate",
                        exc,
                    )
                    return None
                self._stamp = stamp
                self._refused = None
                self.reloads += 1
                log.info("TLS files changed: new handshakes use the new certificate")
                return configuration
        except Exception:
            log.exception("TLS certificate reload failed; keeping the previous certificate")
            return None


def server_credentials(files: TlsFiles, require_client_cert: bool) -> grpc.ServerCredentials:
    """Credentials for ``add_secure_port`` that re-read ``files`` when they change."""
    certificates = CertificateFiles(files)
    return grpc.dynamic_ssl_server_credentials(
        certificates.initial,
        # The stubs say the fetcher must return a configuration; gRPC documents None as
        # "no change", which is what fetch returns most of the time.
        certificates.fetch,  # type: ignore[arg-type]
        require_client_authentication=require_client_cert,
    )
