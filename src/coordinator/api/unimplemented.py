"""A service whose contract is published but not served yet: every RPC answers UNIMPLEMENTED
with a message that says so (TaskService until the task queue lands, issue #3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from coordinator.errors import Unimplemented


def unimplemented_service(service: ServiceDescriptor, why: str) -> grpc.GenericRpcHandler:
    """A handler for every method of ``service`` that raises Unimplemented naming the RPC."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        message = f"{method.name} is not served by this version of the coordinator yet: {why}"
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(_stream(message))
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(_unary(message))
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _unary(message: str) -> Any:
    async def handler(request: bytes, context: Any) -> bytes:
        raise Unimplemented(message)

    return handler


def _stream(message: str) -> Any:
    async def handler(request: bytes, context: Any) -> AsyncIterator[bytes]:
        raise Unimplemented(message)
        yield b""  # pragma: no cover - makes this an async generator

    return handler
