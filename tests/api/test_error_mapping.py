"""Errors become status codes in one place: every kind, Redis outages, and the unforeseen."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from redis._parsers.base import BaseParser
from redis.exceptions import (
    BusyLoadingError,
    ConnectionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TimeoutError,
)

from aitbc.coordinator.v1 import agent_pb2
from coordinator import errors
from coordinator.api.error_mapping import to_status
from coordinator.storage.redis_errors import redis_error_kind


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.NotFound("agent_id: no agent"), code_pb2.NOT_FOUND),
        (errors.AlreadyExists("x"), code_pb2.ALREADY_EXISTS),
        (errors.FailedPrecondition("x"), code_pb2.FAILED_PRECONDITION),
        (errors.Unavailable("x"), code_pb2.UNAVAILABLE),
        (errors.Aborted("x"), code_pb2.ABORTED),
        (ConnectionError("refused"), code_pb2.UNAVAILABLE),
        (TimeoutError("slow"), code_pb2.UNAVAILABLE),
        (BusyLoadingError("loading"), code_pb2.UNAVAILABLE),
        (ReadOnlyError("You can't write against a read only replica."), code_pb2.UNAVAILABLE),
        (
            OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
            code_pb2.UNAVAILABLE,
        ),
        (ResponseError("MISCONF Redis is configured to save RDB snapshots"), code_pb2.UNAVAILABLE),
        (
            ResponseError("WRONGTYPE Operation against a key holding the wrong kind"),
            code_pb2.INTERNAL,
        ),
        (KeyError("bug"), code_pb2.INTERNAL),
    ],
)
def test_codes(error, code):
    assert to_status(error).code == code


@pytest.mark.parametrize(
    "reply",
    [
        "MOVED 11373 127.0.0.1:7001",
        "ASK 11373 127.0.0.1:7001",
        "TRYAGAIN Multiple keys request during rehashing of slot",
        "CLUSTERDOWN The cluster is down",
        "ERR Script attempted to access a non local key in a cluster node script: 5c5a",
    ],
)
def test_a_slot_moving_or_down_is_unavailable(reply):
    """Redis Cluster mode: the errors as redis-py parses them from the reply."""
    error = BaseParser.parse_error(reply)
    status = to_status(error)

    assert status.code == code_pb2.UNAVAILABLE
    assert "Redis Cluster slot" in status.message and "retry later" in status.message
    assert redis_error_kind(error) == "unavailable"


def test_a_cross_slot_script_is_a_bug_not_an_outage():
    status = to_status(
        BaseParser.parse_error("CROSSSLOT Keys in request don't hash to the same slot")
    )
    assert status.code == code_pb2.INTERNAL


def test_an_exhausted_connection_pool_is_overload_not_an_unreachable_redis():
    status = to_status(ConnectionError("No connection available."))

    assert status.code == code_pb2.UNAVAILABLE
    assert "overloaded" in status.message and "unreachable" not in status.message
    assert "unreachable" in to_status(ConnectionError("Connection refused")).message


def test_invalid_argument_carries_bad_request_details():
    status = to_status(
        errors.InvalidArgument(
            [
                errors.FieldViolation("agent_id", "is required"),
                errors.FieldViolation("weight", "too big"),
            ]
        )
    )
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.message == "agent_id: is required; weight: too big"
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("agent_id", "is required"),
        ("weight", "too big"),
    ]


def test_unforeseen_errors_do_not_leak_their_text():
    status = to_status(RuntimeError("secret internals"))
    assert status.code == code_pb2.INTERNAL
    assert "secret" not in status.message


async def test_a_corrupt_record_is_internal_not_unknown(node, redis_client, caplog):
    await node.agents.RegisterAgent(
        agent_pb2.RegisterAgentRequest(agent_id="a", agent_type="worker")
    )
    await redis_client.hset("agent:a", "status", "BOGUS")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await node.agents.GetAgent(agent_pb2.GetAgentRequest(agent_id="a"))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "Traceback" not in caught.value.details()
    assert any("unexpected error" in r.message and r.exc_info for r in caplog.records)
