"""AgentService: thin async handlers that validate, call the registry and convert, and the
assignment stream, which forwards a node-local session's events (``coordinator.delivery.streams``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc
from grpc_status import rpc_status

from aitbc.coordinator.v1 import agent_pb2, agent_pb2_grpc
from coordinator.agents import validation
from coordinator.agents.registry import AgentRegistry
from coordinator.api import error_mapping, joined_replies, page_bytes, wire
from coordinator.auth import checks
from coordinator.config import Settings
from coordinator.delivery.streams import (
    AssignmentEvent,
    AssignmentStreams,
    CancelEvent,
    EndEvent,
    StreamEvent,
    ended_error,
)
from coordinator.dispatch.dispatcher import Dispatcher
from coordinator.errors import FailedPrecondition, Unavailable
from coordinator.violations import Violations

Context = grpc.aio.ServicerContext[Any, Any]


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    """The registry over gRPC."""

    def __init__(
        self,
        registry: AgentRegistry,
        streams: AssignmentStreams,
        dispatcher: Dispatcher,
        settings: Settings,
    ) -> None:
        self._registry = registry
        self._streams = streams
        self._dispatcher = dispatcher
        self._settings = settings
        self._batch_bytes = min(settings.max_message_bytes - 1024, BATCH_BYTES_CAP)
        self._aborts: set[asyncio.Task[None]] = set()

    async def RegisterAgent(
        self, request: agent_pb2.RegisterAgentRequest, context: Context
    ) -> agent_pb2.RegisterAgentResponse:
        checks.require_agent(request.agent_id)  # no one registers over an agent it is not
        registration = validation.registration(
            agent_id=request.agent_id,
            agent_type=request.agent_type,
            capabilities=request.capabilities,
            services=request.services,
            endpoints=request.endpoints,
            metadata=request.metadata,
            labels=request.labels,
            max_concurrency=request.max_concurrency,
            weight=request.weight,
            allowed_agent_types=self._settings.agent_types,
            any_agent_type=self._settings.any_agent_type,
        )
        result = await self._registry.register(registration)
        return agent_pb2.RegisterAgentResponse(
            agent=wire.agent_to_proto(result.agent),
            created=result.created,
            heartbeat_interval=wire.duration_from_s(self._settings.heartbeat_interval_s),
            liveness_timeout=wire.duration_from_s(self._settings.liveness_timeout_s),
        )

    async def Heartbeat(
        self, request: agent_pb2.HeartbeatRequest, context: Context
    ) -> agent_pb2.HeartbeatResponse:
        checks.require_agent(request.agent_id)
        load_metrics, status = validation.heartbeat(
            request.agent_id,
            request.load_metrics,
            wire.enum_from_proto(request.status, "status", wire.AGENT_STATUS),
        )
        agent, streaming = await self._registry.heartbeat(request.agent_id, load_metrics, status)
        if not streaming:
            raise FailedPrecondition(
                f"agent_id: agent {request.agent_id!r} has no open StreamAssignments on any "
                "coordinator node and receives no work; open the stream (the heartbeat was "
                "recorded)"
            )
        return agent_pb2.HeartbeatResponse(
            status=wire.status_to_proto(agent.status),
            health_score=agent.health_score,
            heartbeat_interval=wire.duration_from_s(self._settings.heartbeat_interval_s),
        )

    async def UpdateAgentStatus(
        self, request: agent_pb2.UpdateAgentStatusRequest, context: Context
    ) -> agent_pb2.UpdateAgentStatusResponse:
        checks.require_agent(request.agent_id)
        status, load_metrics, reason = validation.status_update(
            request.agent_id,
            wire.enum_from_proto(request.status, "status", wire.AGENT_STATUS),
            request.load_metrics,
            request.reason,
        )
        with checks.audited_if_another_agent("update_agent_status", request.agent_id):
            agent = await self._registry.update_status(
                request.agent_id, status, load_metrics, reason
            )
        self._dispatcher.request()  # an agent back to ACTIVE may take queued work at once
        return agent_pb2.UpdateAgentStatusResponse(agent=wire.agent_to_proto(agent))

    async def DeregisterAgent(
        self, request: agent_pb2.DeregisterAgentRequest, context: Context
    ) -> agent_pb2.DeregisterAgentResponse:
        checks.require_agent(request.agent_id)
        agent_id = validation.agent_id(request.agent_id)
        with checks.audited_if_another_agent("deregister_agent", agent_id):
            existed = await self._registry.deregister(agent_id)
        return agent_pb2.DeregisterAgentResponse(existed=existed)

    async def GetAgent(
        self, request: agent_pb2.GetAgentRequest, context: Context
    ) -> agent_pb2.GetAgentResponse:
        checks.require_agent_reader(request.agent_id)
        agent = await self._registry.get(validation.agent_id(request.agent_id))
        return agent_pb2.GetAgentResponse(agent=wire.agent_to_proto(agent))

    async def DiscoverAgents(
        self, request: agent_pb2.DiscoverAgentsRequest, context: Context
    ) -> bytes:
        """A DiscoverAgentsResponse, already serialized (``joined_replies.discover_reply``)."""
        enums = Violations()  # reported with the other fields' problems
        query = validation.discover_query(
            violations=enums,
            statuses=wire.enums_from_proto(request.statuses, "statuses", wire.AGENT_STATUS, enums),
            agent_type=request.agent_type,
            capabilities=request.capabilities,
            services=request.services,
            labels=request.labels,
            min_health_score=request.min_health_score,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        page = await self._registry.discover(
            query,
            item_bytes=joined_replies.discover_entry_bytes,
            max_page_bytes=page_bytes.page_budget_bytes(self._settings),
        )
        return joined_replies.discover_reply(page.agents, page.next_page_token, page.total_size)

    async def StreamAssignments(
        self, request: agent_pb2.StreamAssignmentsRequest, context: Context
    ) -> AsyncIterator[agent_pb2.StreamAssignmentsResponse]:
        # Before the stream opens: a refused caller neither ends the agent's stream nor
        # receives its assignments and fencing tokens.
        checks.require_agent(request.agent_id)
        agent_id = validation.agent_id(request.agent_id)
        session = await self._streams.open(agent_id)
        handler = asyncio.current_task()
        assert handler is not None  # grpc.aio runs each call's handler in a task
        session.on_stop(functools.partial(self._stop_stream, context, handler))
        try:
            session.write_started()
            yield agent_pb2.StreamAssignmentsResponse(
                ready=agent_pb2.StreamReady(
                    node_id=self._settings.node_id,
                    heartbeat_interval=wire.duration_from_s(self._settings.heartbeat_interval_s),
                )
            )
            session.write_finished()
            self._dispatcher.request()  # the agent's slots are free to fill
            per_message = max(1, request.max_assignments_per_message)
            while True:
                events = await session.next_events()
                for message in _messages(events, per_message, self._batch_bytes):
                    if isinstance(message, EndEvent):
                        if message.reason == "stopped":  # the stall watchdog is cancelling it
                            raise asyncio.CancelledError
                        error = ended_error(agent_id, message)
                        if error is not None:
                            raise error
                        yield agent_pb2.StreamAssignmentsResponse(
                            draining=agent_pb2.NodeDraining(node_id=self._settings.node_id)
                        )
                        return
                    # Held here by gRPC flow control while the agent does not read: the
                    # stream watchdog looks at how long.
                    session.write_started()
                    yield message
                    session.write_finished()
        finally:
            self._streams.finish(session)

    def _stop_stream(self, context: Context, handler: asyncio.Task[Any], message: str) -> None:
        """End a stream whose handler may be held in a write: send the status (UNAVAILABLE,
        so the agent reconnects) in the background, then cancel the handler."""
        status = rpc_status.to_status(error_mapping.to_status(Unavailable(message)))

        async def abort() -> None:
            # Sent after whatever the agent has not read yet; if it never reads again, its
            # call ends when it cancels it or the node stops.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await context.abort_with_status(status)

        task = asyncio.create_task(abort(), name="stream-abort")
        self._aborts.add(task)
        task.add_done_callback(self._aborts.discard)
        # After the abort has begun: a cancelled handler sends no status of its own.
        asyncio.get_running_loop().call_soon(handler.cancel)


BATCH_BYTES_CAP = 4 * 1024 * 1024 - 1024
"""Most bytes of a batch of assignments: under gRPC's default 4 MiB receive limit (clients
keep it unless they need bigger single assignments), less room for the message's framing."""


def _messages(
    events: Sequence[StreamEvent], per_message: int, max_bytes: int
) -> Iterator[agent_pb2.StreamAssignmentsResponse | EndEvent]:
    """The stream messages of the events, in order: runs of assignments grouped
    ``per_message`` at most and ``max_bytes`` at most (an assignment bigger than that goes
    alone: one always fits in a message, given the task_data limit); an EndEvent as it is."""
    run: list[agent_pb2.Assignment] = []
    run_bytes = 0
    for event in events:
        if isinstance(event, AssignmentEvent):
            assignment = wire.assignment_to_proto(event.assignment)
            if per_message == 1:
                yield agent_pb2.StreamAssignmentsResponse(assignment=assignment)
                continue
            size = _field_bytes(assignment.ByteSize())
            if run and (len(run) == per_message or run_bytes + size > max_bytes):
                yield _batch(run)
                run, run_bytes = [], 0
            run.append(assignment)
            run_bytes += size
            continue
        if run:
            yield _batch(run)
            run, run_bytes = [], 0
        if isinstance(event, CancelEvent):
            yield agent_pb2.StreamAssignmentsResponse(
                cancel=agent_pb2.CancelNotice(
                    task_id=event.task_id, attempt=event.attempt, reason=event.reason
                )
            )
        else:
            yield event
    if run:
        yield _batch(run)


def _batch(run: list[agent_pb2.Assignment]) -> agent_pb2.StreamAssignmentsResponse:
    """One message for a run of assignments (a run of one stays a single assignment)."""
    if len(run) == 1:
        return agent_pb2.StreamAssignmentsResponse(assignment=run[0])
    return agent_pb2.StreamAssignmentsResponse(
        assignments=agent_pb2.AssignmentBatch(assignments=run)
    )


def _field_bytes(size: int) -> int:
    """Bytes of a length-delimited field of ``size`` bytes: tag, length, payload."""
    return 1 + (size.bit_length() + 6) // 7 + size if size else 2
