"""AgentSlots keeps the least loaded free agents of a class on top of a heap across tasks:
its choices must be those of a plain sort of every agent, whatever the slots did since."""

from __future__ import annotations

import random

import pytest
from test_dispatch_partitions import record

from coordinator.dispatch.slots import CANDIDATES_PER_TASK, AgentSlots


def by_sorting(slots: AgentSlots, eligible: list[str], here=None) -> list[str]:
    """What ``candidates`` must return, from a sort of every eligible agent."""

    def least_loaded(ids: list[str]) -> list[str]:
        free = [a for a in ids if a in slots.free]
        load = {a: slots.used[a] / slots.agents[a].max_concurrency for a in free}
        return sorted(free, key=lambda a: (load[a], slots.used[a], a))[:CANDIDATES_PER_TASK]

    everywhere = least_loaded(eligible)
    if here is None or not everywhere:
        return everywhere
    near = least_loaded([a for a in eligible if here(a)])
    if not near:
        return everywhere
    lowest = slots.used[everywhere[0]] / slots.agents[everywhere[0]].max_concurrency
    slack = 1 / slots.agents[near[0]].max_concurrency
    return (
        near
        if slots.used[near[0]] / slots.agents[near[0]].max_concurrency <= lowest + slack
        else everywhere
    )


@pytest.mark.parametrize("seed", range(40))
def test_candidates_are_the_least_loaded_free_agents_after_any_changes(seed: int) -> None:
    rnd = random.Random(seed)
    agents = []
    for i in range(rnd.choice([3, 17, 40, 300])):
        max_concurrency = rnd.choice([1, 1, 2, 5])
        agents.append(record(f"a{i:04}", rnd.randint(0, max_concurrency), max_concurrency))
    slots = AgentSlots({a.agent_id: a for a in agents})
    classes = {"all": agents, "even": agents[::2]}
    here = {a.agent_id for a in agents if rnd.random() < 0.5}.__contains__
    ids = [a.agent_id for a in agents]

    for _ in range(300):
        step = rnd.random()
        cls = rnd.choice(list(classes))
        near = here if rnd.random() < 0.6 else None
        if step < 0.6:
            got = [c.agent_id for c in slots.candidates(cls, classes[cls], near)]
            assert got == by_sorting(slots, [a.agent_id for a in classes[cls]], near)
            if got:
                slots.take_slot(rnd.choice(got))
        elif step < 0.85:
            slots.give_back_slot(rnd.choice(ids))  # an attempt ended
        elif step < 0.9:
            slots.refuse(rnd.choice(ids))
        else:
            slots.not_assigned(rnd.choice(ids), rnd.choice(["agent_full", "task_gone"]), "")
