"""Who is calling: one principal per call, from the call's credential.

A bearer token (``authorization: Bearer <token>`` metadata) wins over a client certificate.
A token shaped like a JWT (three dot-separated parts) is verified as one when JWT keys are
configured; any other token is looked up in the static token file. Without a token, the
verified client certificate names the principal (only when the TLS layer requires and
verifies client certificates: an unverified certificate proves nothing).

Every refusal is ``Unauthenticated`` with a message naming the check that failed, never the
token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from coordinator.auth.certificates import CertificatePrincipals
from coordinator.auth.jwt_tokens import JwtVerifier
from coordinator.auth.principal import Principal
from coordinator.auth.static_tokens import StaticTokens
from coordinator.config import Settings
from coordinator.errors import Unauthenticated

AUTHORIZATION = "authorization"
BEARER = "bearer "

NO_CREDENTIAL = "no credential: send authorization: Bearer <token> or a client certificate"


class Authenticator:
    """Resolves the principal of a call (see the module docstring)."""

    def __init__(
        self,
        jwt: JwtVerifier | None = None,
        static: StaticTokens | None = None,
        certificates: CertificatePrincipals | None = None,
    ) -> None:
        self.jwt = jwt
        self.static = static
        self.certificates = certificates

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator | None:
        """The node's authenticator; None when authentication is off. Reads the credential
        files now: ConfigError naming the variable when one is missing or invalid."""
        if not settings.auth_enabled:
            return None
        jwt = None
        if settings.auth_jwt_hs256_secret_file or settings.auth_jwt_public_keys_file:
            jwt = JwtVerifier(
                settings.auth_jwt_hs256_secret_file,
                settings.auth_jwt_public_keys_file,
                settings.auth_jwt_audience,
                settings.auth_jwt_issuer or None,
            )
        static = None
        if settings.auth_token_file:
            static = StaticTokens(settings.auth_token_file)
        certs = None
        if settings.client_certs_required:
            certs = CertificatePrincipals(settings.auth_cert_grants_file or None)
        return cls(jwt, static, certs)

    def authenticate(
        self,
        metadata: Iterable[Any] | None,
        auth_context: Callable[[], Mapping[str, Iterable[bytes]]],
    ) -> Principal:
        """The principal of a call with this invocation metadata and TLS auth context."""
        header = _authorization(metadata)
        if header is not None:
            return self._bearer(header)
        if self.certificates is not None:
            principal = self.certificates.principal(auth_context())
            if principal is not None:
                return principal
        raise Unauthenticated(NO_CREDENTIAL)

    def _bearer(self, header: str) -> Principal:
        if not header[: len(BEARER)].lower() == BEARER:
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        token = header[len(BEARER) :].strip()
        if not token:
            raise Unauthenticated("authorization metadata has an empty bearer token")
        looks_like_jwt = token.count(".") == 2
        if looks_like_jwt and self.jwt is not None:
            return self.jwt.principal(token)
        if self.static is not None:
            return self.static.principal(token)
        if self.jwt is not None:
            raise Unauthenticated("token is not a well-formed JWT")
        raise Unauthenticated(
            "bearer tokens are not accepted here: this node authenticates client certificates"
        )


def _authorization(metadata: Iterable[Any] | None) -> str | None:
    """The value of the call's authorization metadata, if any."""
    for key, value in metadata or ():
        if key == AUTHORIZATION:
            return value if isinstance(value, str) else bytes(value).decode("latin-1")
    return None
