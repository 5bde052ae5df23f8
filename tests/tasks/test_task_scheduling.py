"""Which queued task goes to which agent, on one node: strict priorities with FIFO within a
level, no head-of-line blocking, every requirement filter, and task slots never exceeded.

Where a test shows that something is *not* assigned, it runs a dispatch pass itself after
setting the scene (``dispatcher.dispatch_pass()``): once that pass returns, anything that
could have been assigned has been, so the check needs no sleep.
"""

from __future__ import annotations

import pytest

from agent_harness import eventually, get_task, submit_request, wait_for_state
from aitbc.coordinator.v1 import agent_pb2, task_pb2

PENDING = task_pb2.TASK_STATE_PENDING
ASSIGNED = task_pb2.TASK_STATE_ASSIGNED
COMPLETED = task_pb2.TASK_STATE_COMPLETED

LOW = task_pb2.TASK_PRIORITY_LOW
NORMAL = task_pb2.TASK_PRIORITY_NORMAL
HIGH = task_pb2.TASK_PRIORITY_HIGH
CRITICAL = task_pb2.TASK_PRIORITY_CRITICAL
URGENT = task_pb2.TASK_PRIORITY_URGENT


async def submit(node, **fields) -> task_pb2.Task:
    return (await node.tasks.SubmitTask(submit_request(**fields))).task


async def count_in_state(node, state: int) -> int:
    reply = await node.tasks.ListTasks(task_pb2.ListTasksRequest(states=[state], page_size=1000))
    return len(reply.tasks)


async def active_tasks(node, agent_id: str) -> int:
    reply = await node.agents.GetAgent(agent_pb2.GetAgentRequest(agent_id=agent_id))
    return reply.agent.active_tasks


async def test_a_backlog_is_served_strictly_urgent_to_low_and_fifo_within_a_level(node, pool):
    priorities = [LOW, URGENT, NORMAL, HIGH, CRITICAL, LOW, URGENT, NORMAL, HIGH, CRITICAL]
    priorities += [NORMAL, LOW, HIGH, URGENT]
    backlog = []
    for position, priority in enumerate(priorities):
        task = await submit(node, priority=priority, data={"position": position})
        backlog.append((priority, position, task.task_id))
    expected = [task_id for _, _, task_id in sorted(backlog, key=lambda t: (-t[0], t[1]))]

    agent = await pool.start(node.channel, "agent-1", max_concurrency=1)
    received = []
    for _ in backlog:
        assignment = await agent.next_assignment()
        received.append(assignment.task_id)
        await agent.complete(assignment)

    names = {task_id: (task_pb2.TaskPriority.Name(p), pos) for p, pos, task_id in backlog}
    assert [names[t] for t in received] == [names[t] for t in expected]


async def test_fifo_holds_across_requirement_classes_beyond_one_batch(node, pool):
    # A pass reads each class queue in batches no larger than the free slots (here 3). Tasks
    # of a class past its first batch must still come before later tasks of another class.
    per_class = 12
    submitted = []
    for position in range(per_class):
        caps = ["x"] if position < per_class - 3 else ["y"]
        task = await submit(node, requirements=task_pb2.TaskRequirements(capabilities=caps))
        submitted.append(task.task_id)
    for _ in range(3):
        task = await submit(node, requirements=task_pb2.TaskRequirements(capabilities=["x"]))
        submitted.append(task.task_id)

    agent = await pool.start(node.channel, "agent-1", max_concurrency=3, capabilities=("x", "y"))
    received = []
    for _ in submitted:
        assignment = await agent.next_assignment()
        received.append(assignment.task_id)
        await agent.complete(assignment)
    assert received == submitted


@pytest.mark.parametrize("behind", [NORMAL, URGENT], ids=["lower_priority", "same_priority"])
async def test_a_task_no_agent_can_take_does_not_hold_up_the_tasks_behind_it(node, pool, behind):
    first = await pool.start(node.channel, "agent-1", max_concurrency=2)
    second = await pool.start(node.channel, "agent-2", max_concurrency=2)
    stuck = await submit(
        node, priority=URGENT, requirements=task_pb2.TaskRequirements(capabilities=["quantum"])
    )
    behind_ids = {(await submit(node, priority=behind)).task_id for _ in range(3)}

    for task_id in behind_ids:
        await wait_for_state(node.tasks, task_id, ASSIGNED, timeout_s=3)

    pushed: set[str] = set()

    async def all_pushed() -> bool:
        pushed.update(a.task_id for a in [*first.received(), *second.received()])
        return pushed >= behind_ids

    await eventually(all_pushed, timeout_s=3, what="the tasks behind to reach their agents")
    assert pushed == behind_ids
    still = await get_task(node.tasks, stuck.task_id)
    assert (still.state, still.attempt) == (PENDING, 0)


def _agents(**overrides: dict) -> dict[str, dict]:
    """Three agents; agent-c is the only eligible one in every case, and the one that
    least connections would pick last (ties go to the smallest agent_id)."""
    return {agent_id: overrides.get(agent_id, {}) for agent_id in ("agent-a", "agent-b", "agent-c")}


REQUIREMENT_CASES = {
    "agent_type": (
        _agents(
            **{
                "agent-a": {"agent_type": "worker"},
                "agent-b": {"agent_type": "monitor"},
                "agent-c": {"agent_type": "inference"},
            }
        ),
        task_pb2.TaskRequirements(agent_type="inference"),
    ),
    "capabilities_all_of": (
        _agents(
            **{
                "agent-a": {"capabilities": ("text",)},
                "agent-b": {"capabilities": ("vision",)},
                "agent-c": {"capabilities": ("text", "vision")},
            }
        ),
        task_pb2.TaskRequirements(capabilities=["text", "vision"]),
    ),
    "services_all_of": (
        _agents(
            **{
                "agent-a": {"services": ("storage",)},
                "agent-b": {"services": ("inference", "cache")},
                "agent-c": {"services": ("storage", "inference")},
            }
        ),
        task_pb2.TaskRequirements(services=["storage", "inference"]),
    ),
    "labels": (
        _agents(
            **{
                "agent-a": {"labels": {"region": "eu", "tier": "silver"}},
                "agent-b": {"labels": {"region": "us", "tier": "gold"}},
                "agent-c": {"labels": {"region": "eu", "tier": "gold", "rack": "7"}},
            }
        ),
        task_pb2.TaskRequirements(labels={"region": "eu", "tier": "gold"}),
    ),
    "pinned_agent_id": (_agents(), task_pb2.TaskRequirements(agent_id="agent-c")),
    "min_health_score": (
        # cpu 0.9 gives a health score of 1 - 0.5 x 0.9 = 0.55; an idle agent scores 1.
        _agents(**{"agent-a": {"cpu": 0.9}, "agent-b": {"cpu": 0.9}}),
        task_pb2.TaskRequirements(min_health_score=0.8),
    ),
}


@pytest.mark.parametrize("case", list(REQUIREMENT_CASES))
async def test_each_requirement_admits_only_the_agents_that_meet_it(node, pool, case):
    agents_spec, requirements = REQUIREMENT_CASES[case]
    agents = {}
    for agent_id, spec in agents_spec.items():
        spec = dict(spec)
        cpu = spec.pop("cpu", None)
        agents[agent_id] = await pool.start(node.channel, agent_id, max_concurrency=1, **spec)
        if cpu is not None:
            reply = await agents[agent_id].report_load(cpu=cpu)
            assert reply.health_score < requirements.min_health_score

    first = await submit(node, requirements=requirements)
    second = await submit(node, requirements=requirements)

    assigned = await wait_for_state(node.tasks, first.task_id, ASSIGNED)
    assert assigned.agent_id == "agent-c"
    # agent-c is now full; agent-a and agent-b are free but not eligible.
    assert await node.coordinator.dispatcher.dispatch_pass() == 0
    assert (await get_task(node.tasks, second.task_id)).state == PENDING
    assert agents["agent-a"].received() == agents["agent-b"].received() == []


async def test_an_agent_never_holds_more_tasks_than_its_slots(node, pool):
    agent = await pool.start(node.channel, "agent-1", max_concurrency=3)
    task_ids = [(await submit(node, data={"i": i})).task_id for i in range(10)]

    held = [await agent.next_assignment() for _ in range(3)]
    assert await node.coordinator.dispatcher.dispatch_pass() == 0
    assert await count_in_state(node, ASSIGNED) == 3
    assert await count_in_state(node, PENDING) == 7
    assert await active_tasks(node, "agent-1") == 3
    assert agent.received() == [], "a fourth assignment was pushed to a full agent"

    await agent.acknowledge(held[0])
    await agent.complete(held[0])
    held = [*held[1:], await agent.next_assignment()]
    assert await node.coordinator.dispatcher.dispatch_pass() == 0
    assert await active_tasks(node, "agent-1") == 3
    assert agent.received() == []

    done = 1
    while held:
        await agent.complete(held.pop(0))
        done += 1
        if done + len(held) < len(task_ids):
            held.append(await agent.next_assignment())
        in_use = await active_tasks(node, "agent-1")
        assert in_use <= 3
    assert done == len(task_ids)

    async def all_completed() -> bool:
        return await count_in_state(node, COMPLETED) == len(task_ids)

    await eventually(all_completed, what="every task COMPLETED")
    assert await active_tasks(node, "agent-1") == 0
