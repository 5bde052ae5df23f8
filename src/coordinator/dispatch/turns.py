"""The dispatch turns: one per partition (the tasks one node queued), so that nodes pass at
the same time, each over the tasks it queued, and only the node holding a partition's
turn passes over it. Taking the turns of the partitions with tasks waiting and reading
the pass's snapshot are one step (``lua/dispatch_snapshot.lua``), and so are ending them
and learning which to pass again (``lua/dispatch_turn.lua``). Here: those steps, reading
a snapshot into a ``Snapshot``, handing turns back, and how long requests waited for a
turn another node held (the metric ``dispatch_turn_wait_seconds``)."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any

from coordinator.agents.records import AgentStatus
from coordinator.agents.registry import AgentRegistry
from coordinator.dispatch.script_calls import (
    HEADS_PER_CLASS,
    VIEW_AGENTS,
    DispatchSnapshotCall,
    DispatchTurnCall,
    read_heads,
)
from coordinator.dispatch.slots import AgentSlots, Snapshot, balancer_state
from coordinator.dispatch.view import NodeView
from coordinator.node.metrics import NodeMetrics
from coordinator.storage.multiplex import MultiplexedConnection
from coordinator.storage.scripts import ScriptCall, TaskScripts, run_batch
from coordinator.tasks.store import TaskStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HandedTurn:
    """Dispatch turns a submit took, with the snapshot read in its round trip (which says
    the partitions)."""

    token: str
    requests: int
    """``Dispatcher.request`` calls made before the snapshot was read (it serves them)."""
    snapshot: Snapshot


class Turns:
    """This node's side of the dispatch turn, and the snapshots read with it."""

    def __init__(
        self,
        scripts: TaskScripts,
        multiplexed: MultiplexedConnection,
        registry: AgentRegistry,
        store: TaskStore,
        view: NodeView,
        home: str,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._scripts = scripts
        self._home = home
        """This node's partition: its NODE_ID, which its submits queue tasks under."""
        self._metrics = metrics
        self._multiplexed = multiplexed
        self._registry = registry
        self._store = store
        self._view = view
        self._releasing: set[asyncio.Task[Any]] = set()

    async def snapshot(
        self, turn_action: str = "", token: str = "", held: tuple[str, ...] = ()
    ) -> Snapshot | None:
        """Read what a pass starts from; with ``turn_action`` ('begin' or 'again') and this
        node's token, take the turns of the partitions with tasks waiting in the same step
        (``held``: those this node holds already), and read only the partitions it holds
        then: None when it holds none. With 'view', read the agents only, for the view."""
        call = self.snapshot_call(turn_action, token, held)
        (reply,) = await run_batch(self._multiplexed, [call])
        return self.parse_snapshot(reply, for_view=turn_action == "view")

    def snapshot_call(self, turn_action: str, token: str, held: tuple[str, ...] = ()) -> ScriptCall:
        """The snapshot's script call, to run alone or to ride in a submit's round trip."""
        spread = random.random()  # each read starts elsewhere in a band of idle agents
        if turn_action == "view":  # a view needs no tasks, and more agents
            call = DispatchSnapshotCall(
                turn_action, heads_per_class=0, agents_beyond_tasks=VIEW_AGENTS, spread=spread
            )
        else:
            call = DispatchSnapshotCall(
                turn_action, token, held, self._home, HEADS_PER_CLASS, spread=spread
            )
        return (self._scripts.dispatch_snapshot, (), call.args())

    def parse_snapshot(self, raw: Any, for_view: bool = False) -> Snapshot | None:
        """The snapshot from ``lua/dispatch_snapshot.lua``'s reply; None without a turn.
        It becomes the view when it was read ``for_view`` or had tasks waiting."""
        reply = DispatchSnapshotCall.parse(raw)
        if reply is None:
            return None
        self._observe_wait(reply.waited_ms)
        agents = {
            agent.agent_id: agent
            for agent in self._registry.decode_records(reply.agent_rows, reply.now_ms)
            if agent.status is AgentStatus.ACTIVE
        }
        class_sets = reply.class_sets
        snapshot = Snapshot(
            class_sets=[sorted(c) for c in class_sets],
            heads=[
                dict(zip(classes, [read_heads(e) for e in entries], strict=False))
                for classes, entries in zip(class_sets, reply.heads, strict=True)
            ],
            heads_limit=reply.heads_limit,
            slots=AgentSlots(agents),
            default_strategy=self._store.strategy_or_default(reply.stored_strategy),
            state=balancer_state(reply.balancer_state),
            read_at=asyncio.get_running_loop().time(),
            more_agents=reply.more_agents,
            partitions=reply.partitions,
        )
        if for_view or any(class_sets):  # else the script read no agent: no view
            self._view.adopt(snapshot, agents, reply.balancer_state)
        return snapshot

    async def end(self, token: str, partitions: tuple[str, ...]) -> tuple[str, ...]:
        """End this node's turns of ``partitions`` after a pass: the partitions asked for
        meanwhile, whose turns it keeps to pass again (the others it hands back)."""
        call = DispatchTurnCall("end", token, partitions)
        ended = call.parse(await self._scripts.dispatch_turn(args=call.args()))
        self._observe_wait(ended.waited_ms)
        return ended.again

    def _observe_wait(self, waited_ms: int) -> None:
        if waited_ms >= 0 and self._metrics is not None:
            self._metrics.observe_dispatch_turn_wait_ms(waited_ms)

    async def release(self, token: str, partitions: tuple[str, ...]) -> None:
        """Hand back turns at once, whatever was asked meanwhile."""
        call = DispatchTurnCall("release", token, partitions)
        await self._scripts.dispatch_turn(args=call.args())

    def release_soon(self, token: str, partitions: tuple[str, ...]) -> None:
        """Hand back turns that will not be passed, in the background."""
        task = asyncio.create_task(self._release_quietly(token, partitions))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release_quietly(self, token: str, partitions: tuple[str, ...]) -> None:
        try:
            await self.release(token, partitions)
        except Exception as exc:  # the node is closing Redis: the locks expire by themselves
            log.debug("dispatch turns not handed back (they expire): %r", exc)

    async def wait_released(self) -> None:
        """Wait for the turns being handed back in the background."""
        await asyncio.gather(*self._releasing, return_exceptions=True)
