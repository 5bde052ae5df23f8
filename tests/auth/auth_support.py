"""Calling any RPC by its full name, whatever its kind (unary or streaming)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from coordinator.auth.permissions import SERVICES

FIRST_MESSAGE_TIMEOUT_S = 1.0
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
                request, metadata=metadata, timeout=5
            )
            return grpc.StatusCode.OK, ""
        if server_streaming and not client_streaming:
            call = channel.unary_stream(method, request_serializer=serialize)(
                request, metadata=metadata, timeout=5
            )
        else:
            call = channel.stream_stream(method, request_serializer=serialize)(
                iter([request]), metadata=metadata, timeout=5
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
