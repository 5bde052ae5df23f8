"""Replies joined from serialized entries (ListTasks, DiscoverAgents): each item is
serialized once and the handler returns the bytes (``api/serialized_replies.py`` lets them
through the method's serializer). Protobuf parses concatenated encodings as one message,
the repeated field's entries in order, so a reply is its entries' bytes, joined, then the
encoding of its other fields.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

from aitbc.coordinator.v1 import agent_pb2, task_pb2
from coordinator.agents.records import AgentRecord
from coordinator.api import wire
from coordinator.tasks.models import Task


def discover_reply(agents: Sequence[AgentRecord], next_page_token: str, total_size: int) -> bytes:
    """A DiscoverAgentsResponse, serialized: the handler returns it as it is
    (``api/serialized_replies.py``).

    An AgentRecord is immutable, and the registry hands out the same AgentRecord object for a record that
    has not changed (``AgentRegistry._decode_row``). So each agent's entry of the reply's
    ``agents`` field is serialized once and kept while that object lives, and a discovery
    that finds the same agents again joins their bytes: protobuf parses concatenated
    encodings as one message, the repeated field's entries in order. Copying 50 kept
    messages into a reply and serializing it took about a third of a discovery's node time.
    """
    rest = agent_pb2.DiscoverAgentsResponse(next_page_token=next_page_token, total_size=total_size)
    return b"".join([*(_agent_entry(agent) for agent in agents), rest.SerializeToString()])


def discover_entry_bytes(agent: AgentRecord) -> int:
    """What ``agent`` adds to a DiscoverAgentsResponse, in bytes (its kept entry's size)."""
    return len(_agent_entry(agent))


_agent_entries: dict[int, tuple[weakref.ref[AgentRecord], bytes]] = {}
"""id(agent) -> (a weak reference to the agent, the serialized DiscoverAgentsResponse that
holds only that agent), for as long as the agent lives."""


def _agent_entry(agent: AgentRecord) -> bytes:
    key = id(agent)
    entry = _agent_entries.get(key)
    if entry is not None and entry[0]() is agent:
        return entry[1]
    data = agent_pb2.DiscoverAgentsResponse(agents=[wire.agent_to_proto(agent)]).SerializeToString()
    # The entry goes when the agent does, before its id can be given to another object.
    _agent_entries[key] = (weakref.ref(agent, lambda _: _agent_entries.pop(key, None)), data)
    return data


def list_tasks_entry(task: Task) -> bytes:
    """One task as an entry of a ListTasksResponse's ``tasks``, serialized: the handler
    measures its page with these and joins them (``list_tasks_reply``), so each task is
    serialized once (copying messages into a reply and serializing it does it again)."""
    raw = wire.task_to_proto(task).SerializeToString()
    return _LIST_TASKS_TAG + _varint(len(raw)) + raw


def list_tasks_reply(entries: Sequence[bytes], next_page_token: str) -> bytes:
    """A ListTasksResponse, serialized, from ``list_tasks_entry`` entries; the handler
    returns it as it is (``api/serialized_replies.py``)."""
    rest = task_pb2.ListTasksResponse(next_page_token=next_page_token)
    return b"".join([*entries, rest.SerializeToString()])


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# A length-delimited entry (wire type 2) of ListTasksResponse.tasks.
_LIST_TASKS_TAG = _varint(
    task_pb2.ListTasksResponse.DESCRIPTOR.fields_by_name["tasks"].number << 3 | 2
)
