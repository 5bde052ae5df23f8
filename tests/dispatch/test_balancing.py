"""The load-balancing strategies. Each scenario has exactly one right answer, and the tie-breaks
are pinned because every coordinator node must make the same choice."""

from collections import Counter

import pytest

from coordinator.dispatch.balancing import (
    BalancerState,
    Candidate,
    choose,
    hash_ring,
)
from coordinator.strategies import Strategy


def agent(agent_id: str, **kw) -> Candidate:
    """An idle candidate with no measurements; ``kw`` overrides any field."""
    fields = {
        "agent_id": agent_id,
        "active_tasks": 0,
        "max_concurrency": 4,
        "weight": 1.0,
        "load_metrics": {},
        "capabilities": frozenset(),
        "avg_duration_ms": None,
        "recent_success": 1.0,
        "health_score": 1.0,
        **kw,
    }
    return Candidate(**fields)


def pick(strategy: Strategy, candidates, state=None, **kw) -> str:
    return choose(strategy, candidates, state or BalancerState(), **kw).agent_id


def run_of(strategy: Strategy, candidates, state: BalancerState, picks: int) -> list[str]:
    return [pick(strategy, candidates, state) for _ in range(picks)]


# --------------------------------------------------------------------------- parse, errors


@pytest.mark.parametrize("strategy", list(Strategy))
def test_parse_accepts_the_lower_and_upper_case_name(strategy):
    assert Strategy.parse(strategy.name.lower()) is strategy
    assert Strategy.parse(strategy.name) is strategy


@pytest.mark.parametrize("text", ["fastest", "", "least connections", "1"])
def test_parse_rejects_an_unknown_name_and_lists_the_valid_ones(text):
    with pytest.raises(ValueError, match="least_connections") as raised:
        Strategy.parse(text)
    assert repr(text) in str(raised.value)
    assert all(member.name.lower() in str(raised.value) for member in Strategy)


@pytest.mark.parametrize("strategy", list(Strategy))
def test_no_candidates_is_an_error_and_leaves_the_state_alone(strategy):
    state = BalancerState(round_robin_last="b", weighted_current={"b": 1.0})
    with pytest.raises(ValueError, match="no candidates"):
        choose(strategy, [], state, routing_key="key")
    assert state == BalancerState(round_robin_last="b", weighted_current={"b": 1.0})


# --------------------------------------------------------------------------- every strategy

MIXED = [
    agent("a", active_tasks=2, max_concurrency=4, weight=2.0, avg_duration_ms=300.0),
    agent("b", active_tasks=1, max_concurrency=2, load_metrics={"cpu": 0.1}),
    agent("c", active_tasks=0, max_concurrency=1, capabilities=frozenset({"gpu"})),
    agent("d", active_tasks=1, max_concurrency=8, avg_duration_ms=300.0, recent_success=0.8),
    agent("e", active_tasks=1, max_concurrency=8, load_metrics={"memory": 0.9}),
]


@pytest.mark.parametrize("strategy", list(Strategy))
def test_the_choice_does_not_depend_on_the_order_of_the_candidates(strategy):
    """Nodes read the eligible agents in different orders; they must still agree."""
    for start in range(len(MIXED)):
        rotated = MIXED[start:] + MIXED[:start]
        for candidates in (rotated, rotated[::-1]):
            assert pick(strategy, candidates, routing_key="task-1") == pick(
                strategy, MIXED, routing_key="task-1"
            )


@pytest.mark.parametrize(
    "strategy",
    [s for s in Strategy if s not in (Strategy.ROUND_ROBIN, Strategy.WEIGHTED_ROUND_ROBIN)],
)
def test_only_the_rotating_strategies_change_the_state(strategy):
    state = BalancerState()
    choose(strategy, MIXED, state, preferred_capabilities=("gpu",), routing_key="task-1")
    assert state == BalancerState()


# --------------------------------------------------------------------------- least connections


def test_least_connections_compares_slot_use_not_absolute_counts():
    # "aa" has fewer active tasks and the smaller id, but uses half its slots against a quarter.
    candidates = [
        agent("aa", active_tasks=1, max_concurrency=2),
        agent("zz", active_tasks=2, max_concurrency=8),
    ]
    assert pick(Strategy.LEAST_CONNECTIONS, candidates) == "zz"


def test_least_connections_tie_on_slot_use_goes_to_fewer_active_tasks_then_the_task_hash():
    # "a" and "b" both at 1/4; "b" has fewer active tasks in absolute terms.
    candidates = [
        agent("a", active_tasks=2, max_concurrency=8),
        agent("b", active_tasks=1, max_concurrency=4),
    ]
    assert pick(Strategy.LEAST_CONNECTIONS, candidates, tie_key="task-1") == "b"
    # Twins: the task's pick decides (a hash of the task id indexes them in agent_id order),
    # the same on every node (pinned: a hash that changed between releases would split a
    # mixed-version cluster's choices), and another task may pick the other one.
    twins = [agent("y", active_tasks=1), agent("x", active_tasks=1)]
    assert [pick(Strategy.LEAST_CONNECTIONS, twins, tie_key=f"task-{i}") for i in range(6)] == [
        "x",
        "y",
        "y",
        "x",
        "y",
        "y",
    ]


# The strategies that rank agents, and so can tie; the rotating ones take turns instead.
RANKING = [s for s in Strategy if s not in (Strategy.ROUND_ROBIN, Strategy.WEIGHTED_ROUND_ROBIN)]


@pytest.mark.parametrize("strategy", RANKING)
def test_equal_agents_share_the_tasks_evenly(strategy):
    """Issue 14, defect 11: ties by agent id sent nearly every task to the lowest ids. 2,000
    light tasks to 12 idle agents (each finished before the next arrives): the busiest gets
    at most 1.5x the mean (a fair die gets about 1.2x)."""
    idle = [agent(f"agent-{i:02d}", capabilities=frozenset({"gpu"})) for i in range(12)]
    per_agent = Counter(
        pick(strategy, idle, tie_key=f"task-{n}", preferred_capabilities=("gpu",))
        for n in range(2000)
    )
    assert len(per_agent) == 12
    assert max(per_agent.values()) <= 1.5 * 2000 / 12, per_agent


def test_a_tie_is_broken_alike_whatever_the_order_of_the_candidates():
    idle = [agent(f"agent-{i:02d}") for i in range(12)]
    for n in range(50):
        key = f"task-{n}"
        assert pick(Strategy.LEAST_CONNECTIONS, idle[::-1], tie_key=key) == pick(
            Strategy.LEAST_CONNECTIONS, idle, tie_key=key
        )


# --------------------------------------------------------------------------- round robin


def test_round_robin_cycles_through_all_agents_in_agent_id_order():
    candidates = [agent("c"), agent("a"), agent("b")]
    state = BalancerState()
    assert run_of(Strategy.ROUND_ROBIN, candidates, state, 7) == ["a", "b", "c", "a", "b", "c", "a"]
    assert state.round_robin_last == "a"


def test_round_robin_ignores_load():
    # Least connections would choose "b" every time.
    candidates = [agent("a", active_tasks=3), agent("b")]
    assert run_of(Strategy.ROUND_ROBIN, candidates, BalancerState(), 4) == ["a", "b", "a", "b"]


def test_round_robin_survives_the_eligible_set_changing():
    state = BalancerState(round_robin_last="b")
    # "b" left: rotation continues after where it was rather than restarting.
    assert pick(Strategy.ROUND_ROBIN, [agent("a"), agent("c"), agent("d")], state) == "c"
    # "bb" joined behind the rotation: it gets its turn after the wrap, in id order.
    joined = [agent("a"), agent("bb"), agent("c"), agent("d")]
    assert run_of(Strategy.ROUND_ROBIN, joined, state, 4) == ["d", "a", "bb", "c"]
    # The last chosen agent is gone and was the largest id: wrap to the smallest.
    state = BalancerState(round_robin_last="z")
    assert pick(Strategy.ROUND_ROBIN, [agent("b"), agent("a")], state) == "a"


# --------------------------------------------------------------------------- weighted round robin


def test_weighted_round_robin_is_nginx_smooth_sequence():
    # nginx's own example: weights 5, 1, 1 give {a, a, b, a, c, a, a}, not a burst of five "a".
    candidates = [agent("a", weight=5.0), agent("b", weight=1.0), agent("c", weight=1.0)]
    assert (
        "".join(run_of(Strategy.WEIGHTED_ROUND_ROBIN, candidates, BalancerState(), 7)) == "aabacaa"
    )


@pytest.mark.parametrize(
    "weights",
    [
        {"a": 3.0, "b": 2.0, "c": 1.0},
        {"a": 1.0, "b": 1.0},
        {"a": 0.5, "b": 1.5},
        {"x": 4.0, "y": 7.0, "z": 2.0},
    ],
)
def test_weighted_round_robin_picks_in_exact_proportion_and_interleaved(weights):
    candidates = [agent(agent_id, weight=weight) for agent_id, weight in weights.items()]
    total = sum(weights.values())
    picks = int(2 * total)
    chosen = run_of(Strategy.WEIGHTED_ROUND_ROBIN, candidates, BalancerState(), picks)
    assert Counter(chosen) == {a: picks * w / total for a, w in weights.items()}
    # Interleaved: after every pick, each agent is within one pick of its fair share. A
    # bursty weighted round robin ("aaabbc") breaks this after the third pick.
    for n in range(1, picks + 1):
        counts = Counter(chosen[:n])
        for agent_id, weight in weights.items():
            assert abs(counts[agent_id] - n * weight / total) < 1, (n, chosen[:n])


def test_weighted_round_robin_state_carries_between_calls_and_drops_departed_agents():
    state = BalancerState()
    both = [agent("a", weight=2.0), agent("b", weight=1.0)]
    assert pick(Strategy.WEIGHTED_ROUND_ROBIN, both, state) == "a"
    assert state.weighted_current == {"a": -1.0, "b": 1.0}
    # Without the stored current weights "a" (the heavier) would be chosen again.
    assert pick(Strategy.WEIGHTED_ROUND_ROBIN, both, state) == "b"
    assert pick(Strategy.WEIGHTED_ROUND_ROBIN, both, state) == "a"
    assert state.weighted_current == {"a": 0.0, "b": 0.0}
    # "a" left and "c" joined (starting from 0): "a" is forgotten, not kept at its value.
    state.weighted_current["a"] = 5.0
    assert pick(Strategy.WEIGHTED_ROUND_ROBIN, [agent("c"), agent("b")], state) == "b"
    assert state.weighted_current == {"b": -1.0, "c": 1.0}


def test_weighted_round_robin_ties_go_to_agent_id_whatever_the_load():
    candidates = [agent("b"), agent("a", active_tasks=3)]
    assert run_of(Strategy.WEIGHTED_ROUND_ROBIN, candidates, BalancerState(), 2) == ["a", "b"]


# --------------------------------------------------------------------------- least response time


def test_least_response_time_chooses_the_fastest_even_if_busier():
    candidates = [
        agent("a", avg_duration_ms=120.0),
        agent("b", avg_duration_ms=80.0, active_tasks=3),
        agent("c", avg_duration_ms=95.0, active_tasks=1),
    ]
    assert pick(Strategy.LEAST_RESPONSE_TIME, candidates) == "b"


def test_least_response_time_measures_unmeasured_agents_first():
    candidates = [agent("a", avg_duration_ms=1.0), agent("b", active_tasks=2)]
    assert pick(Strategy.LEAST_RESPONSE_TIME, candidates) == "b"


def test_least_response_time_ties_go_to_least_connections():
    unmeasured = [
        agent("a", active_tasks=2),
        agent("b", active_tasks=1),
        agent("c", avg_duration_ms=1.0),
    ]
    assert pick(Strategy.LEAST_RESPONSE_TIME, unmeasured) == "b"
    equal = [agent("a", avg_duration_ms=50.0, active_tasks=1), agent("b", avg_duration_ms=50.0)]
    assert pick(Strategy.LEAST_RESPONSE_TIME, equal) == "b"


# --------------------------------------------------------------------------- resource based


def test_resource_based_chooses_the_lowest_of_the_highest_pressures():
    candidates = [
        agent("a", load_metrics={"cpu": 0.9}),  # 0.9
        agent("b", load_metrics={"cpu": 0.2, "memory": 0.3}, active_tasks=1),  # 0.3
        agent("c", load_metrics={"memory": 0.35}),  # 0.35
    ]
    assert pick(Strategy.RESOURCE_BASED, candidates) == "b"


def test_resource_based_always_counts_slot_use():
    # "a" reports a nearly idle machine but three of its four slots are taken.
    candidates = [
        agent("a", load_metrics={"cpu": 0.1}, active_tasks=3),
        agent("b", load_metrics={"cpu": 0.5}),
    ]
    assert pick(Strategy.RESOURCE_BASED, candidates) == "b"


def test_resource_based_ignores_absent_and_unknown_metrics():
    # "a" reports nothing: its load is its slot use 0.5, not a pessimistic 1. "gpu" is not a
    # load metric the balancer knows, so it does not count against "b".
    candidates = [agent("a", active_tasks=2), agent("b", load_metrics={"cpu": 0.4, "gpu": 0.99})]
    assert pick(Strategy.RESOURCE_BASED, candidates) == "b"
    candidates = [agent("a", active_tasks=2), agent("b", load_metrics={"cpu": 0.6})]
    assert pick(Strategy.RESOURCE_BASED, candidates) == "a"


def test_resource_based_ties_go_to_least_connections():
    candidates = [
        agent("a", load_metrics={"cpu": 0.5}, active_tasks=1),
        agent("b", load_metrics={"memory": 0.5}),
    ]
    assert pick(Strategy.RESOURCE_BASED, candidates) == "b"


# --------------------------------------------------------------------------- capability based


def test_capability_based_chooses_the_most_preferred_capabilities_over_load():
    candidates = [
        agent("a", capabilities=frozenset({"gpu"})),
        agent("b", capabilities=frozenset({"gpu", "cuda"}), active_tasks=3),
        agent("c", capabilities=frozenset({"x", "y", "z", "w"})),  # many, none preferred
    ]
    assert (
        pick(Strategy.CAPABILITY_BASED, candidates, preferred_capabilities=["gpu", "cuda"]) == "b"
    )


def test_capability_based_ties_and_no_preference_go_to_least_connections():
    candidates = [
        agent("a", capabilities=frozenset({"gpu"}), active_tasks=2),
        agent("b", capabilities=frozenset({"cuda"}), active_tasks=1),
        agent("c", active_tasks=0),
    ]
    assert (
        pick(Strategy.CAPABILITY_BASED, candidates, preferred_capabilities={"gpu", "cuda"}) == "b"
    )
    assert pick(Strategy.CAPABILITY_BASED, candidates) == "c"


# --------------------------------------------------------------------------- predictive


def test_predictive_weighs_success_speed_and_free_slots():
    candidates = [
        agent("a", avg_duration_ms=1000.0, recent_success=1.0),  # 0.5
        agent("b", avg_duration_ms=0.0, recent_success=0.9, active_tasks=2),  # 0.45
        agent("c", avg_duration_ms=250.0, recent_success=0.7),  # 0.56
        agent("d", avg_duration_ms=0.0, recent_success=0.55),  # 0.55
    ]
    assert pick(Strategy.PREDICTIVE, candidates) == "c"


def test_predictive_assumes_the_median_duration_for_an_unmeasured_agent():
    # Measured durations 0, 1000, 5000: median 1000 (mean 2000). "new" then scores 0.5,
    # ahead of "fast" at 0.4; with the mean it would score 0.33 and lose.
    measured = [
        agent("fast", avg_duration_ms=0.0, recent_success=0.4),
        agent("mid", avg_duration_ms=1000.0, active_tasks=2),  # 0.25
        agent("slow", avg_duration_ms=5000.0),  # 0.17
    ]
    assert pick(Strategy.PREDICTIVE, [*measured, agent("new")]) == "new"
    # Measured 0, 1000, 1000: still median 1000, and "fast" at 0.6 now beats "new" at 0.5,
    # which would win at 1.0 if a missing duration counted as instant.
    measured[0] = agent("fast", avg_duration_ms=0.0, recent_success=0.6)
    measured[2] = agent("slow", avg_duration_ms=1000.0, active_tasks=2)
    assert pick(Strategy.PREDICTIVE, [*measured, agent("new")]) == "fast"


def test_predictive_without_any_measurement_ranks_by_success_and_free_slots():
    candidates = [agent("a", recent_success=1.0, active_tasks=1), agent("b", recent_success=0.9)]
    assert pick(Strategy.PREDICTIVE, candidates) == "b"  # 0.9 against 0.75


def test_predictive_ties_go_to_least_connections():
    # Equal scores (same slot use); "b" has fewer active tasks.
    candidates = [
        agent("a", active_tasks=2, max_concurrency=8),
        agent("b", active_tasks=1, max_concurrency=4),
    ]
    assert pick(Strategy.PREDICTIVE, candidates) == "b"


# --------------------------------------------------------------------------- consistent hash

TEN = [agent(f"agent-{index}") for index in range(10)]
KEYS = [f"task-{index}" for index in range(1000)]


def owners(candidates) -> dict[str, str]:
    return {key: pick(Strategy.CONSISTENT_HASH, candidates, routing_key=key) for key in KEYS}


def test_consistent_hash_is_pinned_across_processes_and_versions():
    # Nodes running different processes (or releases) must route a key alike; this fails if
    # the ring is built with hash() (salted per process) or its point scheme changes. (They
    # changed once, when the ring moved into Redis and its hash from BLAKE2b to SHA-1.)
    assert pick(Strategy.CONSISTENT_HASH, TEN, routing_key="task-42") == "agent-0"
    assert pick(Strategy.CONSISTENT_HASH, TEN, routing_key="order-7") == "agent-8"


def test_consistent_hash_spreads_keys_over_every_agent():
    per_agent = Counter(owners(TEN).values())
    assert set(per_agent) == {c.agent_id for c in TEN}
    assert max(per_agent.values()) < 200  # 64 points each: no agent holds twice its share


def test_removing_an_agent_moves_only_the_keys_it_held():
    before = owners(TEN)
    after = owners([c for c in TEN if c.agent_id != "agent-3"])
    moved = {key for key in KEYS if before[key] != after[key]}
    held = {key for key in KEYS if before[key] == "agent-3"}
    assert held  # otherwise the check below proves nothing
    assert moved == held


def test_adding_an_agent_takes_keys_only_for_itself():
    before = owners(TEN)
    after = owners([*TEN, agent("agent-10")])
    moved = {key for key in KEYS if before[key] != after[key]}
    assert moved
    assert all(after[key] == "agent-10" for key in moved)


def test_consistent_hash_ignores_load_and_reuses_the_ring():
    hash_ring.cache_clear()
    busy = [agent("a", active_tasks=3), agent("b"), agent("c")]
    for key in KEYS[:50]:
        assert pick(Strategy.CONSISTENT_HASH, busy, routing_key=key) == pick(
            Strategy.CONSISTENT_HASH, busy[::-1], routing_key=key
        )
    # The busy agent keeps its keys: least connections would never choose it.
    assert "a" in {pick(Strategy.CONSISTENT_HASH, busy, routing_key=key) for key in KEYS[:50]}
    assert hash_ring.cache_info().misses == 1  # keyed by sorted ids, not candidate order


def test_consistent_hash_without_a_routing_key_is_least_connections():
    candidates = [
        agent("a", active_tasks=2),
        agent("b", active_tasks=3),
        agent("c", active_tasks=1, max_concurrency=8),
    ]
    # The ring would place "" on "b".
    assert pick(Strategy.CONSISTENT_HASH, candidates, routing_key="") == "c"
