"""The node's conversions (``api/wire.py``): agents' wire forms, joined replies, and a
client's enum numbers checked as they are converted."""

import gc
import weakref

import pytest

from aitbc.coordinator.v1 import agent_pb2
from coordinator.agents.records import AgentRecord, AgentStatus
from coordinator.api import joined_replies, wire
from coordinator.errors import InvalidArgument
from coordinator.violations import Violations


def make_agent(agent_id: str, **changes) -> AgentRecord:
    fields = {
        "agent_id": agent_id,
        "agent_type": "worker",
        "capabilities": ("gpu",),
        "services": (),
        "endpoints": {"grpc": "10.0.0.1:7000"},
        "metadata": {},
        "labels": {"zone": "eu"},
        "max_concurrency": 2,
        "weight": 1.0,
        "status": AgentStatus.ACTIVE,
        "stored_status": AgentStatus.ACTIVE,
        "health_score": 1.0,
        "load_metrics": {},
        "active_tasks": 0,
        "registered_at_ms": 1_700_000_000_000,
        "last_heartbeat_at_ms": 1_700_000_000_000,
        "node_id": "",
        "status_reason": "",
    }
    return AgentRecord(**{**fields, **changes})


def parsed_reply(agents, token="", total=0) -> agent_pb2.DiscoverAgentsResponse:
    return agent_pb2.DiscoverAgentsResponse.FromString(
        joined_replies.discover_reply(agents, token, total)
    )


def test_discover_reply_is_the_serialized_response_also_when_asked_again():
    agents = [make_agent("a"), make_agent("b", status=AgentStatus.BUSY, health_score=0.5)]
    expected = agent_pb2.DiscoverAgentsResponse(
        agents=[wire.agent_to_proto(a) for a in agents], next_page_token="next", total_size=300
    )
    for _ in range(2):  # the second time from the bytes kept for these agents
        assert parsed_reply(agents, "next", 300) == expected
    assert parsed_reply([]) == agent_pb2.DiscoverAgentsResponse()
    assert list(parsed_reply(agents[::-1]).agents) == list(expected.agents)[::-1]


def test_bytes_are_kept_only_for_the_agent_object_they_were_built_from():
    # Agents die and new ones are made, often at the address (id) of a dead one: each must
    # get its own bytes, never those built for an earlier agent.
    for i in range(300):
        agent = make_agent(f"agent-{i}", active_tasks=i % 3)
        (message,) = parsed_reply([agent]).agents
        assert (message.agent_id, message.active_tasks) == (f"agent-{i}", i % 3)
        del agent, message


def test_kept_bytes_do_not_keep_agents_alive():
    agent = make_agent("a")
    joined_replies.discover_reply([agent], "", 1)
    alive = weakref.ref(agent)
    del agent
    gc.collect()
    assert alive() is None


def test_an_enum_number_is_its_value_none_for_unspecified_or_a_violation_naming_it():
    assert wire.enum_from_proto(1, "status", wire.AGENT_STATUS) is AgentStatus.ACTIVE
    assert wire.enum_from_proto(0, "status", wire.AGENT_STATUS) is None
    with pytest.raises(InvalidArgument, match=r"^status: -1 is not a known value; use one of "):
        wire.enum_from_proto(-1, "status", wire.AGENT_STATUS)
    collected = Violations()
    pairs = wire.enums_from_proto([1, 0, 42], "statuses", wire.AGENT_STATUS, collected)
    assert pairs == [(1, AgentStatus.ACTIVE), (0, None), (42, None)]
    assert [v.field for v in collected.items] == ["statuses[2]"]
