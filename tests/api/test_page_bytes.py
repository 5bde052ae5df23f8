"""A page of ListTasks or DiscoverAgents stops before its reply would exceed the node's
message limit: valid data never makes a listing fail, and paging returns every item once."""

from __future__ import annotations

from google.protobuf.struct_pb2 import Struct

from aitbc.coordinator.v1 import agent_pb2, task_pb2

MIB = 1024 * 1024


async def test_list_tasks_pages_by_bytes_and_returns_every_task_once(node):
    limit = node.coordinator.settings.max_message_bytes
    data = Struct()
    data.update({"blob": "x" * (9 * MIB // 10)})
    submitted = set()
    for _ in range(5):  # 4.5 MiB of task_data in all, against a 4 MiB limit
        reply = await node.tasks.SubmitTask(
            task_pb2.SubmitTaskRequest(task_type="big", task_data=data)
        )
        submitted.add(reply.task.task_id)

    first = await node.tasks.ListTasks(task_pb2.ListTasksRequest())
    assert 0 < len(first.tasks) < 5 and first.next_page_token
    assert first.ByteSize() <= limit

    listed = [t.task_id for t in first.tasks]
    token = first.next_page_token
    while token:
        page = await node.tasks.ListTasks(task_pb2.ListTasksRequest(page_token=token))
        assert page.tasks and page.ByteSize() <= limit
        listed += [t.task_id for t in page.tasks]
        token = page.next_page_token
    assert sorted(listed) == sorted(submitted)


async def test_every_page_holds_one_task_even_past_the_margin(start_node):
    """One item always goes, alone when it leaves no room for another: paging moves on."""
    big_bytes = 9 * MIB // 10
    # A message limit that one big task fits in, but not with the reply's margin.
    node = await start_node(max_message_bytes=big_bytes + 2048)
    data = Struct()
    data.update({"blob": "y" * big_bytes})
    for _ in range(2):
        await node.tasks.SubmitTask(task_pb2.SubmitTaskRequest(task_type="big", task_data=data))
    await node.tasks.SubmitTask(task_pb2.SubmitTaskRequest(task_type="small"))

    pages = []
    token = ""
    while True:
        page = await node.tasks.ListTasks(task_pb2.ListTasksRequest(page_token=token))
        pages.append([t.task_type for t in page.tasks])
        token = page.next_page_token
        if not token:
            break
    assert pages == [["small"], ["big"], ["big"]]  # newest first


def big_metadata() -> dict[str, str]:
    """64 KiB of metadata, the most an agent may register: 16 entries of 4096 characters."""
    return {f"m{i:02d}": "v" * (4096 - 3) for i in range(16)}


async def test_discover_agents_pages_by_bytes_and_returns_every_agent_once(node):
    limit = node.coordinator.settings.max_message_bytes
    registered = {f"agent-{i:02d}" for i in range(70)}  # about 4.6 MB of agents
    for agent_id in sorted(registered):
        await node.agents.RegisterAgent(
            agent_pb2.RegisterAgentRequest(
                agent_id=agent_id, agent_type="worker", metadata=big_metadata()
            )
        )

    first = await node.agents.DiscoverAgents(agent_pb2.DiscoverAgentsRequest())
    assert 0 < len(first.agents) < 70 and first.next_page_token
    assert first.total_size == 70 and first.ByteSize() <= limit

    found = [a.agent_id for a in first.agents]
    token = first.next_page_token
    while token:
        page = await node.agents.DiscoverAgents(agent_pb2.DiscoverAgentsRequest(page_token=token))
        assert page.agents and page.ByteSize() <= limit
        found += [a.agent_id for a in page.agents]
        token = page.next_page_token
    assert sorted(found) == sorted(registered)
