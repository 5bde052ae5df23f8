"""Prometheus metrics, scraped over real HTTP from running nodes: what a task's round trip,
client mistakes, streams and Redis errors leave in them; the switch and the port settings."""

from __future__ import annotations

import re
import socket

import grpc
import pytest
import redis.asyncio as aioredis

from agent_harness import eventually, submit_request
from aitbc.coordinator.v1 import agent_pb2, task_pb2
from coordinator.config import ConfigError, Settings, load_settings
from coordinator.storage import keys
from metrics_support import (
    AGENTS,
    TASKS,
    Samples,
    handled,
    listening,
    scrape,
    scrape_sync,
    value,
)
from support import free_port, wait_until

NOBODY = task_pb2.TaskRequirements(capabilities=["nobody-has-this"])
"""Requirements no agent in these tests meets: the task waits in line."""


async def test_a_task_round_shows_in_the_scraped_metrics(start_node, pool):
    node = await start_node(metrics_enabled=True, metrics_port=0)
    port = node.coordinator.metrics_port
    assert port and port != node.port
    assert value(await scrape(port), "aitbc_coordinator_connected_agents") == 0

    agent = await pool.start(node.channel, "metrics-agent")
    assert value(await scrape(port), "aitbc_coordinator_connected_agents") == 1

    submitted = await node.tasks.SubmitTask(submit_request())
    assignment = await agent.next_assignment()
    assert assignment.task_id == submitted.task.task_id
    await agent.acknowledge(assignment)
    await agent.complete(assignment, answer=42)
    # A task no agent can take stays queued; a malformed one is refused.
    await node.tasks.SubmitTask(
        submit_request(
            priority=task_pb2.TASK_PRIORITY_HIGH,
            requirements=task_pb2.TaskRequirements(capabilities=["nobody-has-this"]),
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await node.tasks.SubmitTask(
            submit_request(requirements=task_pb2.TaskRequirements(min_health_score=2))
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    samples = await scrape(port)
    assert handled(samples, TASKS, "SubmitTask", "OK") == 2
    assert handled(samples, TASKS, "SubmitTask", "INVALID_ARGUMENT") == 1
    assert handled(samples, TASKS, "AcknowledgeTask", "OK") == 1
    assert handled(samples, TASKS, "CompleteTask", "OK") == 1
    assert handled(samples, AGENTS, "RegisterAgent", "OK") == 1
    duration = "aitbc_coordinator_rpc_duration_seconds_count"
    assert value(samples, duration, service=TASKS, method="SubmitTask") == 3
    assert value(samples, "aitbc_coordinator_tasks", state="COMPLETED") == 1
    assert value(samples, "aitbc_coordinator_tasks", state="PENDING") == 1
    assert value(samples, "aitbc_coordinator_tasks", state="RUNNING") == 0
    assert value(samples, "aitbc_coordinator_queue_depth", priority="HIGH") == 1
    assert value(samples, "aitbc_coordinator_queue_depth", priority="NORMAL") == 0
    latency = "aitbc_coordinator_submit_to_assignment_seconds"
    assert value(samples, f"{latency}_count") == 1
    assert value(samples, f"{latency}_bucket", le="+Inf") == 1
    assert 0 <= value(samples, f"{latency}_sum") < 10
    assert value(samples, "aitbc_coordinator_connected_agents") == 1
    assert value(samples, "aitbc_coordinator_redis_errors_total", kind="unavailable") == 0
    assignments = "aitbc_coordinator_assignments_total"
    assert value(samples, assignments, way="submit") + value(samples, assignments, way="pass") == 1
    assert value(samples, "aitbc_coordinator_node_info", node_id="test-node") == 1
    # The stream is still open: it is counted when it ends, with its final code.
    assert handled(samples, AGENTS, "StreamAssignments", "CANCELLED", "server_stream") is None

    await agent.stop()

    async def stream_counted() -> Samples | None:
        samples = await scrape(port)
        return samples if value(samples, "aitbc_coordinator_connected_agents") == 0 else None

    samples = await eventually(stream_counted, what="the closed stream to leave the gauge")
    assert handled(samples, AGENTS, "StreamAssignments", "CANCELLED", "server_stream") == 1


async def test_tasks_by_state_count_archived_tasks_too(start_node, pool, redis_client):
    """Finished tasks leave tasks:state:{STATE} for the archive once the reaper compacts
    them: the gauge counts them as long as they are kept."""
    node = await start_node(metrics_enabled=True, metrics_port=0)
    agent = await pool.start(node.channel, "metrics-agent")
    for _ in range(3):
        await node.tasks.SubmitTask(submit_request())
        assignment = await agent.next_assignment()
        await agent.acknowledge(assignment)
        await agent.complete(assignment)
    cancelled = (await node.tasks.SubmitTask(submit_request(requirements=NOBODY))).task
    await node.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=cancelled.task_id))

    async def archived() -> bool:
        return await redis_client.llen(keys.TASK_ARCHIVED) == 4

    await eventually(archived, what="the reaper archived the finished tasks")
    assert not await redis_client.exists(keys.tasks_in_state("COMPLETED"))
    samples = await scrape(node.coordinator.metrics_port)
    assert value(samples, "aitbc_coordinator_tasks", state="COMPLETED") == 3
    assert value(samples, "aitbc_coordinator_tasks", state="CANCELLED") == 1
    assert value(samples, "aitbc_coordinator_tasks", state="FAILED") == 0


async def test_nodes_in_one_process_count_only_their_own_calls(start_node, pool):
    first = await start_node(metrics_enabled=True, metrics_port=0, node_id="node-a")
    second = await start_node(metrics_enabled=True, metrics_port=0, node_id="node-b")
    await pool.start(first.channel, "on-first")
    await second.tasks.SubmitTask(submit_request())

    on_first = await scrape(first.coordinator.metrics_port)
    on_second = await scrape(second.coordinator.metrics_port)
    assert value(on_first, "aitbc_coordinator_connected_agents") == 1
    assert value(on_second, "aitbc_coordinator_connected_agents") == 0
    assert handled(on_first, TASKS, "SubmitTask", "OK") is None
    assert handled(on_second, TASKS, "SubmitTask", "OK") == 1
    assert value(on_second, "aitbc_coordinator_node_info", node_id="node-b") == 1


async def test_redis_errors_are_counted_by_kind(start_node, own_redis):
    node = await start_node(redis_url=own_redis.url(1), metrics_enabled=True, metrics_port=0)
    port = node.coordinator.metrics_port
    register = agent_pb2.RegisterAgentRequest(agent_id="a", agent_type="worker")
    admin = aioredis.Redis(port=own_redis.port)
    try:
        await admin.replicaof("127.0.0.1", "1")  # no primary there: a read-only replica
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await node.agents.RegisterAgent(register)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        await admin.replicaof("NO", "ONE")
    finally:
        await admin.aclose()
    samples = await scrape(port)
    assert value(samples, "aitbc_coordinator_redis_errors_total", kind="refused_writes") == 1
    assert value(samples, "aitbc_coordinator_redis_errors_total", kind="unavailable") == 0
    assert handled(samples, AGENTS, "RegisterAgent", "UNAVAILABLE") == 1

    own_redis.stop()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await node.agents.RegisterAgent(register)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    samples = await scrape(port)  # still served without Redis, minus what Redis holds
    assert value(samples, "aitbc_coordinator_redis_errors_total", kind="unavailable") == 1
    assert handled(samples, AGENTS, "RegisterAgent", "UNAVAILABLE") == 2
    assert not [name for name, _ in samples if name == "aitbc_coordinator_tasks"]


async def test_disabled_metrics_listen_nowhere(start_node):
    port = free_port()
    node = await start_node(metrics_enabled=False, metrics_port=port)
    assert node.coordinator.metrics_port is None
    assert not listening(port)


async def test_stopping_the_node_stops_serving_metrics(start_node):
    node = await start_node(metrics_enabled=True, metrics_port=0)
    port = node.coordinator.metrics_port
    assert listening(port)
    await node.coordinator.stop(grace_s=0)
    assert node.coordinator.metrics_port is None
    assert not listening(port)


def test_metrics_are_off_by_default_on_port_9464():
    assert not Settings().metrics_enabled
    settings = load_settings({"COORDINATOR_METRICS_ENABLED": "true"})
    assert settings.metrics_enabled and settings.metrics_port == 9464


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"COORDINATOR_METRICS_PORT": "70000"}, "COORDINATOR_METRICS_PORT"),
        ({"COORDINATOR_METRICS_PORT": "metrics"}, "COORDINATOR_METRICS_PORT"),
        ({"COORDINATOR_METRICS_ENABLED": "maybe"}, "COORDINATOR_METRICS_ENABLED"),
        (
            {"COORDINATOR_METRICS_ENABLED": "yes", "COORDINATOR_METRICS_PORT": "9001"},
            "COORDINATOR_METRICS_PORT",
        ),
    ],
)
def test_bad_metrics_settings_name_the_variable(env, variable):
    with pytest.raises(ConfigError, match=f"^{variable}: "):
        load_settings(env)


def test_the_grpc_port_is_free_for_metrics_while_they_are_off():
    assert load_settings({"COORDINATOR_METRICS_PORT": "9001"}).metrics_port == 9001


_METRICS_LINE = re.compile(r"metrics served on http://\S+:(\d+)/metrics")


def test_a_served_node_exposes_metrics_and_closes_the_port_when_it_stops(spawn_node):
    node = spawn_node(
        env={
            "NODE_ID": "metrics-proc",
            "COORDINATOR_METRICS_ENABLED": "true",
            "COORDINATOR_METRICS_PORT": "0",
        }
    )
    node.wait_serving()
    found = wait_until(lambda: _METRICS_LINE.search(node.logs()), what="the metrics port")
    port = int(found.group(1))
    samples = scrape_sync(port)
    assert value(samples, "aitbc_coordinator_node_info", node_id="metrics-proc") == 1
    assert handled(samples, "grpc.health.v1.Health", "Check", "OK")  # wait_serving's probes
    node.signal()
    assert node.wait() == 0, node.logs()
    assert not listening(port)


def test_a_taken_metrics_port_stops_the_node_naming_the_variable(spawn_node):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = spawn_node(
            env={"COORDINATOR_METRICS_ENABLED": "true", "COORDINATOR_METRICS_PORT": str(port)}
        )
        assert node.wait() == 1
    assert "COORDINATOR_METRICS_PORT" in node.logs()
