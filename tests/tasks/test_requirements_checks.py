"""Requirements checked once per distinct set: ``tasks.validation.checked_requirements`` keeps
valid requirements under their wire form, never invalid ones, and keeps a bounded number."""

from __future__ import annotations

import pytest

from aitbc.coordinator.v1 import task_pb2
from coordinator.api.wire import requirements_fields
from coordinator.tasks import validation as tv
from coordinator.violations import Violations


@pytest.fixture(autouse=True)
def counted(monkeypatch):
    """Each test starts with nothing kept, and counts the full checks made."""
    monkeypatch.setattr(tv, "_valid_requirements", {})
    calls: list[int] = []
    check = tv.requirements

    def counting(**kwargs):
        calls.append(1)
        return check(**kwargs)

    monkeypatch.setattr(tv, "requirements", counting)
    return calls


def of(r: task_pb2.TaskRequirements, v: Violations | None = None):
    return tv.checked_requirements(
        r.SerializeToString(deterministic=True), requirements_fields(r), v or Violations()
    )


def test_valid_requirements_are_checked_once_and_shared(counted):
    r = task_pb2.TaskRequirements(capabilities=["gpu", "gpu"], labels={"zone": "a"})

    first, second = of(r), of(task_pb2.TaskRequirements.FromString(r.SerializeToString()))

    assert first is second and len(counted) == 1
    assert first.capabilities == ("gpu",) and first.labels == {"zone": "a"}
    assert of(task_pb2.TaskRequirements(capabilities=["cpu"])).capabilities == ("cpu",)
    assert len(counted) == 2


def test_invalid_requirements_are_refused_every_time(counted):
    r = task_pb2.TaskRequirements(agent_id="no spaces!", min_health_score=2)
    for _ in range(3):
        v = Violations()
        of(r, v)
        assert [item.field for item in v.items] == [
            "requirements.agent_id",
            "requirements.min_health_score",
        ]
    assert len(counted) == 3


def test_a_violation_found_before_does_not_stop_valid_ones_being_kept(counted):
    v = Violations()
    v.add("priority", "unknown")
    r = task_pb2.TaskRequirements(services=["s1"])

    of(r, v)
    of(r)

    assert len(counted) == 1 and [item.field for item in v.items] == ["priority"]


def test_the_kept_requirements_are_bounded(counted, monkeypatch):
    monkeypatch.setattr(tv, "VALID_REQUIREMENTS_KEPT", 4)
    for n in range(10):
        of(task_pb2.TaskRequirements(capabilities=[f"c{n}"]))
    assert 0 < len(tv._valid_requirements) <= 4
