"""Bad input every RPC shares, over real gRPC: bytes that decode to no request, Structs
nested too deep or holding NaN, unknown enum numbers, and error messages that stay bounded
whatever the client sent."""

from __future__ import annotations

import logging

import grpc
import pytest

from agent_harness import rpc_error

GARBAGE = b"\xff" * 16
"""Not a protobuf message: an invalid tag and a varint that never ends."""


def _identity(data: bytes) -> bytes:
    return data


def _raw_unary(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        method, request_serializer=_identity, response_deserializer=_identity
    )


def _assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()
        assert "Traceback" not in record.getMessage()
        assert "DecodeError" not in record.getMessage()


@pytest.mark.parametrize(
    "method",
    [
        "/aitbc.coordinator.v1.TaskService/SubmitTask",
        "/aitbc.coordinator.v1.TaskService/GetTask",
        "/aitbc.coordinator.v1.AgentService/RegisterAgent",
    ],
)
async def test_an_undecodable_unary_request_is_invalid_argument(node, caplog, method):
    caplog.set_level(logging.DEBUG)
    for _ in range(5):
        error = await rpc_error(_raw_unary(node.channel, method)(GARBAGE))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "request could not be decoded"
    _assert_no_traceback(caplog)
    logged = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(logged) == 1, "logged once per interval, not once per call"


async def test_an_undecodable_server_stream_request_is_invalid_argument(node, caplog):
    caplog.set_level(logging.DEBUG)
    call = node.channel.unary_stream(
        "/aitbc.coordinator.v1.TaskService/WatchTask",
        request_serializer=_identity,
        response_deserializer=_identity,
    )(GARBAGE)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "request could not be decoded"
    _assert_no_traceback(caplog)


@pytest.mark.parametrize("method", ["StreamSubmitTasks", "StreamReportTasks"])
async def test_an_undecodable_message_of_a_bidi_stream_is_invalid_argument(node, caplog, method):
    caplog.set_level(logging.DEBUG)
    call = node.channel.stream_stream(
        f"/aitbc.coordinator.v1.TaskService/{method}",
        request_serializer=_identity,
        response_deserializer=_identity,
    )()
    await call.write(GARBAGE)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "request could not be decoded"
    assert "class" not in caught.value.details()
    _assert_no_traceback(caplog)
