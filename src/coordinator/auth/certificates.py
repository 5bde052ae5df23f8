"""Principals of verified client certificates (mutual TLS).

The TLS layer has verified the certificate against the client CA before any call; this
module only names its holder. The principal is the certificate's first DNS or URI subject
alternative name, else its subject common name. Its grant is the line of
``COORDINATOR_AUTH_CERT_GRANTS_FILE`` (``<principal>,<roles>,<agent patterns>``) naming it
when that file is set and has the name; otherwise the subject's organization (O) values are
its roles and, for role agent, it may act as the agent whose id is its own name (the
convention of Kubernetes' node certificates, ``O=system:nodes``).

Certificates are parsed once (a bounded cache keyed by the PEM's SHA-256): every call of a
connection presents the same one.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from cryptography import x509
from cryptography.x509.oid import NameOID

from coordinator.auth import grants
from coordinator.auth.files import WatchedFile
from coordinator.auth.principal import Principal, Role
from coordinator.errors import Unauthenticated, echo

VARIABLE = "COORDINATOR_AUTH_CERT_GRANTS_FILE"

PEM_KEY = "x509_pem_cert"
"""The key of the peer certificate in grpc's ``context.auth_context()``."""

CACHE_SIZE = 4096


def parse_grants(text: str) -> dict[str, Principal]:
    """The grants file's principals by name; ValueError naming the line."""
    table: dict[str, Principal] = {}
    for number, line in grants.content_lines(text):
        try:
            principal = grants.parse_line(line, "certificate")
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
        if principal.name in table:
            raise ValueError(f"line {number}: principal {principal.name!r} appears twice")
        table[principal.name] = principal
    return table


def certificate_name(certificate: x509.Certificate) -> str:
    """The first DNS or URI SAN, else the subject CN, else ""."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for general_name in san:
            if isinstance(general_name, x509.DNSName | x509.UniformResourceIdentifier):
                return str(general_name.value)
    except x509.ExtensionNotFound:
        pass
    common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common_names[0].value) if common_names else ""


def certificate_roles(certificate: x509.Certificate) -> list[str]:
    """The subject's organization values (the roles when no grant names the holder)."""
    return [
        str(attribute.value)
        for attribute in certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    ]


class CertificatePrincipals:
    """Names and grants the holders of verified client certificates."""

    def __init__(self, grants_file: str | None) -> None:
        self._grants = WatchedFile(grants_file, VARIABLE, parse_grants) if grants_file else None
        self._cache: OrderedDict[str, tuple[str, list[str]]] = OrderedDict()

    def principal(self, auth_context: Mapping[str, Iterable[bytes]]) -> Principal | None:
        """The principal of the call's client certificate; None when there is none."""
        pem = next(iter(auth_context.get(PEM_KEY) or ()), None)
        if not pem:
            return None
        name, organizations = self._identity(pem)
        if not name:
            raise Unauthenticated("client certificate has neither a DNS/URI SAN nor a CN")
        if self._grants is not None:
            granted = self._grants.current().get(name)
            if granted is not None:
                return granted
        roles: set[Role] = set()
        for organization in organizations:
            try:
                roles.add(Role.parse(organization))
            except ValueError:
                continue  # an organization that is no role grants nothing
        if not roles:
            raise Unauthenticated(
                f"client certificate {echo(name)} has no grant: no line of "
                f"{VARIABLE} and no role in its subject O"
            )
        patterns = (name,) if Role.AGENT in roles else ()
        return Principal(name, frozenset(roles), patterns, "certificate")

    def _identity(self, pem: bytes) -> tuple[str, list[str]]:
        digest = hashlib.sha256(pem).hexdigest()
        cached = self._cache.get(digest)
        if cached is not None:
            self._cache.move_to_end(digest)
            return cached
        try:
            certificate = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise Unauthenticated("client certificate could not be parsed") from None
        identity = (certificate_name(certificate), certificate_roles(certificate))
        self._cache[digest] = identity
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return identity
