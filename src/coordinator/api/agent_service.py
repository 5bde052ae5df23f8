"""AgentService: thin async handlers that validate, call the registry and convert, and the
assignment stream, which forwards a node-local session's events (``coordinator.streams``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc

from aitbc.coordinator.v1 import agent_pb2, agent_pb2_grpc
from coordinator import validation
from coordinator.api import page_bytes, wire
from coordinator.config import Settings
from coordinator.dispatcher import Dispatcher
from coordinator.errors import Aborted, FailedPrecondition, NotFound
from coordinator.registry import AgentRegistry
from coordinator.streams import AssignmentEvent, AssignmentStreams, EndEvent, StreamEvent
from coordinator.task_models import Assignment
from coordinator.validation import Violations

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

    async def RegisterAgent(
        self, request: agent_pb2.RegisterAgentRequest, context: Context
    ) -> agent_pb2.RegisterAgentResponse:
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
        status, load_metrics, reason = validation.status_update(
            request.agent_id,
            wire.enum_from_proto(request.status, "status", wire.AGENT_STATUS),
            request.load_metrics,
            request.reason,
        )
        agent = await self._registry.update_status(request.agent_id, status, load_metrics, reason)
        self._dispatcher.request()  # an agent back to ACTIVE may take queued work at once
        return agent_pb2.UpdateAgentStatusResponse(agent=wire.agent_to_proto(agent))

    async def DeregisterAgent(
        self, request: agent_pb2.DeregisterAgentRequest, context: Context
    ) -> agent_pb2.DeregisterAgentResponse:
        agent_id = validation.agent_id(request.agent_id)
        return agent_pb2.DeregisterAgentResponse(existed=await self._registry.deregister(agent_id))

    async def GetAgent(
        self, request: agent_pb2.GetAgentRequest, context: Context
    ) -> agent_pb2.GetAgentResponse:
        agent = await self._registry.get(validation.agent_id(request.agent_id))
        return agent_pb2.GetAgentResponse(agent=wire.agent_to_proto(agent))

    async def DiscoverAgents(
        self, request: agent_pb2.DiscoverAgentsRequest, context: Context
    ) -> bytes:
        """A DiscoverAgentsResponse, already serialized (``wire.discover_reply``)."""
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
            item_bytes=wire.discover_entry_bytes,
            max_page_bytes=page_bytes.page_budget_bytes(self._settings),
        )
        return wire.discover_reply(page.agents, page.next_page_token, page.total_size)

    async def StreamAssignments(
        self, request: agent_pb2.StreamAssignmentsRequest, context: Context
    ) -> AsyncIterator[agent_pb2.StreamAssignmentsResponse]:
        agent_id = validation.agent_id(request.agent_id)
        session = await self._streams.open(agent_id)
        try:
            yield agent_pb2.StreamAssignmentsResponse(
                ready=agent_pb2.StreamReady(
                    node_id=self._settings.node_id,
                    heartbeat_interval=wire.duration_from_s(self._settings.heartbeat_interval_s),
                )
            )
            self._dispatcher.request()  # the agent's slots are free to fill
            per_message = max(1, request.max_assignments_per_message)
            while True:
                for event in _batched(await session.next_events(), per_message):
                    if isinstance(event, list):
                        yield agent_pb2.StreamAssignmentsResponse(
                            assignments=agent_pb2.AssignmentBatch(
                                assignments=[wire.assignment_to_proto(a) for a in event]
                            )
                        )
                    elif isinstance(event, EndEvent):
                        if event.reason == "replaced":
                            raise Aborted(
                                f"agent_id: a newer StreamAssignments for agent {agent_id!r} "
                                "replaced this one"
                            )
                        if event.reason == "deregistered":
                            raise NotFound(
                                f"agent_id: agent {agent_id!r} was deregistered; register it "
                                "again to receive work"
                            )
                        yield agent_pb2.StreamAssignmentsResponse(
                            draining=agent_pb2.NodeDraining(node_id=self._settings.node_id)
                        )
                        return
                    elif isinstance(event, AssignmentEvent):
                        yield agent_pb2.StreamAssignmentsResponse(
                            assignment=wire.assignment_to_proto(event.assignment)
                        )
                    else:
                        yield agent_pb2.StreamAssignmentsResponse(
                            cancel=agent_pb2.CancelNotice(
                                task_id=event.task_id, attempt=event.attempt, reason=event.reason
                            )
                        )
        finally:
            self._streams.close(session)


def _batched(
    events: Sequence[StreamEvent], per_message: int
) -> Iterator[StreamEvent | list[Assignment]]:
    """The events in order, with runs of assignments grouped ``per_message`` at most (a
    group of one stays a single assignment event)."""
    run: list[Assignment] = []
    for event in events:
        if isinstance(event, AssignmentEvent) and per_message > 1:
            run.append(event.assignment)
            if len(run) < per_message:
                continue
        if run:
            yield run if len(run) > 1 else AssignmentEvent(run[0])
            run = []
        if not isinstance(event, AssignmentEvent) or per_message == 1:
            yield event
    if run:
        yield run if len(run) > 1 else AssignmentEvent(run[0])
