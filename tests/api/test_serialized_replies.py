"""The interceptor that lets DiscoverAgents and ListTasks return their replies already
serialized."""

import grpc

from aitbc.coordinator.v1 import agent_pb2
from coordinator.api.serialized_replies import (
    SERIALIZED_REPLY_METHODS,
    SerializedRepliesInterceptor,
)

DISCOVER = "/aitbc.coordinator.v1.AgentService/DiscoverAgents"
LIST_TASKS = "/aitbc.coordinator.v1.TaskService/ListTasks"


class Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def behaviour(request, context):
    return agent_pb2.DiscoverAgentsResponse()


def generated_handler() -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        behaviour,
        request_deserializer=agent_pb2.DiscoverAgentsRequest.FromString,
        response_serializer=agent_pb2.DiscoverAgentsResponse.SerializeToString,
    )


async def intercepted(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def continuation(details):
        return handler

    return await SerializedRepliesInterceptor().intercept_service(continuation, Details(method))


def test_discover_agents_and_list_tasks_are_the_methods_listed():
    assert SERIALIZED_REPLY_METHODS == {DISCOVER, LIST_TASKS}


async def test_bytes_pass_unchanged_and_a_message_is_serialized():
    handler = await intercepted(DISCOVER, generated_handler())
    message = agent_pb2.DiscoverAgentsResponse(next_page_token="t", total_size=2)

    assert handler.response_serializer(b"\x18\x02") == b"\x18\x02"
    assert handler.response_serializer(message) == message.SerializeToString()
    assert handler.unary_unary is behaviour
    assert handler.request_deserializer == agent_pb2.DiscoverAgentsRequest.FromString


async def test_other_methods_keep_their_handler():
    handler = generated_handler()

    assert await intercepted("/aitbc.coordinator.v1.AgentService/GetAgent", handler) is handler
