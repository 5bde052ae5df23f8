"""The coordinator addresses an SDK object may use, and one channel per address.

Every node of a cluster serves the same state, so when one stops answering the caller moves
on to the next address; the channels of the others stay open, so calls already under way
through them are not cut.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TypeVar, cast

import grpc

from aitbc.coordinator.v1 import agent_pb2, agent_pb2_grpc, task_pb2_grpc
from coordinator.sdk.credentials import (
    BearerToken,
    TlsOptions,
    WithToken,
    check_token_transport,
)

# Server allows pings every 10 s at most (more earns a GOAWAY); 30 s finds a dead peer
# behind a silent network within 40 s.
_CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
)

_STREAM_ASSIGNMENTS = (
    f"/{agent_pb2.DESCRIPTOR.services_by_name['AgentService'].full_name}/StreamAssignments"
)

T = TypeVar("T")

RETRIED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
"""Codes that mean "this node cannot answer now": try again, preferably elsewhere."""


def parse_addresses(addresses: str | Sequence[str]) -> tuple[str, ...]:
    """``"host:port"``, ``"a:1,b:2"`` or a list of them, as a tuple without blanks."""
    items = [addresses] if isinstance(addresses, str) else list(addresses)
    parsed = tuple(part.strip() for item in items for part in item.split(",") if part.strip())
    if not parsed:
        raise ValueError("addresses: give at least one coordinator address, e.g. localhost:9001")
    return parsed


class Endpoints:
    """Round-robin over coordinator addresses, with lazily opened channels: TLS ones with
    ``tls``, and every call carrying ``token`` when one is given (see sdk/credentials.py)."""

    def __init__(
        self,
        addresses: str | Sequence[str],
        tls: TlsOptions | None = None,
        token: BearerToken | None = None,
    ) -> None:
        self.addresses = parse_addresses(addresses)
        check_token_transport(self.addresses, tls, token)
        if tls is not None:
            tls.channel_credentials()  # a wrong path fails here, not at the first call
        self.tls = tls
        self.token = token
        self._index = 0
        self._channels: dict[str, grpc.aio.Channel] = {}

    @property
    def address(self) -> str:
        """The address calls go to now."""
        return self.addresses[self._index]

    def channel(self) -> grpc.aio.Channel:
        """The channel to the current address (opened on first use)."""
        address = self.address
        if address not in self._channels:
            if self.tls is None:
                channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.secure_channel(
                    address,
                    self.tls.channel_credentials(),
                    options=_CHANNEL_OPTIONS + self.tls.channel_options(),
                )
            self._channels[address] = channel
        return self._channels[address]

    def agents(self) -> agent_pb2_grpc.AgentServiceStub:
        """An AgentService stub on the current address."""
        return self._with_token(agent_pb2_grpc.AgentServiceStub(self.channel()))

    def raw_assignment_stream(self) -> grpc.aio.UnaryStreamMultiCallable:
        """StreamAssignments on the current address, its messages left as bytes: the agent
        decodes them itself (``sdk.assignments.stream_event``), so that a message it cannot
        parse in full does not break the stream."""
        method: grpc.aio.UnaryStreamMultiCallable = self.channel().unary_stream(
            _STREAM_ASSIGNMENTS,
            request_serializer=agent_pb2.StreamAssignmentsRequest.SerializeToString,
            response_deserializer=None,
        )
        if self.token is None:
            return method
        return cast(
            grpc.aio.UnaryStreamMultiCallable,
            functools.partial(method, metadata=self.token.metadata()),
        )

    def tasks(self) -> task_pb2_grpc.TaskServiceStub:
        """A TaskService stub on the current address."""
        return self._with_token(task_pb2_grpc.TaskServiceStub(self.channel()))

    def _with_token(self, stub: T) -> T:
        return stub if self.token is None else cast(T, WithToken(stub, self.token))

    def move_on(self, away_from: str | None = None) -> str:
        """Switch to the next address and return it. With ``away_from``, switch only if the
        current address is still that one (several callers that saw the same node fail move
        on once, not once each)."""
        if away_from is None or away_from == self.address:
            self._index = (self._index + 1) % len(self.addresses)
        return self.address

    async def close(self) -> None:
        """Close every channel (calls still running on them end with CANCELLED)."""
        channels = list(self._channels.values())
        self._channels.clear()
        for channel in channels:
            await channel.close()
