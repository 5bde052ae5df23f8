"""Load-balancing strategies: which one of the eligible agents gets a task.

Pure functions over :class:`Candidate` snapshots, with no Redis and no protobuf. The caller
picks the eligible agents (every one has a free slot: the least loaded few of them,
``dispatch.slots.CANDIDATES_PER_TASK``, so that a choice costs the same among ten agents or
ten thousand), loads and saves the cluster-wide :class:`BalancerState`, and turns the
chosen candidate into an assignment.

Every choice is deterministic: the same candidates, state and arguments choose the same agent
on every coordinator node, whatever order the candidates come in. Ties go to the *least
connections order*: slot use (``active_tasks / max_concurrency``) ascending, then
``active_tasks`` ascending, then the *task's pick*: the agents equal in everything else,
in ``agent_id`` order, are indexed by a hash of ``tie_key`` (the task's id) modulo their
number. Each task then picks among the equal agents as a fair die would, so they share the
work evenly (ties broken by ``agent_id`` sent nearly every task to the lowest ids whenever
agents were idle), every node still makes the same choice for the same task, and a choice
among k tied agents costs one hash and a sort of k ids (a hash per agent, as rendezvous
hashing would take, cost seconds per thousand tasks among thousands of idle agents).

LEAST_CONNECTIONS
    Lowest slot use, in the least connections order. Slot use is relative: an agent using 1 of 4
    slots is less loaded than one using 1 of 2, so it wins even with the same absolute count.
    Among idle agents (or any equally loaded ones) the task's pick spreads the tasks.
ROUND_ROBIN
    Candidates in ``agent_id`` order; choose the first ``agent_id`` strictly greater than
    ``state.round_robin_last``, wrapping to the smallest, and remember it. Remembering an id
    rather than a position keeps the rotation fair when agents join or leave between calls.
WEIGHTED_ROUND_ROBIN
    nginx's smooth weighted round robin: every candidate's current weight grows by its weight,
    the highest current weight is chosen (tie: ``agent_id``) and loses the total weight of the
    candidates. With a fixed set, every ``sum(weights)`` picks (for integer weights) choose each
    agent exactly ``weight`` times, interleaved rather than in bursts. Agents that are no longer
    candidates are dropped from ``state.weighted_current``; new ones start at 0.
LEAST_RESPONSE_TIME
    Lowest ``avg_duration_ms``. Agents without measurements come first, so that they get
    measured; ties in the least connections order.
RESOURCE_BASED
    Lowest load = max(cpu, memory, slot use); a metric the agent does not report is left out,
    slot use always counts. Ties in the least connections order.
CAPABILITY_BASED
    Most of the task's preferred capabilities among the agent's capabilities; ties in the least
    connections order. Without preferred capabilities this is LEAST_CONNECTIONS.
PREDICTIVE
    Highest expected throughput of good results:
    ``recent_success x 1 / (1 + avg_ms / 1000) x (1 - slot use)``, where ``avg_ms`` of an agent
    without measurements is the median ``avg_duration_ms`` of the candidates that have them
    (0 if none has): an unknown agent is assumed typical, neither shunned nor favoured.
    Ties in the least connections order.
CONSISTENT_HASH
    A hash ring with 64 virtual points per candidate (``{agent_id}#{i}``), each hashed to the
    first 52 bits of its SHA-1 (``ring_hash``: stable across processes, unlike ``hash()``,
    and the hash ``lua/availability_lib.lua`` places the points of the ring kept in Redis
    with); the task goes to the first point clockwise from the hash of ``routing_key``. The
    same key and eligible set give the same agent, and an agent leaving moves only the keys
    it held. An empty ``routing_key`` falls back to LEAST_CONNECTIONS.

ROUND_ROBIN and WEIGHTED_ROUND_ROBIN need no tie-break of their own: they rotate.

A pass lets the assignment script choose for ROUND_ROBIN and for CONSISTENT_HASH with a
routing key (``lua/rotation_lib.lua``: the same rotation by ``agent_id`` and the same ring,
kept in Redis over every agent rather than the few candidates here); the functions here
choose for those when the script found no agent within its walk bound, and for a task
pinned to an agent or wanting a ``min_health_score``.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import statistics
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from coordinator.strategies import Strategy

VIRTUAL_POINTS_PER_AGENT = 64
"""Points of each agent on the consistent hash ring; more points spread keys more evenly."""


@dataclass(frozen=True)
class Candidate:
    """An eligible agent as the balancer sees it (``active_tasks < max_concurrency``)."""

    agent_id: str
    active_tasks: int
    max_concurrency: int
    weight: float
    load_metrics: Mapping[str, float]
    capabilities: frozenset[str]
    avg_duration_ms: float | None
    recent_success: float
    health_score: float

    @property
    def slot_use(self) -> float:
        """Fraction of the agent's slots in use."""
        return self.active_tasks / self.max_concurrency


@dataclass
class BalancerState:
    """Cluster-wide memory of the rotating strategies; persisted by the caller between choices."""

    round_robin_last: str = ""
    weighted_current: dict[str, float] = field(default_factory=dict)


def load_order(candidate: Candidate) -> tuple[float, int]:
    """The least connections order before its tie-break: slot use, then active tasks."""
    return (candidate.slot_use, candidate.active_tasks)


def _best(
    candidates: Sequence[Candidate], rank: Callable[[Candidate], tuple[Any, ...]], tie_key: str
) -> Candidate:
    """The candidate first by ``rank``; among those tied first, the task's pick (see the
    module docstring): one hash of ``tie_key`` whatever their number."""
    ranks = [rank(candidate) for candidate in candidates]
    best_rank = min(ranks)
    best = [c for c, r in zip(candidates, ranks, strict=True) if r == best_rank]
    if len(best) == 1:
        return best[0]
    best.sort(key=_agent_id)
    return best[stable_hash(tie_key) % len(best)]


def _agent_id(candidate: Candidate) -> str:
    return candidate.agent_id


def resource_load(candidate: Candidate) -> float:
    """Highest of slot use and the reported cpu and memory fractions."""
    reported = [
        candidate.load_metrics[name] for name in ("cpu", "memory") if name in candidate.load_metrics
    ]
    return max([candidate.slot_use, *reported])


def expected_score(candidate: Candidate, fallback_avg_ms: float) -> float:
    """PREDICTIVE's score; ``fallback_avg_ms`` stands in for a missing ``avg_duration_ms``."""
    avg_ms = candidate.avg_duration_ms if candidate.avg_duration_ms is not None else fallback_avg_ms
    return candidate.recent_success / (1.0 + avg_ms / 1000.0) * (1.0 - candidate.slot_use)


def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text`` that every process and node computes alike."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def ring_hash(text: str) -> int:
    """A point's place on the consistent hash ring: the first 52 bits of SHA-1 (Redis' Lua
    has SHA-1, and a sorted set's score, a double, holds 52 bits exactly)."""
    return int(hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:13], 16)


@functools.lru_cache(maxsize=256)
def hash_ring(agent_ids: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The ring of ``agent_ids`` (sorted) as parallel tuples: point positions and their owners."""
    points = sorted(
        (ring_hash(f"{agent_id}#{index}"), agent_id)
        for agent_id in agent_ids
        for index in range(VIRTUAL_POINTS_PER_AGENT)
    )
    return tuple(point for point, _ in points), tuple(owner for _, owner in points)


def _least_connections(candidates: Sequence[Candidate], tie_key: str) -> Candidate:
    return _best(candidates, load_order, tie_key)


def _round_robin(candidates: Sequence[Candidate], state: BalancerState) -> Candidate:
    ordered = sorted(candidates, key=lambda c: c.agent_id)
    after_last = [c for c in ordered if c.agent_id > state.round_robin_last]
    chosen = after_last[0] if after_last else ordered[0]
    state.round_robin_last = chosen.agent_id
    return chosen


def _weighted_round_robin(candidates: Sequence[Candidate], state: BalancerState) -> Candidate:
    current = {
        c.agent_id: state.weighted_current.get(c.agent_id, 0.0) + c.weight for c in candidates
    }
    chosen = min(candidates, key=lambda c: (-current[c.agent_id], c.agent_id))
    current[chosen.agent_id] -= sum(c.weight for c in candidates)
    # Rebuilt from the candidates alone, so agents that are no longer eligible are dropped.
    state.weighted_current.clear()
    state.weighted_current.update(current)
    return chosen


def _least_response_time(candidates: Sequence[Candidate], tie_key: str) -> Candidate:
    return _best(
        candidates,
        lambda c: (c.avg_duration_ms is not None, c.avg_duration_ms or 0.0, *load_order(c)),
        tie_key,
    )


def _resource_based(candidates: Sequence[Candidate], tie_key: str) -> Candidate:
    return _best(candidates, lambda c: (resource_load(c), *load_order(c)), tie_key)


def _capability_based(
    candidates: Sequence[Candidate], preferred: Collection[str], tie_key: str
) -> Candidate:
    wanted = frozenset(preferred)
    return _best(candidates, lambda c: (-len(wanted & c.capabilities), *load_order(c)), tie_key)


def _predictive(candidates: Sequence[Candidate], tie_key: str) -> Candidate:
    measured = [c.avg_duration_ms for c in candidates if c.avg_duration_ms is not None]
    fallback_avg_ms = statistics.median(measured) if measured else 0.0
    return _best(
        candidates, lambda c: (-expected_score(c, fallback_avg_ms), *load_order(c)), tie_key
    )


def _consistent_hash(candidates: Sequence[Candidate], routing_key: str, tie_key: str) -> Candidate:
    if not routing_key:
        return _least_connections(candidates, tie_key)
    by_id = {c.agent_id: c for c in candidates}
    points, owners = hash_ring(tuple(sorted(by_id)))
    # bisect_right: a key hashing exactly onto a point belongs to that point's successor,
    # which is as good as any fixed rule; the modulo wraps past the last point.
    index = bisect.bisect_right(points, ring_hash(routing_key)) % len(points)
    return by_id[owners[index]]


def choose(
    strategy: Strategy,
    candidates: Sequence[Candidate],
    state: BalancerState,
    *,
    preferred_capabilities: Collection[str] = (),
    routing_key: str = "",
    tie_key: str = "",
) -> Candidate:
    """The candidate that ``strategy`` chooses; see the module docstring for each strategy.
    ``tie_key`` (the task's id) breaks ties between equally good agents: give each task its
    own, or equal agents do not share the work.

    Raises ValueError on an empty candidate list. Mutates ``state`` for ROUND_ROBIN and
    WEIGHTED_ROUND_ROBIN only; the caller persists it.
    """
    if not candidates:
        raise ValueError("no candidates to choose from")
    match strategy:
        case Strategy.LEAST_CONNECTIONS:
            return _least_connections(candidates, tie_key)
        case Strategy.ROUND_ROBIN:
            return _round_robin(candidates, state)
        case Strategy.WEIGHTED_ROUND_ROBIN:
            return _weighted_round_robin(candidates, state)
        case Strategy.LEAST_RESPONSE_TIME:
            return _least_response_time(candidates, tie_key)
        case Strategy.RESOURCE_BASED:
            return _resource_based(candidates, tie_key)
        case Strategy.CAPABILITY_BASED:
            return _capability_based(candidates, preferred_capabilities, tie_key)
        case Strategy.PREDICTIVE:
            return _predictive(candidates, tie_key)
        case Strategy.CONSISTENT_HASH:
            return _consistent_hash(candidates, routing_key, tie_key)
