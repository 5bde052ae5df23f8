"""COORDINATOR_REDIS_MIN_REPLICAS through a node: every call that writes a task (submit, the
unary reports, cancel) is answered only once that many replicas have the write, and
UNAVAILABLE naming the shortfall when they do not; reads do not wait. Against a real Redis
with no replica, so that WAIT always falls short."""

from __future__ import annotations

import grpc
import pytest

from agent_harness import submit_request
from aitbc.coordinator.v1 import task_pb2

SHORTFALL = "reached only 0 of 1 Redis replicas"


async def unavailable(call) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    return refused.value.details()


async def test_writes_wait_for_replicas_and_say_when_too_few_have_them(start_node, own_redis):
    node = await start_node(
        redis_url=own_redis.url(1), redis_min_replicas=1, redis_replica_timeout_ms=50
    )
    details = await unavailable(node.tasks.SubmitTask(submit_request(request_id="r-1")))
    assert SHORTFALL in details and "retry with the same request_id" in details

    # Whatever the script did, the answer waits for the replicas (a cancel or a report of an
    # unknown task included: the node cannot tell a write from no write before WAIT says).
    unknown = "0" * 32
    assert SHORTFALL in await unavailable(
        node.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=unknown))
    )
    assert SHORTFALL in await unavailable(
        node.tasks.CompleteTask(
            task_pb2.CompleteTaskRequest(task_id=unknown, agent_id="nobody", fencing_token=unknown)
        )
    )
    # Reads do not wait.
    await node.tasks.ListTasks(task_pb2.ListTasksRequest())
    await node.tasks.GetStats(task_pb2.GetStatsRequest())
