"""Server interceptors that wrap each method's handler once.

grpc.aio asks the interceptors for every call; building a wrapped handler each time was a
measurable share of a short call's CPU. The handler of a method never changes while the
server runs, so each interceptor keeps the wrapped one by method name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:  # grpc's stubs make it generic; at run time it is not subscriptable
    Handler = grpc.RpcMethodHandler[Any, Any]


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Subclasses say how to wrap a method's handler (``_wrap``); this keeps the result."""

    def __init__(self) -> None:
        self._wrapped: dict[str, Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: its name comes from the client, not kept
            return None
        wrapped = self._wrapped[method] = self._wrap(handler, method)
        return wrapped

    def _wrap(self, handler: Handler, method: str) -> Handler:
        """The handler to serve ``method`` (its full name, /package.Service/Method) with."""
        raise NotImplementedError
