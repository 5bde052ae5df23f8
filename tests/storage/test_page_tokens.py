"""Page tokens: signed with the cluster's key, every field checked, anything else refused."""

from __future__ import annotations

import asyncio
import base64
import json
import math

import grpc
import pytest

from agent_harness import field_violations, rpc_error, submit_request
from aitbc.coordinator.v1 import agent_pb2, agent_pb2_grpc, task_pb2
from coordinator.errors import InvalidArgument
from coordinator.storage import keys, page_tokens


def _payload(token: str) -> dict:
    encoded = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))


def _unsigned(payload: dict) -> str:
    """A token as a client could forge it before tokens were signed."""
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def test_a_token_round_trips_and_is_bound_to_its_filters():
    token = page_tokens.encode((-0.5, "agent-1"), "fp")
    assert page_tokens.decode(token, "fp") == (-0.5, "agent-1")
    with pytest.raises(InvalidArgument, match="page_token"):
        page_tokens.decode(token, "other")


@pytest.mark.parametrize(
    "after",
    [(math.nan, "x"), (math.inf, "x"), (-math.inf, "x"), (1.0, ""), (1.0, "x" * 257)],
)
def test_a_signed_token_with_a_field_out_of_bounds_is_refused(after):
    with pytest.raises(InvalidArgument, match="page_token"):
        page_tokens.decode(page_tokens.encode(after, "fp"), "fp")


@pytest.mark.parametrize(
    "token",
    [
        _unsigned({"f": "fp", "k": 1.0, "id": "x"}),
        "a.b",
        "." * 2,
        "x" * 10_000,
        "\u00fc.\u00fc",
    ],
)
def test_an_unsigned_or_malformed_token_is_refused(token):
    with pytest.raises(InvalidArgument, match="page_token"):
        page_tokens.decode(token, "fp")


def test_a_token_of_another_key_is_refused_but_the_previous_key_still_counts():
    token = page_tokens.encode((1.0, "x"), "fp")
    page_tokens.use_key(b"next key")
    assert page_tokens.decode(token, "fp") == (1.0, "x")  # the key before stays valid
    page_tokens.use_key(b"key after that")
    with pytest.raises(InvalidArgument, match="page_token"):
        page_tokens.decode(token, "fp")


async def test_a_forged_nan_token_is_invalid_argument_for_list_tasks(node):
    for _ in range(2):
        await node.tasks.SubmitTask(submit_request())
    page = await node.tasks.ListTasks(task_pb2.ListTasksRequest(page_size=1))
    forged = _unsigned({**_payload(page.next_page_token), "k": math.nan})

    error = await rpc_error(node.tasks.ListTasks(task_pb2.ListTasksRequest(page_token=forged)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(error)) == ["page_token"]


async def test_a_forged_nan_token_is_invalid_argument_for_discover_agents(node):
    for agent_id in ("agent-1", "agent-2"):
        await node.agents.RegisterAgent(
            agent_pb2.RegisterAgentRequest(agent_id=agent_id, agent_type="worker")
        )
    query = {"statuses": [agent_pb2.AGENT_STATUS_INACTIVE, agent_pb2.AGENT_STATUS_ACTIVE]}
    page = await node.agents.DiscoverAgents(agent_pb2.DiscoverAgentsRequest(page_size=1, **query))
    forged = _unsigned({**_payload(page.next_page_token), "k": math.nan})

    error = await rpc_error(
        node.agents.DiscoverAgents(agent_pb2.DiscoverAgentsRequest(page_token=forged, **query))
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(error)) == ["page_token"]


async def test_nodes_of_one_cluster_accept_each_others_tokens(spawn_node, channel_to, redis_client):
    """Two processes: each signs with the key stored in Redis, so a token of one is good
    on the other (a key per process would never be)."""
    node_a, node_b = spawn_node(env={"NODE_ID": "node-a"}), spawn_node(env={"NODE_ID": "node-b"})
    await asyncio.to_thread(node_a.wait_serving)
    await asyncio.to_thread(node_b.wait_serving)
    stub_a = agent_pb2_grpc.AgentServiceStub(channel_to(node_a))
    stub_b = agent_pb2_grpc.AgentServiceStub(channel_to(node_b))
    for agent_id in ("agent-1", "agent-2", "agent-3"):
        await stub_a.RegisterAgent(
            agent_pb2.RegisterAgentRequest(agent_id=agent_id, agent_type="worker")
        )
    query = {"statuses": [agent_pb2.AGENT_STATUS_INACTIVE, agent_pb2.AGENT_STATUS_ACTIVE]}
    first = await stub_a.DiscoverAgents(agent_pb2.DiscoverAgentsRequest(page_size=1, **query))
    second = None
    for _ in range(100):  # each node reads the cluster's key at start, in the background
        try:
            second = await stub_b.DiscoverAgents(
                agent_pb2.DiscoverAgentsRequest(
                    page_size=1, page_token=first.next_page_token, **query
                )
            )
            break
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
            await asyncio.sleep(0.1)
            first = await stub_a.DiscoverAgents(
                agent_pb2.DiscoverAgentsRequest(page_size=1, **query)
            )

    assert second is not None, "node-b never accepted a token of node-a"
    assert [a.agent_id for a in [*first.agents, *second.agents]] == ["agent-1", "agent-2"]
    assert await redis_client.exists(keys.PAGE_TOKEN_KEY)
