"""The coordinator addresses an SDK object may use, and one channel per address.

Every node of a cluster serves the same state, so when one stops answering the caller moves
on to the next address; the channels of the others stay open, so calls already under way
through them are not cut.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from aitbc.coordinator.v1 import agent_pb2, agent_pb2_grpc, task_pb2_grpc

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
    """Round-robin over coordinator addresses, with lazily opened channels."""

    def __init__(self, addresses: str | Sequence[str]) -> None:
        self.addresses = parse_addresses(addresses)
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
            self._channels[address] = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
        return self._channels[address]

    def agents(self) -> agent_pb2_grpc.AgentServiceStub:
        """An AgentService stub on the current address."""
        return agent_pb2_grpc.AgentServiceStub(self.channel())

    def raw_assignment_stream(self) -> grpc.aio.UnaryStreamMultiCallable:
        """StreamAssignments on the current address, its messages left as bytes: the agent
        decodes them itself (``sdk.wire.stream_event``), so that a message it cannot parse
        in full does not break the stream."""
        return self.channel().unary_stream(
            _STREAM_ASSIGNMENTS,
            request_serializer=agent_pb2.StreamAssignmentsRequest.SerializeToString,
            response_deserializer=None,
        )

    def tasks(self) -> task_pb2_grpc.TaskServiceStub:
        """A TaskService stub on the current address."""
        return task_pb2_grpc.TaskServiceStub(self.channel())

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
