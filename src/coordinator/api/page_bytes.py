"""How many bytes of items a page of ListTasks or DiscoverAgents may carry.

A page ends at ``page_size`` items or where one more item would take the reply over the
node's message limit (``COORDINATOR_MAX_MESSAGE_BYTES``), whichever comes first: valid data
(a few tasks of 900 KiB, agents with large metadata) must never make a listing fail with
RESOURCE_EXHAUSTED. A page still holds at least one item when any remains, so that paging
always moves on; one item fits, given the per-item limits (``COORDINATOR_MAX_TASK_DATA_BYTES``
leaves 64 KiB of the message; 64 metadata entries).
"""

from __future__ import annotations

from coordinator.config import Settings

REPLY_MARGIN_BYTES = 4096
"""Room left for the reply's other fields (next_page_token, total_size) and their tags."""


def page_budget_bytes(settings: Settings) -> int:
    """Most bytes the items of one page may take, serialized as the reply's entries."""
    return max(0, settings.max_message_bytes - REPLY_MARGIN_BYTES)
