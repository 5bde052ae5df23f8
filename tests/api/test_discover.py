"""DiscoverAgents: every filter, ordering, paging, and reading only indexed candidates."""

from __future__ import annotations

import grpc
import pytest

from aitbc.coordinator.v1 import agent_pb2

ACTIVE = agent_pb2.AGENT_STATUS_ACTIVE
BUSY = agent_pb2.AGENT_STATUS_BUSY
MAINTENANCE = agent_pb2.AGENT_STATUS_MAINTENANCE
INACTIVE = agent_pb2.AGENT_STATUS_INACTIVE


async def register(node, agent_id, **fields):
    request = agent_pb2.RegisterAgentRequest(
        agent_id=agent_id, agent_type=fields.pop("agent_type", "worker"), **fields
    )
    return (await node.agents.RegisterAgent(request)).agent


async def discover_ids(node, **query) -> list[str]:
    reply = await node.agents.DiscoverAgents(agent_pb2.DiscoverAgentsRequest(**query))
    return [a.agent_id for a in reply.agents]


@pytest.fixture
async def fleet(node):
    """Five agents with overlapping types, capabilities, services and labels."""
    await register(
        node,
        "a",
        capabilities=["gpu", "llm"],
        services=["infer"],
        labels={"zone": "eu", "chain": "1"},
    )
    await register(
        node, "b", capabilities=["gpu"], services=["infer", "train"], labels={"zone": "eu"}
    )
    await register(node, "c", agent_type="inference", capabilities=["llm"], labels={"zone": "us"})
    await register(
        node,
        "d",
        agent_type="inference",
        capabilities=["gpu", "llm"],
        services=["train"],
        labels={"zone": "us", "chain": "1"},
    )
    await register(node, "e", capabilities=["cpu"])
    return node


async def test_default_is_every_active_agent_by_id_when_health_ties(fleet):
    assert await discover_ids(fleet) == ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"agent_type": "inference"}, ["c", "d"]),
        ({"capabilities": ["gpu"]}, ["a", "b", "d"]),
        ({"capabilities": ["gpu", "llm"]}, ["a", "d"]),  # all of
        ({"services": ["infer"]}, ["a", "b"]),
        ({"services": ["infer", "train"]}, ["b"]),
        ({"labels": {"zone": "us"}}, ["c", "d"]),
        ({"labels": {"zone": "us", "chain": "1"}}, ["d"]),  # every pair
        ({"agent_type": "worker", "capabilities": ["llm"], "labels": {"chain": "1"}}, ["a"]),
        ({"capabilities": ["quantum"]}, []),
        ({"labels": {"zone": "mars"}}, []),
    ],
)
async def test_filters(fleet, query, expected):
    assert await discover_ids(fleet, **query) == expected


async def test_status_filter_and_health_order(fleet, hold_stream):
    for agent_id in ("b", "c"):
        await hold_stream(fleet, agent_id)  # a heartbeat without a stream is refused
    await fleet.agents.Heartbeat(agent_pb2.HeartbeatRequest(agent_id="b", status=BUSY))
    await fleet.agents.Heartbeat(
        agent_pb2.HeartbeatRequest(agent_id="c", load_metrics={"cpu": 0.8})
    )
    await fleet.agents.UpdateAgentStatus(
        agent_pb2.UpdateAgentStatusRequest(agent_id="d", status=MAINTENANCE)
    )

    assert await discover_ids(fleet) == ["a", "e", "c"]  # health 1, 1, 0.6
    assert await discover_ids(fleet, statuses=[BUSY]) == ["b"]
    assert await discover_ids(fleet, statuses=[MAINTENANCE]) == ["d"]
    assert await discover_ids(fleet, statuses=[ACTIVE, BUSY], capabilities=["gpu"]) == ["a", "b"]
    assert await discover_ids(fleet, min_health_score=0.7) == ["a", "e"]


async def test_inactive_agents_are_found_only_when_asked_for(fleet, redis_client):
    # Back-date c's heartbeat past the liveness timeout (3 s in tests).
    await redis_client.zadd("agents:heartbeats", {"c": 1})
    await redis_client.hset("agent:c", "last_heartbeat_at_ms", 1)

    assert "c" not in await discover_ids(fleet)
    assert await discover_ids(fleet, statuses=[INACTIVE]) == ["c"]
    assert await discover_ids(fleet, statuses=[INACTIVE], labels={"zone": "us"}) == ["c"]
    assert await discover_ids(fleet, statuses=[INACTIVE], labels={"zone": "eu"}) == []
    assert await discover_ids(fleet, statuses=[ACTIVE, INACTIVE], labels={"zone": "us"}) == [
        "d",
        "c",
    ]


async def test_paging_walks_every_match_once(node):
    for i in range(23):
        await register(node, f"agent-{i:02d}", capabilities=["x"])
    await register(node, "other", capabilities=["y"])
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        reply = await node.agents.DiscoverAgents(
            agent_pb2.DiscoverAgentsRequest(capabilities=["x"], page_size=10, page_token=token)
        )
        assert reply.total_size == 23
        seen += [a.agent_id for a in reply.agents]
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == [f"agent-{i:02d}" for i in range(23)]


async def test_page_token_must_belong_to_the_same_filters(node):
    for i in range(3):
        await register(node, f"agent-{i}", capabilities=["x", "y"])
    first = await node.agents.DiscoverAgents(
        agent_pb2.DiscoverAgentsRequest(capabilities=["x"], page_size=1)
    )
    assert first.next_page_token
    for token, query in [
        (first.next_page_token, {"capabilities": ["y"]}),
        ("not-a-token", {"capabilities": ["x"]}),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await node.agents.DiscoverAgents(
                agent_pb2.DiscoverAgentsRequest(page_size=1, page_token=token, **query)
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in caught.value.details()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"page_size": 1001}, "page_size"),
        ({"page_size": -1}, "page_size"),
        ({"min_health_score": 1.5}, "min_health_score"),
        ({"statuses": [agent_pb2.AGENT_STATUS_UNSPECIFIED]}, "statuses[0]"),
        ({"agent_type": "Not A Type"}, "agent_type"),
        ({"capabilities": ["bad cap"]}, "capabilities[0]"),
        ({"labels": {"bad key": "v"}}, "labels['bad key']"),
    ],
)
async def test_invalid_queries(node, query, field):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await node.agents.DiscoverAgents(agent_pb2.DiscoverAgentsRequest(**query))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in caught.value.details()


async def test_an_indexed_filter_reads_only_candidate_records(node, redis_client):
    for i in range(200):
        await register(node, f"agent-{i:03d}", capabilities=["needle" if i % 40 == 0 else "hay"])
    # Count only what discovery sends: the node's background loops would add their own.
    await node.coordinator.dispatcher.stop()
    await node.coordinator.reaper.stop()
    await node.coordinator.sweeper.stop()
    await redis_client.config_resetstat()
    assert len(await discover_ids(node, capabilities=["needle"])) == 5
    stats = await redis_client.info("commandstats")
    assert stats["cmdstat_hmget"]["calls"] == 5  # one per candidate, never one per agent
    for scan in ("cmdstat_keys", "cmdstat_scan", "cmdstat_smembers"):
        assert scan not in stats


async def test_a_repeated_discovery_always_shows_the_agent_as_last_written(
    node, hold_stream, redis_client
):
    """The node keeps decoded agents between discoveries: every kind of change to a record
    (re-registration, status, load, a field written by another script) must show at once."""

    async def only_agent(**query):
        reply = await node.agents.DiscoverAgents(agent_pb2.DiscoverAgentsRequest(**query))
        assert [a.agent_id for a in reply.agents] == ["a"]
        return reply.agents[0]

    await register(node, "a", capabilities=["gpu"], metadata={"version": "1"})
    for _ in range(2):  # the second answer comes from what the first one kept
        assert (await only_agent(capabilities=["gpu"])).metadata == {"version": "1"}

    await register(node, "a", capabilities=["gpu"], metadata={"version": "2"})
    assert (await only_agent(capabilities=["gpu"])).metadata == {"version": "2"}

    await hold_stream(node, "a")
    await node.agents.Heartbeat(agent_pb2.HeartbeatRequest(agent_id="a", load_metrics={"cpu": 1}))
    loaded = await only_agent(capabilities=["gpu"])
    assert (loaded.load_metrics["cpu"], loaded.health_score) == (1.0, 0.5)

    await redis_client.hset("agent:a", "active_tasks", 1)  # as a task script would
    assert (await only_agent()).active_tasks == 1

    await node.agents.UpdateAgentStatus(
        agent_pb2.UpdateAgentStatusRequest(agent_id="a", status=BUSY)
    )
    assert await discover_ids(node) == []
    busy = await only_agent(statuses=[BUSY])
    assert (busy.status, busy.health_score) == (BUSY, 0.25)


async def test_discovery_returns_every_field_as_get_agent_does(start_node, hold_stream):
    """Records travel from the discovery script as JSON text: any character must survive."""
    node = await start_node(heartbeat_interval_s=60, liveness_timeout_s=180)  # health stays put
    await register(
        node,
        "a",
        capabilities=["gpu"],
        services=["infer"],
        endpoints={"grpc": "10.0.0.1:7000"},
        metadata={"owner": 'Zoë "☃" \\ / \u00a0', "empty": ""},
        labels={"zone": "eu"},
        max_concurrency=3,
        weight=2.5,
    )
    await hold_stream(node, "a")
    await node.agents.Heartbeat(
        agent_pb2.HeartbeatRequest(agent_id="a", load_metrics={"cpu": 0.25, "gpu_mem": 0.5})
    )
    reply = await node.agents.DiscoverAgents(agent_pb2.DiscoverAgentsRequest())
    got = await node.agents.GetAgent(agent_pb2.GetAgentRequest(agent_id="a"))
    assert list(reply.agents) == [got.agent]
    assert reply.agents[0].metadata["owner"] == 'Zoë "☃" \\ / \u00a0'
