"""The interceptor's principal reaches the task ownership and quota checks: real tokens,
no stand-in."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from auth_support import Keys, bearer
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agent_harness import submit_request
from aitbc.coordinator.v1 import task_pb2


async def test_a_task_knows_its_submitter_and_another_client_cannot_read_or_cancel_it(
    auth_node: Any, keys: Keys
) -> None:
    alice = bearer(keys.mint("alice", ["client"]))
    mallory = bearer(keys.mint("mallory", ["client"]))
    reader = bearer(keys.mint("auditor", ["reader"]))
    task = (await auth_node.tasks.SubmitTask(submit_request(), metadata=alice)).task
    assert task.submitted_by == "alice"
    got = await auth_node.tasks.GetTask(
        task_pb2.GetTaskRequest(task_id=task.task_id), metadata=alice
    )
    assert got.task.submitted_by == "alice"
    for call in (
        auth_node.tasks.GetTask(task_pb2.GetTaskRequest(task_id=task.task_id), metadata=mallory),
        auth_node.tasks.CancelTask(
            task_pb2.CancelTaskRequest(task_id=task.task_id), metadata=mallory
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    still = await auth_node.tasks.GetTask(
        task_pb2.GetTaskRequest(task_id=task.task_id), metadata=reader
    )
    assert still.task.state == task_pb2.TASK_STATE_PENDING


async def test_quotas_count_per_authenticated_principal(start_auth_node: Any, keys: Keys) -> None:
    node = await start_auth_node(quota_max_unfinished=1)
    alice = bearer(keys.mint("alice", ["client"]))
    bob = bearer(keys.mint("bob", ["client"]))
    await node.tasks.SubmitTask(submit_request(), metadata=alice)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await node.tasks.SubmitTask(submit_request(), metadata=alice)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(caught.value)
    assert status is not None
    retry = error_details_pb2.RetryInfo()
    assert any(detail.Unpack(retry) for detail in status.details)
    await node.tasks.SubmitTask(submit_request(), metadata=bob)  # bob has his own budget
