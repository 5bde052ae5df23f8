"""Replies that a handler returns already serialized.

The handler of a method in ``SERIALIZED_REPLY_METHODS`` may return the bytes of its reply
message instead of the message; this interceptor lets those bytes through the method's
serializer unchanged. DiscoverAgents does so: it joins the kept bytes of each agent it
found (``joined_replies.discover_reply``) instead of building and serializing a reply of 50 agents
on every call. ListTasks does so to serialize each task once: it measures its page with
those bytes (``joined_replies.list_tasks_reply``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from aitbc.coordinator.v1 import agent_pb2, task_pb2
from coordinator.api.method_wrapping import WrappingInterceptor

if TYPE_CHECKING:  # grpc's stubs make it generic; at run time it is not subscriptable
    Handler = grpc.RpcMethodHandler[Any, Any]


def _method_path(file: Any, service: str, method: str) -> str:
    """The path gRPC calls a method by: /package.Service/Method."""
    full_name = file.DESCRIPTOR.services_by_name[service].full_name
    return f"/{full_name}/{method}"


SERIALIZED_REPLY_METHODS = frozenset(
    {
        _method_path(agent_pb2, "AgentService", "DiscoverAgents"),
        _method_path(task_pb2, "TaskService", "ListTasks"),
    }
)


class SerializedRepliesInterceptor(WrappingInterceptor):
    """For the methods of ``SERIALIZED_REPLY_METHODS``: a reply that is bytes is sent as it
    is; a reply message is serialized as usual."""

    def _wrap(self, handler: Handler, method: str) -> Handler:
        if method not in SERIALIZED_REPLY_METHODS or handler.unary_unary is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            handler.unary_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=_bytes_or(handler.response_serializer),
        )


def _bytes_or(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes]:
    def serialized(reply: Any) -> bytes:
        if isinstance(reply, bytes):
            return reply
        assert serialize is not None
        return serialize(reply)

    return serialized
