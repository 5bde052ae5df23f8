"""Helpers of the trust-boundary tests: credentials (keys, JWTs, static tokens), channels
that send a bearer token, and calling any RPC by its full name, whatever its kind."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt

from coordinator.auth.permissions import SERVICES

AUDIENCE = "aitbc-coordinator"
HS256_SECRET = "test-secret-" + "x" * 40

STATIC_TOKENS = {
    "static-operator": ("tok-operator-0123456789", "operator", ""),
    "static-reader": ("tok-reader-0123456789", "reader", ""),
    "static-client": ("tok-client-0123456789", "client", ""),
    "static-agent": ("tok-agent-0123456789", "agent", "agent-own-*"),
}
"""principal -> (token, roles, agent patterns) of the static token file."""


@dataclass
class Keys:
    """The keys a test node trusts, and those it does not."""

    directory: Path
    rsa_private: Any
    ec_private: Any
    stranger_rsa_private: Any

    @property
    def secret_file(self) -> str:
        return str(self.directory / "hs256.secret")

    @property
    def public_keys_file(self) -> str:
        return str(self.directory / "public.pem")

    @property
    def token_file(self) -> Path:
        return self.directory / "tokens.csv"

    def mint(
        self,
        subject: str,
        roles: list[str],
        agents: list[str] | None = None,
        *,
        ttl_s: float = 3600,
        algorithm: str = "HS256",
        key: Any = None,
        audience: str | None = AUDIENCE,
        **claims: Any,
    ) -> str:
        """A JWT signed with the trusted key of ``algorithm`` (or ``key``)."""
        now = int(time.time())
        payload: dict[str, Any] = {"sub": subject, "roles": roles, "iat": now, "exp": now + ttl_s}
        if agents is not None:
            payload["agents"] = agents
        if audience is not None:
            payload["aud"] = audience
        payload.update(claims)
        if key is None:
            key = {
                "HS256": HS256_SECRET,
                "RS256": self.rsa_private,
                "ES256": self.ec_private,
            }[algorithm]
        return jwt.encode(payload, key, algorithm=algorithm)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token``."""
    return (("authorization", f"Bearer {token}"),)


FIRST_MESSAGE_TIMEOUT_S = 5.0
"""A stream that was let through may stay open (StreamAssignments): its first message, or
this long without an error, means it was allowed."""


def _kind(method: str) -> tuple[bool, bool]:
    service_name, _, name = method.lstrip("/").partition("/")
    service = next(s for s in SERVICES if s.full_name == service_name)
    descriptor = service.methods_by_name[name]
    return descriptor.client_streaming, descriptor.server_streaming


async def call_rpc(
    channel: grpc.aio.Channel,
    method: str,
    request: Any,
    metadata: tuple[tuple[str, str], ...],
) -> tuple[grpc.StatusCode, str]:
    """The status code of calling ``method`` once with ``request``, and its message."""
    client_streaming, server_streaming = _kind(method)
    serialize = type(request).SerializeToString
    try:
        if not client_streaming and not server_streaming:
            await channel.unary_unary(method, request_serializer=serialize)(
                request, metadata=metadata, timeout=10
            )
            return grpc.StatusCode.OK, ""
        if server_streaming and not client_streaming:
            call = channel.unary_stream(method, request_serializer=serialize)(
                request, metadata=metadata, timeout=10
            )
        else:
            call = channel.stream_stream(method, request_serializer=serialize)(
                iter([request]), metadata=metadata, timeout=10
            )
        try:
            await asyncio.wait_for(call.read(), FIRST_MESSAGE_TIMEOUT_S)
        except TimeoutError:
            pass
        finally:
            call.cancel()
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""


class _Bearer:
    """Adds ``authorization: Bearer <token>`` to every call of a channel (streams too).

    grpc.aio files each interceptor under the first kind it is (an elif chain), so each kind
    of call gets an instance of its own subclass below."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, details: Any) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add("authorization", f"Bearer {self._token}")
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _UnaryUnary(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStream(_Bearer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnary(_Bearer, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _StreamStream(_Bearer, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def bearer_interceptors(token: str) -> list[Any]:
    """Client interceptors adding ``authorization: Bearer <token>`` to every call."""
    kinds = (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
    return [kind(token) for kind in kinds]


def bearer_channel(port: int, token: str) -> grpc.aio.Channel:
    """A plaintext channel to a local node whose every call carries ``token``."""
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=bearer_interceptors(token))
