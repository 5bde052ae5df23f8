"""The collector policy: full collections examine only what is new, and once in a while
everything, so cycles that died frozen are freed after all."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from coordinator.node.gc_pauses import CollectorPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Cyclic:
    """An object in a reference cycle: only the cycle collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def policy() -> Iterator[tuple[CollectorPolicy, Clock]]:
    clock = Clock()
    policy = CollectorPolicy(thorough_every_s=300, clock=clock)
    policy.install()
    try:
        yield policy, clock
    finally:
        policy.uninstall()


def test_a_full_collection_freezes_its_survivors(policy: tuple[CollectorPolicy, Clock]) -> None:
    kept = [Cyclic() for _ in range(100)]
    before = gc.get_freeze_count()
    gc.collect()
    assert gc.get_freeze_count() >= before + len(kept)
    assert not gc.get_objects(generation=2)  # nothing for the next full one to examine


def test_a_cycle_that_died_frozen_is_freed_by_the_next_thorough_collection(
    policy: tuple[CollectorPolicy, Clock],
) -> None:
    collector, clock = policy
    cyclic = Cyclic()
    gone = weakref.ref(cyclic)
    gc.collect()  # it survives: frozen
    del cyclic
    gc.collect()
    assert gone() is not None, "a frozen cycle waits for a thorough collection"
    assert collector.thorough_collections == 0

    clock.now += 300
    gc.collect()
    assert gone() is None
    assert collector.thorough_collections == 1
    clock.now += 10
    gc.collect()
    assert collector.thorough_collections == 1, "not again before THOROUGH_EVERY_S"


def test_young_collections_are_left_alone(policy: tuple[CollectorPolicy, Clock]) -> None:
    before = gc.get_freeze_count()
    for _ in range(10):
        gc.collect(0)
        gc.collect(1)
    assert gc.get_freeze_count() == before


def test_uninstall_thaws_and_stops_following() -> None:
    policy = CollectorPolicy()
    policy.install()
    policy.uninstall()
    assert policy not in gc.callbacks
    assert gc.get_freeze_count() == 0
