"""Bearer tokens that are JWTs, verified with PyJWT.

Keys: an HS256 shared secret (``COORDINATOR_AUTH_JWT_HS256_SECRET_FILE``, at least 32 bytes)
and/or RS256/ES256 public keys (``COORDINATOR_AUTH_JWT_PUBLIC_KEYS_FILE``, PEM). A token's
algorithm chooses the key kind and nothing else is accepted: ``alg: none``, HS384, or HS256
with no secret configured are refused before any verification, so a public key can never
be used as an HMAC secret.

Checked: the signature, ``exp`` (required), ``nbf``, ``aud`` (must contain the configured
audience), ``iss`` (when configured), ``sub`` and ``roles`` (required), ``agents`` (required
for role agent). A verified token is cached by the SHA-256 of its text with its principal and
expiry: its signature is verified once, while its expiry is checked on every call. The cache
is bounded (least recently used entries go first) and emptied when a key file changes.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from coordinator.auth import grants
from coordinator.auth.files import WatchedFile
from coordinator.auth.principal import Principal, Role
from coordinator.errors import Unauthenticated, echo

SECRET_VARIABLE = "COORDINATOR_AUTH_JWT_HS256_SECRET_FILE"
PUBLIC_KEYS_VARIABLE = "COORDINATOR_AUTH_JWT_PUBLIC_KEYS_FILE"
MIN_SECRET_BYTES = 32
"""RFC 7518 §3.2: an HS256 key is at least as long as the hash, 256 bits."""

CACHE_SIZE = 10_000
"""Verified tokens kept (one per agent or client in a large cluster)."""

LEEWAY_S = 5.0
"""Clock skew tolerated on ``exp`` and ``nbf`` between the issuer and the node."""

_PEM_BLOCK = "-----BEGIN "


def parse_secret(text: str) -> bytes:
    """The HS256 secret: the file's content without surrounding whitespace."""
    secret = text.strip().encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the secret must be at least {MIN_SECRET_BYTES} bytes (got {len(secret)})"
        )
    return secret


@dataclass(frozen=True)
class PublicKeys:
    """The RSA and EC P-256 public keys of a PEM file."""

    rsa: tuple[rsa.RSAPublicKey, ...]
    ec: tuple[ec.EllipticCurvePublicKey, ...]


def parse_public_keys(text: str) -> PublicKeys:
    """Every PUBLIC KEY (or CERTIFICATE, whose key is used) block of a PEM text."""
    rsa_keys: list[rsa.RSAPublicKey] = []
    ec_keys: list[ec.EllipticCurvePublicKey] = []
    blocks = [_PEM_BLOCK + part for part in text.split(_PEM_BLOCK)[1:]]
    for number, block in enumerate(blocks, start=1):
        try:
            if block.startswith(_PEM_BLOCK + "CERTIFICATE-----"):
                key: Any = x509.load_pem_x509_certificate(block.encode()).public_key()
            else:
                key = load_pem_public_key(block.encode())
        except ValueError as exc:
            raise ValueError(
                f"PEM block {number} is not a public key or certificate ({exc})"
            ) from None
        if isinstance(key, rsa.RSAPublicKey):
            rsa_keys.append(key)
        elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            ec_keys.append(key)
        else:
            raise ValueError(
                f"PEM block {number}: only RSA and EC P-256 keys (RS256, ES256) are accepted"
            )
    if not blocks:
        raise ValueError("no PEM public key in the file")
    return PublicKeys(tuple(rsa_keys), tuple(ec_keys))


_FAILURES: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid (nbf is in the future)"),
    (jwt.InvalidSignatureError, "token signature does not verify"),
    (jwt.MissingRequiredClaimError, ""),  # names the claim
    (jwt.InvalidAudienceError, ""),
    (jwt.InvalidIssuerError, ""),
    (jwt.DecodeError, "token is not a well-formed JWT"),
)


class JwtVerifier:
    """Principals of JWTs, verified with the configured keys (see the module docstring)."""

    def __init__(
        self,
        secret_file: str | None,
        public_keys_file: str | None,
        audience: str,
        issuer: str | None,
    ) -> None:
        self._secret = (
            WatchedFile(secret_file, SECRET_VARIABLE, parse_secret) if secret_file else None
        )
        self._public = (
            WatchedFile(public_keys_file, PUBLIC_KEYS_VARIABLE, parse_public_keys)
            if public_keys_file
            else None
        )
        self._audience = audience
        self._issuer = issuer
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._keys_seen = self._key_values()

    def _key_values(self) -> tuple[object, object]:
        return (
            self._secret.current() if self._secret else None,
            self._public.current() if self._public else None,
        )

    def principal(self, token: str) -> Principal:
        """The principal of a JWT; Unauthenticated naming the failed check."""
        keys = self._key_values()
        if keys != self._keys_seen:  # a rotated key: what it verified is verified again
            self._cache.clear()
            self._keys_seen = keys
        digest = hashlib.sha256(token.encode()).hexdigest()
        cached = self._cache.get(digest)
        if cached is not None:
            principal, expires_at = cached
            if time.time() > expires_at + LEEWAY_S:
                del self._cache[digest]
                raise Unauthenticated("token expired")
            self._cache.move_to_end(digest)
            return principal
        principal, expires_at = self._verify(token)
        self._cache[digest] = (principal, expires_at)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise Unauthenticated("token is not a well-formed JWT") from None
        algorithm = header.get("alg")
        keys = self._keys_for(algorithm)
        claims: dict[str, Any] | None = None
        last: Exception | None = None
        for key in keys:
            try:
                claims = jwt.decode(
                    token,
                    key,  # type: ignore[arg-type]
                    algorithms=[str(algorithm)],
                    audience=self._audience,
                    issuer=self._issuer,
                    leeway=LEEWAY_S,
                    options={"require": ["exp", "sub"], "verify_iss": self._issuer is not None},
                )
                break
            except jwt.InvalidSignatureError as exc:
                last = exc  # another key of the same kind may verify it
            except jwt.PyJWTError as exc:
                raise Unauthenticated(self._message(exc)) from None
        if claims is None:
            raise Unauthenticated(self._message(last or jwt.InvalidSignatureError()))
        return self._principal(claims), float(claims["exp"])

    def _keys_for(self, algorithm: object) -> list[object]:
        if algorithm == "HS256":
            if self._secret is None:
                raise Unauthenticated(
                    "token algorithm HS256 is not accepted: no HS256 secret is configured"
                )
            return [self._secret.current()]
        if algorithm in ("RS256", "ES256"):
            public = self._public.current() if self._public else None
            keys = (public.rsa if algorithm == "RS256" else public.ec) if public else ()
            if not keys:
                raise Unauthenticated(
                    f"token algorithm {algorithm} is not accepted: no such public key is configured"
                )
            return list(keys)
        raise Unauthenticated(
            f"token algorithm {echo(algorithm)} is not accepted (HS256, RS256 or ES256)"
        )

    def _message(self, exc: Exception) -> str:
        if isinstance(exc, jwt.MissingRequiredClaimError):
            return f"token lacks the required claim {exc.claim}"
        if isinstance(exc, jwt.InvalidAudienceError):
            return f"token audience is not {self._audience}"
        if isinstance(exc, jwt.InvalidIssuerError):
            return f"token issuer is not {self._issuer}"
        for kind, message in _FAILURES:
            if isinstance(exc, kind) and message:
                return message
        return "token is not valid (" + type(exc).__name__ + ")"

    @staticmethod
    def _principal(claims: dict[str, Any]) -> Principal:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("token claim sub must be a non-empty string")
        roles = claims.get("roles")
        if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
            raise Unauthenticated("token claim roles must be a non-empty list of role names")
        agents = claims.get("agents", [])
        if not isinstance(agents, list) or not all(isinstance(a, str) for a in agents):
            raise Unauthenticated("token claim agents must be a list of agent id patterns")
        try:
            parsed_roles = frozenset(Role.parse(role) for role in roles)
            patterns = grants.parse_patterns(";".join(agents))
            return grants.principal_of(subject, parsed_roles, patterns, "jwt")
        except ValueError as exc:
            raise Unauthenticated(f"token claims: {exc}") from None
