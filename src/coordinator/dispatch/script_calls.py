"""Typed calls of the dispatcher's scripts: each owns its script's ARGV (``args()``) and the
positions of its reply (``parse``), as the script's header in ``coordinator/storage/lua``
documents them. Callers never index a reply themselves. (The task store's scripts have
theirs in ``coordinator.tasks.script_calls``, with ``AgentAssignment``, which an
assignment here shares with an assignment at submit.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from coordinator.agents.record_codec import RECORD_FIELDS
from coordinator.tasks.models import PRIORITIES_MOST_URGENT_FIRST
from coordinator.tasks.script_calls import AgentAssignment

HEADS_PER_CLASS = 1000
"""Most tasks read from the head of each class queue at a time (fewer when there are fewer
free slots: a pass reads no task it could not assign)."""

AGENTS_BEYOND_TASKS = 256
"""Agents a snapshot reads for each requirements class beyond its waiting tasks (the least
loaded available ones): the strategies choose among these, and a refused agent has
others behind it."""

VIEW_AGENTS = 512
"""Agents a view reads: the least loaded available ones, which submits choose from."""

LOCK_TTL_MS = 5_000
"""A node that dies holding a dispatch turn's lock delays passes over that partition by at
most this long."""

_SNAPSHOT_TAIL = (
    len(PRIORITIES_MOST_URGENT_FIRST),
    *(priority.name for priority in PRIORITIES_MOST_URGENT_FIRST),
    *RECORD_FIELDS,
)

Head = tuple[str, float, str, str, str, str]
"""A task at the head of a class queue: task_id, seq, requirements, strategy, routing_key,
avoid_agent_id (requirements is '' for a task deleted meanwhile; avoid_agent_id is the agent
whose attempt last ended unsuccessfully, or '')."""


def read_heads(entries: Sequence[Sequence[Any]]) -> list[Head]:
    """The heads of one class as ``lua/task_lib.lua``'s class_heads returns them."""
    return [(str(e[0]), float(e[1]), str(e[2]), str(e[3]), str(e[4]), str(e[5])) for e in entries]


@dataclass(frozen=True, slots=True)
class AssignTaskCall:
    """``lua/assign_task.lua`` for one queued task and the agent chosen for it (or the way
    the script chooses it). Its reply is ``AssignReply`` (``coordinator.tasks.script_calls``),
    as a submit's assignment."""

    task_id: str
    assignment: AgentAssignment
    choose_by: str = ""
    """'round_robin' or 'consistent_hash' for the script to choose the agent (the
    assignment's agent_id is then ''), over every free eligible agent; '' to assign to the
    assignment's agent."""

    def args(self) -> list[Any]:
        """ARGV[1..7]."""
        return [self.task_id, *self.assignment.args(), self.choose_by]


@dataclass(frozen=True, slots=True)
class DispatchSnapshotCall:
    """``lua/dispatch_snapshot.lua``: what a pass starts from, with the turn to take first."""

    turn_action: str = ""
    """'begin' or 'again' to take the turns first; '' for none; 'view' for none, and the
    agents even with no task waiting."""
    token: str = ""
    """This node's token for the turns' locks."""
    held: Sequence[str] = ()
    """The partitions whose turn this node holds already ('again')."""
    home: str = ""
    """This node's own partition (its NODE_ID): while tasks wait there, the turns of other
    live nodes' partitions are left to them."""
    heads_per_class: int = HEADS_PER_CLASS
    agents_beyond_tasks: int = AGENTS_BEYOND_TASKS
    """Agents read per class beyond its waiting tasks; for a view, the agents read."""
    spread: float = 0.0
    """In [0, 1): where to start reading in a band of agents tied at the lowest load
    (random per call, so that nodes and passes do not all take the same ones)."""

    def args(self) -> list[Any]:
        """ARGV: the turn, the token, the locks' time to live, heads per class, agents
        beyond the tasks, the spread, this node's partition, the partitions held, the
        priorities, the agent fields."""
        return [
            self.turn_action,
            self.token,
            LOCK_TTL_MS,
            self.heads_per_class,
            self.agents_beyond_tasks,
            self.spread,
            self.home,
            len(self.held),
            *self.held,
            *_SNAPSHOT_TAIL,
        ]

    @staticmethod
    def parse(reply: Any) -> SnapshotReply | None:
        """The reply's items by name; None when taking the turns held none (nothing
        waits, or other nodes hold the turns of what waits)."""
        if not reply:
            return None
        now_ms, strategy, state, class_sets, agent_rows, heads, heads_limit, more, *turns = reply
        held, waited_ms = turns
        return SnapshotReply(
            int(now_ms),
            strategy,
            state,
            class_sets,
            agent_rows,
            heads,
            int(heads_limit),
            bool(more),
            tuple(str(p) for p in held),
            int(waited_ms),
        )


@dataclass(frozen=True, slots=True)
class SnapshotReply:
    """``lua/dispatch_snapshot.lua``'s reply."""

    now_ms: int
    stored_strategy: str
    """The cluster's strategy, or '' for the configured default."""
    balancer_state: str
    """The strategies' shared state (JSON), or ''."""
    class_sets: list[list[str]]
    """The requirements classes with tasks waiting, per priority, most urgent first."""
    agent_rows: list[list[Any]]
    """The agents' record fields, in ``RECORD_FIELDS`` order: the least loaded available
    agents of each class with tasks waiting, or of all for a view."""
    heads: list[list[list[Sequence[Any]]]]
    """Per priority, per class of ``class_sets``, its first tasks (``read_heads``)."""
    heads_limit: int
    """The most tasks read per class: a class with fewer has no more."""
    more_agents: bool
    """Whether available agents were left unread (a pass that uses up the ones read passes
    again)."""
    partitions: tuple[str, ...] = ()
    """The partitions whose turn this node holds (taking the turns): the classes are theirs."""
    waited_ms: int = -1
    """How long the oldest request this pass serves waited for it (a 'wanted' flag another
    node left while this one held the turn, or while a dead holder's lock ran out); -1 for
    none."""


@dataclass(frozen=True, slots=True)
class TurnsEnded:
    """What ending a pass's turns left to do."""

    again: tuple[str, ...]
    """The partitions asked for meanwhile: their turns are still this node's, to pass again."""
    waited_ms: int
    """How long the oldest of those requests waited (-1: none)."""


@dataclass(frozen=True, slots=True)
class DispatchTurnCall:
    """``lua/dispatch_turn.lua``: 'end' or 'release' the turns of ``partitions`` (a pass
    begins or goes on with ``DispatchSnapshotCall``)."""

    action: str
    token: str
    partitions: Sequence[str] = ()

    def args(self) -> list[Any]:
        """ARGV; a release needs no time to live."""
        ttl = 0 if self.action == "release" else LOCK_TTL_MS
        return [self.action, self.token, ttl, *self.partitions]

    @staticmethod
    def parse(reply: Any) -> TurnsEnded:
        """The partitions to pass again now, and how long their requests waited."""
        waited_ms, *again = reply
        return TurnsEnded(tuple(str(p) for p in again), int(waited_ms))


@dataclass(frozen=True, slots=True)
class QueueHeadsCall:
    """``lua/queue_heads.lua``: the next tasks of some class queues of one priority."""

    priority: str
    most_per_class: int
    after: Mapping[str, str]
    """Per requirements class, in order, the lower bound of seq: '-inf', or '(N'."""

    def args(self) -> list[Any]:
        """ARGV[1..2], then class, bound pairs."""
        return [
            self.priority,
            self.most_per_class,
            *(item for pair in self.after.items() for item in pair),
        ]

    @staticmethod
    def parse(reply: Sequence[Any]) -> list[list[Head]]:
        """Per class, in the order given, its heads."""
        return [read_heads(entries) for entries in reply]
