"""``python -m coordinator dev-ca``: a certificate authority and certificates for development
and tests only. Production certificates come from your PKI (cert-manager, Vault, ...).

Writes into ``--out``: ``ca.pem`` and ``ca-key.pem`` (reused when already there, so later
runs add certificates under the same CA), ``server.pem`` / ``server-key.pem`` for the
``--server-name`` names (DNS names or IP addresses, as subjectAltNames) and, per
``--client NAME:ROLE[,ROLE]``, ``client-NAME.pem`` / ``client-NAME-key.pem`` with subject
CN=NAME and one O=ROLE per role (a node without a certificate grants file takes the roles
from O, and for role agent lets the certificate act as agent NAME). Keys are EC P-256,
written with mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator.auth.principal import Role

CA_DAYS = 365
LEAF_DAYS = 90
_CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")


@dataclass(frozen=True)
class ClientSpec:
    """``NAME:ROLE[,ROLE]`` from the command line."""

    name: str
    roles: tuple[Role, ...]

    @classmethod
    def parse(cls, text: str) -> ClientSpec:
        name, sep, roles = text.partition(":")
        if not sep or not _CLIENT_NAME.match(name):
            raise ValueError(
                f"--client {text!r}: expected NAME:ROLE[,ROLE], NAME of letters, digits and . _ @ -"
            )
        try:
            parsed = tuple(dict.fromkeys(Role.parse(r) for r in roles.split(",") if r.strip()))
        except ValueError as exc:
            raise ValueError(f"--client {text!r}: {exc}") from None
        if not parsed:
            raise ValueError(f"--client {text!r}: name at least one role")
        return cls(name, parsed)


@dataclass(frozen=True)
class Written:
    """The files one run wrote (paths)."""

    ca: Path
    server: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created 0600 from the start: the key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    os.chmod(path, 0o600)


def _write_cert(path: Path, certificate: x509.Certificate) -> None:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _load_or_create_ca(out: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = out / "ca.pem", out / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: not an EC key made by dev-ca")
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "AITBC development"),
            x509.NameAttribute(NameOID.COMMON_NAME, "AITBC development CA (not for production)"),
        ]
    )
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_cert(cert_path, certificate)
    return certificate, key


def _leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    alt_names: Sequence[x509.GeneralName] = (),
    days: int = LEAF_DAYS,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _alt_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_dev_ca(out: Path, server_names: Sequence[str], clients: Sequence[ClientSpec]) -> Written:
    """Write the CA (or reuse the one in ``out``), a server certificate and the clients'."""
    if not server_names:
        raise ValueError("--server-name: give at least one name")
    out.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _load_or_create_ca(out)
    server, server_key = _leaf(
        ca,
        ca_key,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_names[0])]),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [_alt_name(name) for name in dict.fromkeys(server_names)],
    )
    _write_key(out / "server-key.pem", server_key)
    _write_cert(out / "server.pem", server)
    written: dict[str, tuple[Path, Path]] = {}
    for client in clients:
        subject = x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, role.value) for role in client.roles]
            + [x509.NameAttribute(NameOID.COMMON_NAME, client.name)]
        )
        certificate, key = _leaf(ca, ca_key, subject, ExtendedKeyUsageOID.CLIENT_AUTH)
        cert_path = out / f"client-{client.name}.pem"
        key_path = out / f"client-{client.name}-key.pem"
        _write_key(key_path, key)
        _write_cert(cert_path, certificate)
        written[client.name] = (cert_path, key_path)
    return Written(out / "ca.pem", out / "server.pem", out / "server-key.pem", written)
