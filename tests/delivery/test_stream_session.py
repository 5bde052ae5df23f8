"""A stream's queue of events (``coordinator.delivery.session``): bounded by events and bytes,
without the events whose attempt has ended, and read from Redis again after it overflowed."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from agent_harness import eventually, submit_request
from aitbc.coordinator.v1 import agent_pb2, agent_pb2_grpc
from coordinator.delivery.messages import Assignment
from coordinator.delivery.session import (
    AssignmentEvent,
    CancelEvent,
    EndEvent,
    QueueLimits,
    Session,
    assignment_event,
)
from coordinator.storage import keys
from coordinator.tasks.models import Priority
from coordinator.tasks.store import TaskStore


def assignment(task_id: str, attempt: int = 1, data_bytes: int = 100) -> AssignmentEvent:
    return assignment_event(
        Assignment(
            task_id=task_id,
            attempt=attempt,
            fencing_token=f"{attempt}:x",
            task_type="test",
            task_data={"blob": "x" * data_bytes},
            priority=Priority.NORMAL,
            assigned_at_ms=0,
            lease_expires_at_ms=None,
            start_to_close_s=60.0,
        ),
        data_bytes + 12,
    )


@pytest.fixture
def make_session(redis_client, multiplexed, make_settings):
    def make(**limits: int) -> Session:
        store = TaskStore(redis_client, multiplexed, make_settings())
        return Session("agent-1", store, redis_client, resync_s=1.0, limits=QueueLimits(**limits))

    return make


def test_a_cancel_notice_for_an_unsent_assignment_drops_both(make_session):
    session = make_session()
    session.push(assignment("t1"))
    session.push(assignment("t2"))
    session.push(CancelEvent("t1", 1, "cancelled by client"))

    assert session.queued == (1, assignment("t2").size_bytes)


def test_a_newer_attempt_drops_the_queued_older_one_and_a_late_older_one_is_ignored(
    make_session,
):
    session = make_session()
    session.push(assignment("t1", attempt=1))
    session.push(assignment("t1", attempt=2))
    session.push(assignment("t1", attempt=1))  # a late announcement of the ended attempt

    assert session.queued == (1, assignment("t1", attempt=2).size_bytes)


def test_the_queue_is_bounded_by_events_and_by_bytes(make_session):
    by_events = make_session(max_events=3)
    for i in range(10):
        by_events.push(assignment(f"t{i}"))
    assert by_events.queued[0] == 3
    assert by_events.full_since is not None

    size = assignment("t").size_bytes
    by_bytes = make_session(max_bytes=4 * size + size // 2)
    for i in range(10):
        by_bytes.push(assignment(f"t{i}"))
    assert by_bytes.queued == (4, 4 * size)


def test_cancel_notices_push_out_assignments_which_redis_can_give_again(make_session):
    session = make_session(max_events=2)
    session.push(assignment("t1"))
    session.push(assignment("t2"))
    session.push(CancelEvent("t0", 1, "lease expired"))  # an attempt sent earlier

    assert session.queued[0] == 2
    session.push(CancelEvent("t9", 1, "lease expired"))
    assert session.queued[0] == 2  # both assignments gave way; no room for a third notice


def test_the_end_replaces_whatever_was_queued(make_session):
    session = make_session()
    for i in range(5):
        session.push(assignment(f"t{i}"))
    session.push(EndEvent("draining"))
    session.push(assignment("t9"))

    assert session.queued == (0, 0)


async def test_a_stream_that_overflowed_sends_the_rest_from_redis_once_read_again(
    start_node,
):
    """An agent stops reading: its queue stays within the bound; when it reads again it gets
    every assignment, those left in Redis included."""
    node = await start_node(stream_queue_max_events=3, stream_stall_timeout_s=60.0)
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{node.port}", options=[("grpc.http2.bdp_probe", 0)]
    )
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    await agents.RegisterAgent(
        agent_pb2.RegisterAgentRequest(agent_id="agent-1", agent_type="worker", max_concurrency=30)
    )
    call = agents.StreamAssignments(
        agent_pb2.StreamAssignmentsRequest(agent_id="agent-1", max_assignments_per_message=1)
    )
    most = 0
    try:
        assert (await call.read()).WhichOneof("event") == "ready"
        task_ids = set()
        for _ in range(30):
            request = submit_request(data={"blob": "x" * 20_000})
            task_ids.add((await node.tasks.SubmitTask(request)).task.task_id)
            most = max(most, node.coordinator.streams.queued("agent-1")[0])

        async def full() -> bool:
            nonlocal most
            events, _ = node.coordinator.streams.queued("agent-1")
            most = max(most, events)
            return events == 3

        await eventually(full, what="the stream's queue full")
        received = set()
        while received != task_ids:
            event = await asyncio.wait_for(call.read(), 10)
            assert event.WhichOneof("event") == "assignment"
            received.add(event.assignment.task_id)
            most = max(most, node.coordinator.streams.queued("agent-1")[0])
        assert most <= 3
    finally:
        call.cancel()
        with contextlib.suppress(Exception):
            await channel.close()


async def test_room_taken_by_a_resync_is_not_given_to_announcements_meanwhile(
    start_node, redis_client, multiplexed, make_settings
):
    """The resync reads whole tasks after choosing how many fit; announcements that arrive
    during that read must find the room taken."""
    node = await start_node()
    agents = node.agents
    await agents.RegisterAgent(
        agent_pb2.RegisterAgentRequest(agent_id="agent-1", agent_type="worker", max_concurrency=5)
    )
    call = agents.StreamAssignments(agent_pb2.StreamAssignmentsRequest(agent_id="agent-1"))
    assert (await call.read()).WhichOneof("event") == "ready"
    for _ in range(5):
        await node.tasks.SubmitTask(submit_request())

    async def five_held() -> bool:
        return await redis_client.scard(keys.agent_tasks("agent-1")) == 5

    await eventually(five_held, what="five tasks held by agent-1")
    call.cancel()  # the agent keeps them for the stream grace period

    class AnnouncesWhileReading(TaskStore):
        async def get_many(self, task_ids):
            for i in range(3):  # assignments of other tasks, announced meanwhile
                session.push(assignment(f"other-{i}"))
            return await super().get_many(task_ids)

    store = AnnouncesWhileReading(redis_client, multiplexed, make_settings())
    session = Session(
        "agent-1", store, redis_client, resync_s=1.0, limits=QueueLimits(max_events=3)
    )
    events = await session.next_events()

    assert len(events) == 3
    assert session.queued[0] <= 3
