"""The conversions the node and the SDK share (``coordinator.wire_values``): the wire and
domain enums correspond name for name; a client's Structs are checked as they are read."""

import pytest
from google.protobuf.struct_pb2 import Struct

from aitbc.coordinator.v1 import agent_pb2
from coordinator import wire_values
from coordinator.agents.records import AgentStatus
from coordinator.errors import InvalidArgument


def test_every_domain_status_round_trips_through_the_wire_enum():
    for status in AgentStatus:
        proto = agent_pb2.Agent(status=wire_values.status_to_proto(status)).status
        assert wire_values.status_from_proto(proto) is status


def test_every_wire_status_but_unspecified_has_a_domain_status():
    for value in agent_pb2.AgentStatus.values():
        expected_none = value == agent_pb2.AGENT_STATUS_UNSPECIFIED
        assert (wire_values.status_from_proto(value) is None) == expected_none
    assert wire_values.status_from_proto(99) is None


def _struct(data):
    message = Struct()
    message.update(data)
    return message


def test_struct_levels_count_objects_and_lists_alike():
    three_levels = {"a": {"b": [1]}, "c": None, "d": "x", "e": True}
    assert wire_values.struct_to_dict(_struct(three_levels), "task_data", 3) == three_levels
    with pytest.raises(InvalidArgument) as caught:
        wire_values.struct_to_dict(_struct(three_levels), "task_data", 2)
    assert [v.field for v in caught.value.violations] == ["task_data"]
    assert wire_values.struct_to_dict(_struct({}), "task_data", 1) == {}
