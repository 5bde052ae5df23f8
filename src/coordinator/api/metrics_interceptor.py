"""The interceptor that counts every call of the node in its metrics
(``coordinator.node.metrics``): by final status code (a stream once, when it ends), and the
unary calls' durations."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc.aio import AbortError

from coordinator.api.method_wrapping import WrappingInterceptor
from coordinator.node.metrics import NodeMetrics


class RpcMetricsInterceptor(WrappingInterceptor):
    """Counts every call by its final status code (a stream once, when it ends), and times
    the unary ones. Placed first, so it sees the codes the error mapping chose."""

    def __init__(self, metrics: NodeMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], full_method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        service, _, method = full_method.lstrip("/").partition("/")
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._timed_unary(handler.unary_unary, service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            behavior = handler.unary_stream
            wrapped = (
                self._counted_generator(behavior, self._counter(service, method, "server_stream"))
                if inspect.isasyncgenfunction(behavior)
                else self._counted_writer(behavior, self._counter(service, method, "server_stream"))
            )
            return grpc.unary_stream_rpc_method_handler(
                wrapped,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None and inspect.isasyncgenfunction(handler.stream_stream):
            return grpc.stream_stream_rpc_method_handler(
                self._counted_generator(
                    handler.stream_stream, self._counter(service, method, "bidi_stream")
                ),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client streams (none are served): not counted

    def _counter(self, service: str, method: str, rpc_type: str) -> _CallCounter:
        """Counts the calls of one method by final code."""
        return _CallCounter(self._metrics, service, method, rpc_type)

    def _timed_unary(self, behavior: Any, service: str, method: str) -> Any:
        # The labelled children are looked up once per method, not on every call.
        duration = self._metrics.rpc_duration.labels(service, method)
        counter = self._counter(service, method, "unary")
        perf_counter = time.perf_counter

        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = perf_counter()
            error: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                duration.observe(perf_counter() - started)
                counter.count(context, error)

        return wrapped

    def _counted_generator(self, behavior: Any, counter: _CallCounter) -> Any:
        """For handlers that yield their responses: a server or bidirectional stream."""

        async def wrapped(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            error: BaseException | None = None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                counter.count(context, error)

        return wrapped

    def _counted_writer(self, behavior: Any, counter: _CallCounter) -> Any:
        """For stream handlers that write with ``context.write`` (grpc's health Watch)."""

        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            error: BaseException | None = None
            try:
                await behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                counter.count(context, error)

        return wrapped


class _CallCounter:
    """The ``rpc_handled`` children of one method, by final code, each looked up once."""

    def __init__(self, metrics: NodeMetrics, service: str, method: str, rpc_type: str) -> None:
        self._labels = metrics.rpc_handled.labels
        self._key = (service, method, rpc_type)
        self._by_code: dict[grpc.StatusCode, Any] = {}

    def count(
        self, context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None
    ) -> None:
        """Count one call that ended with ``error`` (None: it returned)."""
        code = _final_code(context, error)
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._labels(*self._key, code.name)
        child.inc()


def _final_code(
    context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None
) -> grpc.StatusCode:
    """The status code the client receives."""
    if error is None or isinstance(error, AbortError):
        return context.code() or grpc.StatusCode.OK  # set by abort() or set_code()
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        remaining_s = context.time_remaining()
        if remaining_s is not None and remaining_s <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED  # the client went away
    return grpc.StatusCode.UNKNOWN  # grpc's answer to an exception no one mapped
