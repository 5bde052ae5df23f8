"""The health score formula, pinned: a change to it must change these numbers on purpose."""

import pytest

from coordinator.agents.health_score import freshness, health_score, pressure
from coordinator.agents.records import AgentStatus

TIMING = {"heartbeat_interval_s": 10.0, "liveness_timeout_s": 30.0}


def score(**kw):
    args = {
        "status": AgentStatus.ACTIVE,
        "heartbeat_age_s": 0.0,
        "active_tasks": 0,
        "max_concurrency": 4,
        "load_metrics": {},
        **TIMING,
        **kw,
    }
    return health_score(**args)


def test_fresh_idle_active_agent_scores_one():
    assert score() == 1.0


@pytest.mark.parametrize(
    ("age_s", "expected"),
    [(0.0, 1.0), (10.0, 1.0), (15.0, 0.75), (20.0, 0.5), (29.0, 0.05), (30.0, 0.0), (99.0, 0.0)],
)
def test_freshness_is_flat_for_one_interval_then_decays_linearly_to_the_timeout(age_s, expected):
    assert freshness(age_s, 10.0, 30.0) == pytest.approx(expected)
    assert score(heartbeat_age_s=age_s) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (AgentStatus.ACTIVE, 1.0),
        (AgentStatus.BUSY, 0.5),
        (AgentStatus.INACTIVE, 0.0),
        (AgentStatus.MAINTENANCE, 0.0),
        (AgentStatus.ERROR, 0.0),
    ],
)
def test_status_factor(status, expected):
    assert score(status=status) == expected


def test_pressure_is_the_highest_of_slot_use_cpu_and_memory():
    assert pressure(1, 4, {}) == 0.25
    assert pressure(1, 4, {"cpu": 0.6, "memory": 0.3}) == 0.6
    assert pressure(4, 4, {"cpu": 0.1}) == 1.0
    assert pressure(0, 4, {"gpu_temp_c": 80.0}) == 0.0  # other metrics do not count
    assert pressure(9, 4, {}) == 1.0  # clamped


def test_full_load_halves_the_score_and_failures_lower_it():
    assert score(active_tasks=4) == 0.5
    assert score(load_metrics={"cpu": 0.5}) == 0.75
    assert score(recent_failure_rate=1.0) == 0.5
    assert score(active_tasks=2, recent_failure_rate=0.5) == 0.5625  # 0.75 * 0.75


def test_combined_and_rounded_to_four_places():
    # 0.9 freshness x 0.5 busy x (1 - 0.5 x 0.3 memory)
    assert (
        score(heartbeat_age_s=12.0, status=AgentStatus.BUSY, load_metrics={"memory": 0.3}) == 0.3825
    )
    assert score(heartbeat_age_s=10.0 + 20.0 / 3) == 0.6667  # freshness 2/3
