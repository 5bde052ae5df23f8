"""The whole round trip on one node: submit, push, acknowledge, complete."""

from __future__ import annotations

from agent_harness import ScriptedAgent, submit_request
from aitbc.coordinator.v1 import task_pb2


async def test_round_trip(node):
    agent = await ScriptedAgent(node.channel, "agent-1").start()
    submitted = (await node.tasks.SubmitTask(submit_request(data={"x": 42}))).task
    assignment = await agent.next_assignment()
    assert assignment.task_id == submitted.task_id
    assert assignment.attempt == 1
    assert dict(assignment.task_data) == {"x": 42}
    await agent.acknowledge(assignment)
    done = await agent.complete(assignment, answer=1)
    assert done.state == task_pb2.TASK_STATE_COMPLETED
    got = (await node.tasks.GetTask(task_pb2.GetTaskRequest(task_id=submitted.task_id))).task
    assert [t.state for t in got.transitions] == [
        task_pb2.TASK_STATE_PENDING,
        task_pb2.TASK_STATE_ASSIGNED,
        task_pb2.TASK_STATE_RUNNING,
        task_pb2.TASK_STATE_COMPLETED,
    ]
    await agent.stop()
