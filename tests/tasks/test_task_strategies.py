"""Load-balancing strategies end to end on one node: SetBalancingStrategy and the per-task
balancing_strategy override reach the dispatcher, and each strategy picks the right agent.

Every scenario is built so that its strategy and a *decoy* strategy choose differently. Each
runs three ways: the strategy set cluster-wide; the decoy set cluster-wide and the strategy
given as the task's override; and the decoy alone (the control, which proves the scenario
tells the two apart).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from agent_harness import AgentPool, submit_request, wait_for_state
from aitbc.coordinator.v1 import task_pb2
from coordinator.dispatch.balancing import BalancerState, Candidate, choose
from coordinator.storage import keys
from coordinator.strategies import Strategy

ASSIGNED = task_pb2.TASK_STATE_ASSIGNED
S = task_pb2.BalancingStrategy


async def set_strategy(node, strategy: int) -> task_pb2.SetBalancingStrategyResponse:
    return await node.tasks.SetBalancingStrategy(
        task_pb2.SetBalancingStrategyRequest(strategy=strategy)
    )


async def assigned_agent(node, **fields: Any) -> str:
    """Submit one task and return the agent it was assigned to."""
    task = (await node.tasks.SubmitTask(submit_request(**fields))).task
    return (await wait_for_state(node.tasks, task.task_id, ASSIGNED)).agent_id


Setup = Callable[[Any, AgentPool, Any], Awaitable[None]]


@dataclass
class Scenario:
    strategy: int
    decoy: int
    setup: Setup
    expected: list[str]
    """Agent of each task under ``strategy``; compared as counts when ``counts`` is set."""
    decoy_expected: list[str]
    tasks: list[dict[str, Any]] = field(default_factory=lambda: [{}])
    counts: bool = False
    decoy_counts: bool = False
    """Compare the decoy's choices as counts: its first choice is a tie between idle agents,
    which the task's id breaks (``coordinator.dispatch.balancing``), so only the counts are fixed."""


async def _least_connections(node, pool, redis_client) -> None:
    # agent-a holds 1 of 2 slots; agent-b holds none but reports a busy cpu.
    a = await pool.start(node.channel, "agent-a", max_concurrency=2)
    b = await pool.start(node.channel, "agent-b", max_concurrency=2)
    pin = task_pb2.TaskRequirements(agent_id="agent-a")
    await assigned_agent(node, requirements=pin)
    await a.next_assignment()
    await b.report_load(cpu=0.9)


async def _round_robin(node, pool, redis_client) -> None:
    await pool.start(node.channel, "agent-a", max_concurrency=10)
    await pool.start(node.channel, "agent-b", max_concurrency=2)


async def _weighted(node, pool, redis_client) -> None:
    await pool.start(node.channel, "agent-a", max_concurrency=8, weight=1)
    await pool.start(node.channel, "agent-b", max_concurrency=8, weight=3)


async def hold_one(node, agent) -> None:
    """``agent`` holds one task (pinned to it): least connections prefers the others."""
    await assigned_agent(node, requirements=task_pb2.TaskRequirements(agent_id=agent.agent_id))
    await agent.next_assignment()


async def _measured(node, pool, redis_client, history: dict[str, dict[str, str]]) -> None:
    for agent_id, fields in history.items():
        started = await pool.start(node.channel, agent_id, max_concurrency=2)
        # The fields the task scripts keep per agent (see record_outcome in task_lib.lua).
        await redis_client.hset(keys.agent(agent_id), mapping=fields)
        if agent_id == "agent-b":  # so that the least connections decoy chooses agent-a
            await hold_one(node, started)


async def _response_time(node, pool, redis_client) -> None:
    history = {"agent-a": {"avg_duration_ms": "900"}, "agent-b": {"avg_duration_ms": "40"}}
    await _measured(node, pool, redis_client, history)


async def _predictive(node, pool, redis_client) -> None:
    # agent-a is fast but unreliable (0.3 / 1.1 = 0.27); agent-b slower but reliable (1 / 1.3).
    history = {
        "agent-a": {"avg_duration_ms": "100", "recent_success": "0.3"},
        "agent-b": {"avg_duration_ms": "300", "recent_success": "1.0"},
    }
    await _measured(node, pool, redis_client, history)


async def _resources(node, pool, redis_client) -> None:
    a = await pool.start(node.channel, "agent-a", max_concurrency=2)
    b = await pool.start(node.channel, "agent-b", max_concurrency=2)
    await a.report_load(cpu=0.8, memory=0.2)
    await b.report_load(cpu=0.1, memory=0.3)
    await hold_one(node, b)  # load 0.5 against 0.8; the least connections decoy: agent-a


async def _capabilities(node, pool, redis_client) -> None:
    await pool.start(node.channel, "agent-a", max_concurrency=2, capabilities=("text",))
    b = await pool.start(
        node.channel, "agent-b", max_concurrency=2, capabilities=("text", "gpu", "fp16")
    )
    await hold_one(node, b)  # the least connections decoy chooses agent-a


HASH_AGENTS = ("agent-a", "agent-b", "agent-c")


def ring_owner(routing_key: str) -> str:
    """The agent that the hash ring of HASH_AGENTS gives ``routing_key`` (the pure balancer)."""
    candidates = [
        Candidate(
            agent_id=agent_id,
            active_tasks=0,
            max_concurrency=10,
            weight=1.0,
            load_metrics={},
            capabilities=frozenset(),
            avg_duration_ms=None,
            recent_success=1.0,
            health_score=1.0,
        )
        for agent_id in HASH_AGENTS
    ]
    chosen = choose(Strategy.CONSISTENT_HASH, candidates, BalancerState(), routing_key=routing_key)
    return chosen.agent_id


def keys_owned_by(owner: str) -> str:
    return next(k for k in (f"user-{i}" for i in range(1000)) if ring_owner(k) == owner)


async def _hash_ring(node, pool, redis_client) -> None:
    for agent_id in HASH_AGENTS:
        await pool.start(node.channel, agent_id, max_concurrency=10)


KEY_C, KEY_B = keys_owned_by("agent-c"), keys_owned_by("agent-b")

SCENARIOS = {
    "least_connections": Scenario(
        S.Value("BALANCING_STRATEGY_LEAST_CONNECTIONS"),
        S.Value("BALANCING_STRATEGY_RESOURCE_BASED"),
        _least_connections,
        expected=["agent-b"],
        decoy_expected=["agent-a"],
    ),
    "round_robin": Scenario(
        S.Value("BALANCING_STRATEGY_ROUND_ROBIN"),
        S.Value("BALANCING_STRATEGY_LEAST_CONNECTIONS"),
        _round_robin,
        # least connections keeps agent-a (1 of 10 slots used) ahead of agent-b (1 of 2).
        expected=["agent-a", "agent-b", "agent-a", "agent-b"],
        decoy_expected=["agent-a", "agent-b", "agent-a", "agent-a"],
        tasks=[{}] * 4,
        decoy_counts=True,
    ),
    "weighted_round_robin": Scenario(
        S.Value("BALANCING_STRATEGY_WEIGHTED_ROUND_ROBIN"),
        S.Value("BALANCING_STRATEGY_LEAST_CONNECTIONS"),
        _weighted,
        expected=["agent-a"] * 2 + ["agent-b"] * 6,
        decoy_expected=["agent-a"] * 4 + ["agent-b"] * 4,
        tasks=[{}] * 8,
        counts=True,
    ),
    "least_response_time": Scenario(
        S.Value("BALANCING_STRATEGY_LEAST_RESPONSE_TIME"),
        S.Value("BALANCING_STRATEGY_LEAST_CONNECTIONS"),
        _response_time,
        expected=["agent-b"],
        decoy_expected=["agent-a"],
    ),
    "resource_based": Scenario(
        S.Value("BALANCING_STRATEGY_RESOURCE_BASED"),
        S.Value("BALANCING_STRATEGY_LEAST_CONNECTIONS"),
        _resources,
        expected=["agent-b"],
        decoy_expected=["agent-a"],
    ),
    "capability_based": Scenario(
        S.Value("BALANCING_STRATEGY_CAPABILITY_BASED"),
        S.Value("BALANCING_STRATEGY_LEAST_CONNECTIONS"),
        _capabilities,
        expected=["agent-b"],
        decoy_expected=["agent-a"],
        tasks=[{"requirements": task_pb2.TaskRequirements(preferred_capabilities=["gpu", "fp16"])}],
    ),
    "predictive": Scenario(
        S.Value("BALANCING_STRATEGY_PREDICTIVE"),
        S.Value("BALANCING_STRATEGY_LEAST_RESPONSE_TIME"),
        _predictive,
        expected=["agent-b"],
        decoy_expected=["agent-a"],
    ),
    "consistent_hash": Scenario(
        S.Value("BALANCING_STRATEGY_CONSISTENT_HASH"),
        S.Value("BALANCING_STRATEGY_LEAST_CONNECTIONS"),
        _hash_ring,
        expected=["agent-c", "agent-c", "agent-c", "agent-b", "agent-c", "agent-c"],
        decoy_expected=["agent-a", "agent-b", "agent-c", "agent-a", "agent-b", "agent-c"],
        tasks=[{"routing_key": k} for k in (KEY_C, KEY_C, KEY_C, KEY_B, KEY_C, KEY_C)],
        decoy_counts=True,
    ),
}


@pytest.mark.parametrize("mode", ["cluster", "override", "decoy"])
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_each_strategy_chooses_its_agent(node, pool, redis_client, name, mode):
    scenario = SCENARIOS[name]
    await set_strategy(node, scenario.strategy if mode == "cluster" else scenario.decoy)
    await scenario.setup(node, pool, redis_client)
    override = scenario.strategy if mode == "override" else 0

    chosen = [
        await assigned_agent(node, balancing_strategy=override, **fields)
        for fields in scenario.tasks
    ]

    expected = scenario.decoy_expected if mode == "decoy" else scenario.expected
    if scenario.counts or (mode == "decoy" and scenario.decoy_counts):
        assert collections.Counter(chosen) == collections.Counter(expected)
    else:
        assert chosen == expected


async def test_least_response_time_learns_from_measured_task_durations(node, pool):
    await set_strategy(node, S.Value("BALANCING_STRATEGY_LEAST_RESPONSE_TIME"))
    agents = {
        agent_id: await pool.start(node.channel, agent_id, max_concurrency=2)
        for agent_id in ("agent-a", "agent-b")
    }
    for agent_id, run_s in (("agent-a", 0.25), ("agent-b", 0.0)):
        pin = task_pb2.TaskRequirements(agent_id=agent_id)
        await assigned_agent(node, requirements=pin)
        assignment = await agents[agent_id].next_assignment()
        await agents[agent_id].acknowledge(assignment)
        await asyncio.sleep(run_s)  # the work itself: agent-a is the slow one
        await agents[agent_id].complete(assignment)

    # Both idle again: least connections would pick agent-a (ties go to the smallest id).
    assert await assigned_agent(node) == "agent-b"


async def test_get_and_set_balancing_strategy_round_trip(node):
    got = await node.tasks.GetBalancingStrategy(task_pb2.GetBalancingStrategyRequest())
    assert got.strategy == S.Value("BALANCING_STRATEGY_LEAST_CONNECTIONS"), "the default"

    first = await set_strategy(node, S.Value("BALANCING_STRATEGY_ROUND_ROBIN"))
    second = await set_strategy(node, S.Value("BALANCING_STRATEGY_CONSISTENT_HASH"))

    assert (first.strategy, first.previous_strategy) == (
        S.Value("BALANCING_STRATEGY_ROUND_ROBIN"),
        S.Value("BALANCING_STRATEGY_LEAST_CONNECTIONS"),
    )
    assert second.previous_strategy == S.Value("BALANCING_STRATEGY_ROUND_ROBIN")
    got = await node.tasks.GetBalancingStrategy(task_pb2.GetBalancingStrategyRequest())
    assert got.strategy == S.Value("BALANCING_STRATEGY_CONSISTENT_HASH")
    stats = await node.tasks.GetStats(task_pb2.GetStatsRequest())
    assert stats.load_balancer_stats.strategy == S.Value("BALANCING_STRATEGY_CONSISTENT_HASH")


@pytest.mark.parametrize("value", [0, 42], ids=["unspecified", "unknown"])
async def test_setting_no_strategy_is_invalid_argument_and_changes_nothing(node, value):
    await set_strategy(node, S.Value("BALANCING_STRATEGY_PREDICTIVE"))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await set_strategy(node, value)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "strategy" in caught.value.details()
    got = await node.tasks.GetBalancingStrategy(task_pb2.GetBalancingStrategyRequest())
    assert got.strategy == S.Value("BALANCING_STRATEGY_PREDICTIVE")
