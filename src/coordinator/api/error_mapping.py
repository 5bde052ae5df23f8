"""The one place where errors become gRPC status codes.

An interceptor wraps every handler of the coordinator's own services: ``CoordinatorError``
kinds map to their codes, InvalidArgument carries ``google.rpc.BadRequest`` field violations
in the rich status details, a Redis outage is UNAVAILABLE, and anything unforeseen is logged
with its traceback and answered INTERNAL (never UNKNOWN with a stack trace).

It wraps each method's ``request_deserializer`` too: bytes that are not a message of the
method's request type would otherwise fail inside grpc itself, which answers UNKNOWN (or
INTERNAL on a stream) naming a Python class and logs a traceback per call, so any client
could flood the logs. They are INVALID_ARGUMENT "request could not be decoded", logged once
per ``UNDECODABLE_LOG_INTERVAL_S`` with a count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc.aio import AbortError  # raised by context.abort(): it must propagate
from grpc_status import rpc_status
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    OutOfMemoryError,
    RedisError,
)

from coordinator import errors
from coordinator.api.method_wrapping import WrappingInterceptor
from coordinator.storage.redis_errors import (
    POOL_EXHAUSTED,
    REDIS_OUTAGES,
    ReplicationShortfall,
    cluster_redirect,
    redis_error_kind,
    redis_unavailable,
)

log = logging.getLogger(__name__)

OWN_SERVICES_PREFIX = "/aitbc.coordinator.v1."

_CODES: dict[type[errors.CoordinatorError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def to_status(exc: BaseException) -> status_pb2.Status:
    """The google.rpc.Status for an error raised by a handler."""
    if isinstance(exc, errors.CoordinatorError):
        code = _code_of(exc)
        status = status_pb2.Status(code=code.value[0], message=errors.bounded(str(exc)))
        if isinstance(exc, errors.InvalidArgument) and exc.violations:
            details = any_pb2.Any()
            details.Pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in exc.violations
                    ]
                )
            )
            status.details.append(details)
        if isinstance(exc, errors.ResourceExhausted):
            status.details.append(_retry_info(exc.retry_after_s))
        return status
    if isinstance(exc, RedisConnectionError) and str(exc) == POOL_EXHAUSTED:
        return status_pb2.Status(
            code=code_pb2.UNAVAILABLE,
            message="the node is overloaded: every one of its Redis connections stayed busy for "
            "COORDINATOR_REDIS_TIMEOUT_S; retry later",
        )
    if isinstance(exc, ReplicationShortfall):
        return status_pb2.Status(code=code_pb2.UNAVAILABLE, message=str(exc))
    if isinstance(exc, OutOfMemoryError):
        return status_pb2.Status(
            code=code_pb2.UNAVAILABLE,
            message="Redis is full (maxmemory reached): the write was refused and nothing "
            "accepted before is lost; retry once finished tasks are forgotten or the limit rises",
        )
    if isinstance(exc, REDIS_OUTAGES):
        return status_pb2.Status(
            code=code_pb2.UNAVAILABLE,
            message=f"Redis is unreachable ({type(exc).__name__}); retry later",
        )
    if cluster_redirect(exc):
        return status_pb2.Status(
            code=code_pb2.UNAVAILABLE,
            message=f"the Redis Cluster slot of this coordinator cluster is moving or its owner "
            f"is down ({type(exc).__name__}); retry later",
        )
    if isinstance(exc, RedisError) and redis_unavailable(exc):
        return status_pb2.Status(
            code=code_pb2.UNAVAILABLE,
            message=f"Redis refuses writes ({type(exc).__name__}: {_first_line(exc)}); retry later",
        )
    return status_pb2.Status(
        code=code_pb2.INTERNAL, message="internal error; the coordinator logged the details"
    )


def _retry_info(retry_after_s: float) -> any_pb2.Any:
    """google.rpc.RetryInfo: how long the client should wait before it tries again."""
    retry_info = error_details_pb2.RetryInfo()
    retry_info.retry_delay.FromNanoseconds(round(retry_after_s * 1e9))
    details = any_pb2.Any()
    details.Pack(retry_info)
    return details


def _first_line(exc: BaseException) -> str:
    return str(exc).split(". script:", 1)[0].splitlines()[0] if str(exc) else ""


def _code_of(exc: errors.CoordinatorError) -> grpc.StatusCode:
    for kind in type(exc).__mro__:
        if kind in _CODES:
            return _CODES[kind]
    return grpc.StatusCode.INTERNAL


RedisErrorCounter = Callable[[str], None]
"""Told the kind (see ``redis_error_kind``) of each Redis error a call fails with."""


async def _abort(
    exc: Exception,
    context: grpc.aio.ServicerContext[Any, Any],
    method: str,
    on_redis_error: RedisErrorCounter | None,
) -> None:
    status = to_status(exc)
    if status.code == code_pb2.INTERNAL:
        log.exception("unexpected error in %s", method, exc_info=exc)
    elif status.code == code_pb2.UNAVAILABLE:
        log.warning("%s failed: %s", method, status.message)
    kind = redis_error_kind(exc)
    if kind is not None and on_redis_error is not None:
        on_redis_error(kind)
    await context.abort_with_status(rpc_status.to_status(status))


UNDECODABLE_LOG_INTERVAL_S = 60.0
"""Undecodable requests are logged at most once per this many seconds, with their count."""


class _UndecodableLog:
    """Counts undecodable requests; logs a warning at most once per interval (never a
    traceback: the bytes came from a client, the fault is not ours)."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._next_log_at = 0.0
        self._unlogged = 0

    def note(self, method: str) -> None:
        self._unlogged += 1
        now = time.monotonic()
        if now < self._next_log_at:
            return
        log.warning(
            "%d undecodable request(s) answered INVALID_ARGUMENT in the last %.0f s "
            "(the latest to %s)",
            self._unlogged,
            self._interval_s,
            method,
        )
        self._unlogged = 0
        self._next_log_at = now + self._interval_s


_UNDECODABLE = object()
"""What a wrapped deserializer returns for a unary request it could not decode: grpc.aio
answers UNKNOWN with a traceback when the deserializer raises before the handler runs, so
the wrapped handler raises for it instead."""


class ErrorMappingInterceptor(WrappingInterceptor):
    """Maps exceptions of the coordinator's handlers to status codes (see module docstring);
    ``on_redis_error`` is told the kind of every Redis error met (the node's metrics)."""

    def __init__(self, on_redis_error: RedisErrorCounter | None = None) -> None:
        super().__init__()
        self._on_redis_error = on_redis_error
        self._undecodable = _UndecodableLog(UNDECODABLE_LOG_INTERVAL_S)

    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if not method.startswith(OWN_SERVICES_PREFIX):
            return handler
        on_redis_error = self._on_redis_error
        deserializer = handler.request_deserializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method, on_redis_error),
                request_deserializer=self._unary_deserializer(deserializer, method),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method, on_redis_error),
                request_deserializer=self._unary_deserializer(deserializer, method),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, method, on_redis_error),
                request_deserializer=self._stream_deserializer(deserializer, method),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(handler.stream_stream, method, on_redis_error),
                request_deserializer=self._stream_deserializer(deserializer, method),
                response_serializer=handler.response_serializer,
            )
        return handler

    def _unary_deserializer(self, deserializer: Any, method: str) -> Any:
        """The request, or ``_UNDECODABLE`` (the wrapped handler raises for it)."""
        return self._deserializer(deserializer, method, in_stream=False)

    def _stream_deserializer(self, deserializer: Any, method: str) -> Any:
        """Each request of a stream; UndecodableRequest, raised where the handler reads the
        request iterator, so the wrapped handler maps it as any error of its own."""
        return self._deserializer(deserializer, method, in_stream=True)

    def _deserializer(self, deserializer: Any, method: str, *, in_stream: bool) -> Any:
        if deserializer is None:
            return None

        def deserialize(data: bytes) -> Any:
            try:
                return deserializer(data)
            except Exception:
                self._undecodable.note(method)
                if in_stream:
                    raise errors.UndecodableRequest() from None
                return _UNDECODABLE

        return deserialize


def _wrap_unary(behavior: Any, method: str, on_redis_error: RedisErrorCounter | None) -> Any:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            if request is _UNDECODABLE:
                raise errors.UndecodableRequest()
            return await behavior(request, context)
        except Exception as exc:
            if isinstance(exc, AbortError):
                raise
            await _abort(exc, context, method, on_redis_error)

    return wrapped


def _wrap_stream(behavior: Any, method: str, on_redis_error: RedisErrorCounter | None) -> Any:
    async def wrapped(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            if request is _UNDECODABLE:
                raise errors.UndecodableRequest()
            async for response in behavior(request, context):
                yield response
        except Exception as exc:
            if isinstance(exc, AbortError):
                raise
            await _abort(exc, context, method, on_redis_error)

    return wrapped
