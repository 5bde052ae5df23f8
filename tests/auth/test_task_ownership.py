"""Task ownership (issue 15, items 3 and 4): the principal that submitted a task is stored
with it and shown; a client gets, watches and cancels only its own tasks; readers get and
watch any, operators also cancel any (audited).

The authentication interceptor is built in parallel: until it merges, the TaskService
handlers of a real in-process node are called here inside ``principal.calling_as``, which is
what the interceptor does around each call. A client is answered PERMISSION_DENIED for a task
that is not its own and, identically, for one that does not exist.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from aitbc.coordinator.v1 import task_pb2
from coordinator.api.task_service import TaskService
from coordinator.auth import audit
from coordinator.auth.principal import Principal, Role, calling_as
from coordinator.errors import NotFound, PermissionDenied
from coordinator.sdk import decoding as sdk_wire
from coordinator.tasks.models import TaskState, TaskSubmission
from script_support import dump

CLIENT = frozenset({Role.CLIENT})
READER = frozenset({Role.READER})
OPERATOR = frozenset({Role.OPERATOR})


@contextmanager
def calling(name: str | None, roles: frozenset[Role] = CLIENT) -> Iterator[None]:
    """The calls inside are made by ``name`` with ``roles`` (None: authentication off)."""
    principal = None if name is None else Principal(name, roles, source="token")
    with calling_as(principal):
        yield


async def tasks_dump(redis) -> dict[str, tuple[str, object]]:
    """Every task key and its value (the node's own keys, its presence and locks, change
    on their own)."""
    return {k: v for k, v in (await dump(redis)).items() if k.startswith(("task", "quota:"))}


@pytest.fixture
async def service(node) -> TaskService:
    """The TaskService of a real node (its store, its event hub, its settings)."""
    c = node.coordinator
    return TaskService(c.tasks, c.events, c.settings)


async def submit(service: TaskService, name: str | None) -> task_pb2.Task:
    with calling(name):
        reply = await service.SubmitTask(
            task_pb2.SubmitTaskRequest(task_type="owned", task_data={"secret": "sk-live-x"}),
            None,  # type: ignore[arg-type]
        )
    return reply.task


async def get(service: TaskService, task_id: str) -> task_pb2.Task:
    reply = await service.GetTask(task_pb2.GetTaskRequest(task_id=task_id), None)  # type: ignore[arg-type]
    return reply.task


async def first_watched(service: TaskService, task_id: str) -> task_pb2.Task:
    watch = service.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id), None)  # type: ignore[arg-type]
    try:
        return (await anext(watch)).task
    finally:
        await watch.aclose()


async def cancel(service: TaskService, task_id: str) -> task_pb2.Task:
    reply = await service.CancelTask(
        task_pb2.CancelTaskRequest(task_id=task_id, reason="test"),
        None,  # type: ignore[arg-type]
    )
    return reply.task


async def test_the_submitter_is_stored_and_shown(service, node, redis_client):
    task = await submit(service, "alice")
    assert task.submitted_by == "alice"
    with calling("alice"):
        assert (await get(service, task.task_id)).submitted_by == "alice"
    assert (await node.coordinator.tasks.get(task.task_id)).submitted_by == "alice"
    assert sdk_wire.task_from_proto(task).submitted_by == "alice"  # what the SDK's Client shows
    # Without authentication nobody is stored, and anybody reads it, as before.
    anonymous = await submit(service, None)
    assert anonymous.submitted_by == ""
    assert (await get(service, anonymous.task_id)).task_id == anonymous.task_id


async def test_a_client_reads_and_watches_only_its_own_tasks(service):
    task = await submit(service, "alice")
    with calling("alice"):
        assert (await get(service, task.task_id)).task_data["secret"] == "sk-live-x"
        assert (await first_watched(service, task.task_id)).state == task.state
    with calling("bob"):
        with pytest.raises(PermissionDenied) as not_his:
            await get(service, task.task_id)
        with pytest.raises(PermissionDenied) as unknown:
            await get(service, uuid.uuid4().hex)
        with pytest.raises(PermissionDenied) as watched:
            await first_watched(service, task.task_id)
    assert "principal 'bob' lacks permission tasks.read for GetTask" in str(not_his.value)
    assert "tasks.watch" in str(watched.value)
    assert "sk-live" not in str(not_his.value)
    # The same answer whether the task exists or not: nothing is learnt about others' ids.
    assert str(unknown.value).split("task_id")[0] == str(not_his.value).split("task_id")[0]

    for roles in (READER, OPERATOR):
        with calling("carol", roles):
            assert (await get(service, task.task_id)).submitted_by == "alice"
            assert (await first_watched(service, task.task_id)).task_id == task.task_id
            with pytest.raises(NotFound):  # they may know that a task does not exist
                await get(service, uuid.uuid4().hex)


async def test_a_client_cannot_cancel_another_principals_task_and_nothing_changes(
    service, redis_client
):
    task = await submit(service, "alice")
    before = await tasks_dump(redis_client)
    for name, roles in (("bob", CLIENT), ("carol", READER)):
        with calling(name, roles), pytest.raises(PermissionDenied, match=r"tasks\.cancel"):
            await cancel(service, task.task_id)
    with calling("bob"), pytest.raises(PermissionDenied, match=r"tasks\.cancel"):
        await cancel(service, uuid.uuid4().hex)
    assert await tasks_dump(redis_client) == before

    with calling("alice"):
        assert (await cancel(service, task.task_id)).state == task_pb2.TASK_STATE_CANCELLED


async def test_an_operator_cancels_any_task_and_is_audited(service, node, caplog):
    task = await submit(service, "alice")
    own = await submit(service, "ops")
    # The audit scope the authentication interceptor opens around each call.
    scope = audit.scope_of(audit.Scope("TaskService/CancelTask", audit.Auditor()))
    with (
        caplog.at_level(logging.INFO, logger="coordinator.audit"),
        calling("ops", OPERATOR),
        scope,
    ):
        assert (await cancel(service, task.task_id)).state == task_pb2.TASK_STATE_CANCELLED
        await cancel(service, own.task_id)  # its own: not an operator action
    (line,) = [r for r in caplog.records if r.name == "coordinator.audit"]
    assert line.principal == "ops" and line.target == task.task_id  # type: ignore[attr-defined]
    assert line.rpc == "TaskService/CancelTask" and line.outcome == "ok"  # type: ignore[attr-defined]
    assert (await node.coordinator.tasks.get(task.task_id)).state is TaskState.CANCELLED


async def test_the_store_refuses_a_cancel_for_another_submitter_in_the_same_step(
    node, redis_client
):
    store = node.coordinator.tasks
    with calling("alice"):
        task, _ = await store.submit(TaskSubmission(task_type="owned", task_data={}))
    before = await tasks_dump(redis_client)
    with pytest.raises(NotFound):
        await store.cancel(task.task_id, "", submitted_by="bob")
    assert await tasks_dump(redis_client) == before
    cancelled = await store.cancel(task.task_id, "", submitted_by="alice")
    assert cancelled.state is TaskState.CANCELLED
