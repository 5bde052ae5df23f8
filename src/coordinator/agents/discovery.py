"""Discovery: the agents that match a query, best health first, one page at a time.

The indexes narrow the candidates down in one script (``lua/discover_agents.lua``); each
candidate is then checked against the whole query here. Page tokens carry the last agent's
place in the order and the query's fingerprint (``coordinator.storage.page_tokens``).
"""

from __future__ import annotations

from collections.abc import Callable

from coordinator.agents.record_codec import RECORD_FIELDS, RecordDecoder
from coordinator.agents.records import AgentRecord, AgentStatus, DiscoverPage, DiscoverQuery
from coordinator.agents.script_calls import DiscoverAgents, run
from coordinator.storage import keys, page_tokens
from coordinator.storage.scripts import Scripts


class AgentDiscovery:
    """Discovery over the registry's records, decoded by the registry's decoder."""

    def __init__(self, scripts: Scripts, decoder: RecordDecoder, liveness_timeout_ms: int):
        self._scripts = scripts
        self._decoder = decoder
        self._liveness_timeout_ms = liveness_timeout_ms

    async def page(
        self,
        query: DiscoverQuery,
        *,
        item_bytes: Callable[[AgentRecord], int] | None = None,
        max_page_bytes: int = 0,
    ) -> DiscoverPage:
        """Agents matching ``query``, best health first, then by id, one page at a time.
        With ``item_bytes`` (what an agent adds to the reply), a page also ends before its
        items would exceed ``max_page_bytes``, though it always holds one agent when any
        remains; the next_page_token then continues right after the last agent returned."""
        fingerprint = _fingerprint(query)
        after = page_tokens.decode(query.page_token, fingerprint)
        matches = await self._matches(query)
        remaining = matches if after is None else [a for a in matches if _order(a) > after]
        page = _within_bytes(remaining[: query.page_size], item_bytes, max_page_bytes)
        more = len(remaining) > len(page)
        return DiscoverPage(
            agents=page,
            next_page_token=page_tokens.encode(_order(page[-1]), fingerprint) if more else "",
            total_size=len(matches),
        )

    async def _matches(self, query: DiscoverQuery) -> list[AgentRecord]:
        """Every agent matching ``query``, in discovery order."""
        discovered = await run(
            self._scripts.discover_agents,
            DiscoverAgents(
                stored_statuses=[
                    AgentStatus[name]
                    for name in keys.STORED_STATUSES
                    if AgentStatus[name] in query.statuses
                ],
                include_inactive=AgentStatus.INACTIVE in query.statuses,
                filter_keys=_filter_keys(query),
                liveness_timeout_ms=self._liveness_timeout_ms,
                record_fields=RECORD_FIELDS,
            ),
        )
        now_ms = discovered.now_ms
        decoded = (self._decoder.decode_json_row(raw, now_ms) for raw in discovered.json_rows)
        matches = [agent for agent in decoded if agent is not None and _matches(agent, query)]
        matches.sort(key=_order)
        return matches


def _filter_keys(query: DiscoverQuery) -> list[str]:
    """The index sets every candidate of ``query`` is in (type, capabilities, services, labels)."""
    return [
        *([keys.type_index(query.agent_type)] if query.agent_type else []),
        *(keys.capability_index(c) for c in query.capabilities),
        *(keys.service_index(s) for s in query.services),
        *(keys.label_index(k, v) for k, v in sorted(query.labels.items())),
    ]


def _matches(agent: AgentRecord, query: DiscoverQuery) -> bool:
    """The full check of one candidate (the indexes only narrow the candidates down)."""
    return agent.status in query.statuses and agent.matches(
        agent_type=query.agent_type,
        capabilities=query.capabilities,
        services=query.services,
        labels=query.labels,
        min_health_score=query.min_health_score,
    )


def _within_bytes(
    agents: list[AgentRecord], item_bytes: Callable[[AgentRecord], int] | None, max_bytes: int
) -> list[AgentRecord]:
    """The longest head of ``agents`` whose items fit in ``max_bytes`` (at least one)."""
    if item_bytes is None:
        return agents
    total = 0
    for index, agent in enumerate(agents):
        total += item_bytes(agent)
        if index and total > max_bytes:
            return agents[:index]
    return agents


def _order(agent: AgentRecord) -> tuple[float, str]:
    """Discovery order: best health first, then agent_id."""
    return (-agent.health_score, agent.agent_id)


def _fingerprint(query: DiscoverQuery) -> str:
    return page_tokens.fingerprint(
        [
            sorted(s.name for s in query.statuses),
            query.agent_type,
            sorted(query.capabilities),
            sorted(query.services),
            sorted(query.labels.items()),
            query.min_health_score,
        ]
    )
