"""The assignments a node makes, by a pass or at a submit: what each one's script takes
(``AgentAssignment``), and what the node does with each one made (count it, send it to the
agent's stream when this node holds it, log it)."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

from coordinator.config import Settings
from coordinator.node.metrics import NodeMetrics
from coordinator.tasks.script_calls import AgentAssignment, AssignReply

log = logging.getLogger(__name__)

LocalDelivery = Callable[[dict[str, Any]], None]
"""Sends an assignment message of ``lua/assign_task.lua`` to a stream this node holds."""


class Assignments:
    """Builds this node's assignments and records those made."""

    def __init__(
        self, settings: Settings, metrics: NodeMetrics | None, deliver: LocalDelivery | None
    ) -> None:
        self._liveness_timeout_ms = int(settings.liveness_timeout_s * 1000)
        self._node_id = settings.node_id
        self._metrics = metrics
        self._deliver = deliver

    def to(self, agent_id: str) -> AgentAssignment:
        """An assignment to ``agent_id`` from this node, with a fresh fencing token nonce."""
        return AgentAssignment(
            agent_id,
            secrets.token_hex(8),
            self._liveness_timeout_ms,
            self._node_id,
            self._deliver is not None,
        )

    def record(self, task_id: str, agent_id: str, reply: AssignReply, way: str) -> None:
        """Record one assignment made at submit or by a pass (``way``); send it at once when
        this node holds the agent's stream."""
        if self._metrics is not None:
            self._metrics.count_assignment(way)
            if reply.latency_ms >= 0:  # a first attempt
                self._metrics.observe_submit_to_assignment_ms(reply.latency_ms)
        if reply.message is not None and self._deliver is not None:
            self._deliver(json.loads(reply.message))
        log.debug(
            "task assigned",
            extra={"task_id": task_id, "agent_id": agent_id, "attempt": reply.detail, "way": way},
        )
