"""The wire and domain status enums correspond name for name."""

from aitbc.coordinator.v1 import agent_pb2
from coordinator.api import wire
from coordinator.models import AgentStatus


def test_every_domain_status_round_trips_through_the_wire_enum():
    for status in AgentStatus:
        proto = agent_pb2.Agent(status=wire.status_to_proto(status)).status
        assert wire.status_from_proto(proto) is status


def test_every_wire_status_but_unspecified_has_a_domain_status():
    for value in agent_pb2.AgentStatus.values():
        expected_none = value == agent_pb2.AGENT_STATUS_UNSPECIFIED
        assert (wire.status_from_proto(value) is None) == expected_none
    assert wire.status_from_proto(99) is None
