"""The audit trail: one structured line per operator action and per refusal, counted in
the node's metrics."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from auth_support import Keys, bearer

from agent_harness import submit_request
from aitbc.coordinator.v1 import agent_pb2, task_pb2


def audit_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "coordinator.audit"]


def counter(node: Any, name: str, **labels: str) -> float:
    value = node.coordinator.metrics.registry.get_sample_value(
        f"aitbc_coordinator_{name}_total", labels
    )
    return value or 0.0


async def test_an_operator_purge_is_one_audit_line_and_counted(
    auth_node: Any, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coordinator.audit")
    client = bearer(keys.mint("client-a", ["client"]))
    await auth_node.tasks.SubmitTask(submit_request(), metadata=client)
    operator = bearer(keys.mint("ops-alice", ["operator"]))
    reply = await auth_node.tasks.PurgeQueue(
        task_pb2.PurgeQueueRequest(priority=task_pb2.TASK_PRIORITY_NORMAL, reason="incident 7"),
        metadata=operator,
    )
    assert reply.cancelled_count == 1
    [record] = [r for r in audit_records(caplog) if getattr(r, "action", "") == "purge_queue"]
    assert record.principal == "ops-alice"  # type: ignore[attr-defined]
    assert record.rpc == "TaskService/PurgeQueue"  # type: ignore[attr-defined]
    assert record.target == "NORMAL"  # type: ignore[attr-defined]
    assert record.outcome == "ok"  # type: ignore[attr-defined]
    assert counter(auth_node, "audit_events", action="purge_queue") == 1


async def test_strategy_changes_and_acting_on_another_agent_are_audited(
    auth_node: Any, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coordinator.audit")
    operator = bearer(keys.mint("ops-bob", ["operator"]))
    own_agent = bearer(keys.mint("worker-1", ["agent"], ["worker-1"]))
    registration = agent_pb2.RegisterAgentRequest(agent_id="worker-1", agent_type="worker")
    await auth_node.agents.RegisterAgent(registration, metadata=own_agent)
    # The agent on itself: not an operator action.
    await auth_node.agents.UpdateAgentStatus(
        agent_pb2.UpdateAgentStatusRequest(
            agent_id="worker-1", status=agent_pb2.AGENT_STATUS_MAINTENANCE
        ),
        metadata=own_agent,
    )
    await auth_node.tasks.SetBalancingStrategy(
        task_pb2.SetBalancingStrategyRequest(strategy=task_pb2.BALANCING_STRATEGY_ROUND_ROBIN),
        metadata=operator,
    )
    await auth_node.agents.UpdateAgentStatus(
        agent_pb2.UpdateAgentStatusRequest(
            agent_id="worker-1", status=agent_pb2.AGENT_STATUS_ACTIVE
        ),
        metadata=operator,
    )
    await auth_node.agents.DeregisterAgent(
        agent_pb2.DeregisterAgentRequest(agent_id="worker-1"), metadata=operator
    )
    actions = [(r.action, r.principal) for r in audit_records(caplog)]  # type: ignore[attr-defined]
    assert actions == [
        ("set_strategy", "ops-bob"),
        ("update_agent_status", "ops-bob"),
        ("deregister_agent", "ops-bob"),
    ]


async def test_a_permission_denied_is_one_audit_line_and_counted(
    auth_node: Any, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coordinator.audit")
    client = bearer(keys.mint("client-mallory", ["client"]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_node.tasks.PurgeQueue(
            task_pb2.PurgeQueueRequest(priority=task_pb2.TASK_PRIORITY_NORMAL), metadata=client
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "queues.purge" in (caught.value.details() or "")
    # A resource refusal too: an agent naming an agent it is not.
    agent = bearer(keys.mint("agent-mallory", ["agent"], ["mallory-*"]))
    with pytest.raises(grpc.aio.AioRpcError):
        await auth_node.agents.Heartbeat(
            agent_pb2.HeartbeatRequest(agent_id="victim-9"), metadata=agent
        )
    denied = [r for r in audit_records(caplog) if getattr(r, "action", "") == "permission_denied"]
    assert [(r.principal, r.rpc, r.target) for r in denied] == [  # type: ignore[attr-defined]
        ("client-mallory", "TaskService/PurgeQueue", ""),
        ("agent-mallory", "AgentService/Heartbeat", "victim-9"),
    ]
    assert "queues.purge" in denied[0].outcome  # type: ignore[attr-defined]
    assert (
        counter(auth_node, "auth_failures", rpc="TaskService/PurgeQueue", code="PERMISSION_DENIED")
        == 1
    )
    assert (
        counter(auth_node, "auth_failures", rpc="AgentService/Heartbeat", code="PERMISSION_DENIED")
        == 1
    )
    assert counter(auth_node, "audit_events", action="permission_denied") == 2
    # The refusals are counted with their codes among the RPCs too.
    handled = node_rpc(auth_node, "PurgeQueue", "PERMISSION_DENIED")
    assert handled == 1


def node_rpc(node: Any, method: str, code: str) -> float:
    value = node.coordinator.metrics.registry.get_sample_value(
        "aitbc_coordinator_rpc_handled_total",
        {
            "service": "aitbc.coordinator.v1.TaskService",
            "method": method,
            "type": "unary",
            "code": code,
        },
    )
    return value or 0.0


async def test_a_batch_entry_for_another_agent_is_audited_once(
    auth_node: Any, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coordinator.audit")
    agent = bearer(keys.mint("agent-mallory", ["agent"], ["mallory-*"]))
    report = task_pb2.TaskReport(
        acknowledge=task_pb2.AcknowledgeTaskRequest(
            task_id="0" * 32, agent_id="victim-9", fencing_token="t"
        )
    )
    reply = await auth_node.tasks.ReportTasks(
        task_pb2.ReportTasksRequest(reports=[report]), metadata=agent
    )
    assert reply.results[0].error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    denied = [r for r in audit_records(caplog) if getattr(r, "action", "") == "permission_denied"]
    assert [(r.rpc, r.target) for r in denied] == [("TaskService/ReportTasks", "victim-9")]  # type: ignore[attr-defined]


async def test_without_auth_nothing_is_audited(node: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="coordinator.audit")
    await node.tasks.PurgeQueue(task_pb2.PurgeQueueRequest(priority=task_pb2.TASK_PRIORITY_NORMAL))
    assert audit_records(caplog) == []


async def test_an_operator_cancelling_a_clients_task_is_audited(
    auth_node: Any, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coordinator.audit")
    client = bearer(keys.mint("client-a", ["client"]))
    first = (await auth_node.tasks.SubmitTask(submit_request(), metadata=client)).task
    second = (await auth_node.tasks.SubmitTask(submit_request(), metadata=client)).task
    await auth_node.tasks.CancelTask(
        task_pb2.CancelTaskRequest(task_id=first.task_id), metadata=client
    )
    operator = bearer(keys.mint("ops-carol", ["operator"]))
    await auth_node.tasks.CancelTask(
        task_pb2.CancelTaskRequest(task_id=second.task_id), metadata=operator
    )
    lines = [(r.action, r.principal, r.target) for r in audit_records(caplog)]  # type: ignore[attr-defined]
    assert lines == [("cancel_task", "ops-carol", second.task_id)]


async def test_unauthenticated_calls_are_all_counted_but_logged_at_a_bounded_rate(
    auth_node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coordinator.audit")
    for _ in range(25):
        with pytest.raises(grpc.aio.AioRpcError):
            await auth_node.tasks.GetStats(task_pb2.GetStatsRequest())
    logged = [r for r in audit_records(caplog) if getattr(r, "action", "") == "unauthenticated"]
    assert 1 <= len(logged) <= 20  # 10 a second; the calls may straddle a second
    assert (
        counter(auth_node, "auth_failures", rpc="TaskService/GetStats", code="UNAUTHENTICATED")
        == 25
    )
    assert counter(auth_node, "audit_events", action="unauthenticated") == 25
