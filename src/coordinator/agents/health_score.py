"""The agent health score: one number in [0, 1] computed at read time.

    health = freshness x status_factor x capacity_factor x reliability_factor

freshness
    1 while the last heartbeat is at most one heartbeat interval old, then falling linearly to
    0 at the liveness timeout. A missed heartbeat therefore lowers the score before the agent
    is declared INACTIVE, and the score decays between heartbeats without any writer.
status_factor
    ACTIVE 1, BUSY 0.5, INACTIVE / MAINTENANCE / ERROR 0 (not available for work).
capacity_factor
    1 - 0.5 x pressure, where pressure in [0, 1] is the highest of slot use
    (active_tasks / max_concurrency) and the reported ``cpu`` and ``memory`` fractions. A fully
    loaded agent keeps half its score: it is healthy, just busy.
reliability_factor
    1 - 0.5 x recent_failure_rate (fraction of recent task attempts that failed, 0 when unknown).

The result is rounded to 4 decimal places so that every node reports the same digits.
"""

from __future__ import annotations

from coordinator.agents.records import AgentStatus

STATUS_FACTORS = {
    AgentStatus.ACTIVE: 1.0,
    AgentStatus.BUSY: 0.5,
    AgentStatus.INACTIVE: 0.0,
    AgentStatus.MAINTENANCE: 0.0,
    AgentStatus.ERROR: 0.0,
}

LOAD_METRICS_AS_FRACTIONS = ("cpu", "memory")
"""Load metric names whose values are fractions from 0 to 1 and feed the score."""


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))


def freshness(
    heartbeat_age_s: float, heartbeat_interval_s: float, liveness_timeout_s: float
) -> float:
    """1 up to one heartbeat interval, then linear decay to 0 at the liveness timeout."""
    if heartbeat_age_s <= heartbeat_interval_s:
        return 1.0
    span = liveness_timeout_s - heartbeat_interval_s
    return _clamp(1.0 - (heartbeat_age_s - heartbeat_interval_s) / span)


def pressure(active_tasks: int, max_concurrency: int, load_metrics: dict[str, float]) -> float:
    """Highest of slot use and the reported cpu and memory fractions, in [0, 1]."""
    slot_use = active_tasks / max_concurrency if max_concurrency > 0 else 1.0
    reported = [load_metrics[name] for name in LOAD_METRICS_AS_FRACTIONS if name in load_metrics]
    return _clamp(max([slot_use, *reported]))


def health_score(
    *,
    status: AgentStatus,
    heartbeat_age_s: float,
    heartbeat_interval_s: float,
    liveness_timeout_s: float,
    active_tasks: int,
    max_concurrency: int,
    load_metrics: dict[str, float],
    recent_failure_rate: float = 0.0,
) -> float:
    """The health score of an agent; see the module docstring for the formula."""
    score = (
        freshness(heartbeat_age_s, heartbeat_interval_s, liveness_timeout_s)
        * STATUS_FACTORS[status]
        * (1.0 - 0.5 * pressure(active_tasks, max_concurrency, load_metrics))
        * (1.0 - 0.5 * _clamp(recent_failure_rate))
    )
    return round(score, 4)
