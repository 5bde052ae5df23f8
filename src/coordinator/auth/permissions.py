"""The one authorization table: which permission each RPC needs, and which roles hold it.

``RPC_PERMISSIONS`` maps every method of AgentService and TaskService, by the full name gRPC
calls it by (``/aitbc.coordinator.v1.TaskService/PurgeQueue``), to its permission. The
method names come from the generated descriptors; a method missing from ``_BY_METHOD`` is
absent from the table and refused to everyone (tests/auth fails first). What a permission
does not say (which agent, which task) the handlers check on the resource: an agent acts
only as the agent ids its grant names (``principal.require_agent``), a client reads and
cancels only the tasks it submitted.

| RPC | permission | roles |
| --- | --- | --- |
| RegisterAgent | agents.register | agent (its own ids), operator |
| Heartbeat | agents.heartbeat | agent (own), operator |
| UpdateAgentStatus | agents.update_status | agent (own), operator |
| DeregisterAgent | agents.deregister | agent (own), operator |
| GetAgent | agents.read | agent (own), reader, operator |
| DiscoverAgents | agents.discover | reader, operator |
| StreamAssignments | agents.stream | agent (own), operator |
| SubmitTask, SubmitTasks, StreamSubmitTasks | tasks.submit | client, operator |
| GetTask | tasks.read | client (own tasks), reader, operator |
| WatchTask | tasks.watch | client (own tasks), reader, operator |
| ListTasks | tasks.list | reader, operator |
| CancelTask | tasks.cancel | client (own tasks), operator |
| AcknowledgeTask, ExtendTaskLease, CompleteTask, FailTask, ReportTasks, StreamReportTasks | tasks.report | agent (own agents), operator |
| GetStats, ListQueues, GetBalancingStrategy | cluster.read | reader, operator |
| PurgeQueue | queues.purge | operator |
| SetBalancingStrategy | strategy.set | operator |
"""

from __future__ import annotations

import enum

from aitbc.coordinator.v1 import agent_pb2, task_pb2
from coordinator.auth.principal import Principal, Role

SERVICES = (
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
    task_pb2.DESCRIPTOR.services_by_name["TaskService"],
)


class Permission(enum.Enum):
    """What a call may do; the value is the name errors and docs use."""

    AGENTS_REGISTER = "agents.register"
    AGENTS_HEARTBEAT = "agents.heartbeat"
    AGENTS_UPDATE_STATUS = "agents.update_status"
    AGENTS_DEREGISTER = "agents.deregister"
    AGENTS_READ = "agents.read"
    AGENTS_DISCOVER = "agents.discover"
    AGENTS_STREAM = "agents.stream"
    TASKS_SUBMIT = "tasks.submit"
    TASKS_READ = "tasks.read"
    TASKS_WATCH = "tasks.watch"
    TASKS_LIST = "tasks.list"
    TASKS_CANCEL = "tasks.cancel"
    TASKS_REPORT = "tasks.report"
    CLUSTER_READ = "cluster.read"
    QUEUES_PURGE = "queues.purge"
    STRATEGY_SET = "strategy.set"


P = Permission

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.AGENT: frozenset(
        {
            P.AGENTS_REGISTER,
            P.AGENTS_HEARTBEAT,
            P.AGENTS_UPDATE_STATUS,
            P.AGENTS_DEREGISTER,
            P.AGENTS_READ,
            P.AGENTS_STREAM,
            P.TASKS_REPORT,
        }
    ),
    Role.CLIENT: frozenset({P.TASKS_SUBMIT, P.TASKS_READ, P.TASKS_WATCH, P.TASKS_CANCEL}),
    Role.READER: frozenset(
        {
            P.AGENTS_READ,
            P.AGENTS_DISCOVER,
            P.TASKS_READ,
            P.TASKS_WATCH,
            P.TASKS_LIST,
            P.CLUSTER_READ,
        }
    ),
    Role.OPERATOR: frozenset(Permission),
}

_BY_METHOD: dict[str, Permission] = {
    # AgentService
    "RegisterAgent": P.AGENTS_REGISTER,
    "Heartbeat": P.AGENTS_HEARTBEAT,
    "UpdateAgentStatus": P.AGENTS_UPDATE_STATUS,
    "DeregisterAgent": P.AGENTS_DEREGISTER,
    "GetAgent": P.AGENTS_READ,
    "DiscoverAgents": P.AGENTS_DISCOVER,
    "StreamAssignments": P.AGENTS_STREAM,
    # TaskService
    "SubmitTask": P.TASKS_SUBMIT,
    "SubmitTasks": P.TASKS_SUBMIT,
    "StreamSubmitTasks": P.TASKS_SUBMIT,
    "GetTask": P.TASKS_READ,
    "WatchTask": P.TASKS_WATCH,
    "ListTasks": P.TASKS_LIST,
    "CancelTask": P.TASKS_CANCEL,
    "AcknowledgeTask": P.TASKS_REPORT,
    "ExtendTaskLease": P.TASKS_REPORT,
    "CompleteTask": P.TASKS_REPORT,
    "FailTask": P.TASKS_REPORT,
    "ReportTasks": P.TASKS_REPORT,
    "StreamReportTasks": P.TASKS_REPORT,
    "GetStats": P.CLUSTER_READ,
    "ListQueues": P.CLUSTER_READ,
    "GetBalancingStrategy": P.CLUSTER_READ,
    "PurgeQueue": P.QUEUES_PURGE,
    "SetBalancingStrategy": P.STRATEGY_SET,
}


def method_path(service_full_name: str, method: str) -> str:
    """The path gRPC calls a method by: /package.Service/Method."""
    return f"/{service_full_name}/{method}"


RPC_PERMISSIONS: dict[str, Permission] = {
    method_path(service.full_name, method.name): _BY_METHOD[method.name]
    for service in SERVICES
    for method in service.methods
    if method.name in _BY_METHOD
}
"""Every RPC of our services by its full method name, and the permission it needs."""


def roles_holding(permission: Permission) -> list[Role]:
    """The roles that hold ``permission`` (for docs and the matrix test)."""
    return [role for role, held in ROLE_PERMISSIONS.items() if permission in held]


_HELD_BY_ROLES: dict[frozenset[Role], frozenset[Permission]] = {}
"""The permissions of each set of roles met so far (at most 15 sets): one lookup per call."""


def allows(principal: Principal, permission: Permission) -> bool:
    """True when one of the principal's roles holds ``permission``."""
    held = _HELD_BY_ROLES.get(principal.roles)
    if held is None:
        held = _HELD_BY_ROLES[principal.roles] = frozenset(
            p for role in principal.roles for p in ROLE_PERMISSIONS[role]
        )
    return permission in held
