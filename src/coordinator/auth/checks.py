"""Resource checks the handlers make, audited: may the caller act as this agent?

The interceptor has checked the RPC's permission; these check the resource the request
names, before anything is written, so a refused call changes nothing.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterator

from coordinator.auth import audit, principal
from coordinator.auth.principal import Role
from coordinator.errors import PermissionDenied


def require_agent(agent_id: str, field_name: str = "agent_id") -> None:
    """PermissionDenied (audited) unless the caller may act as ``agent_id``."""
    try:
        principal.require_agent(agent_id, field_name)
    except PermissionDenied as exc:
        audit.denied(exc, agent_id)
        raise


def require_agent_reader(agent_id: str) -> None:
    """For reads of one agent: readers and operators read any, an agent only its own."""
    caller = principal.current()
    if caller is None or caller.has(Role.READER) or caller.is_operator:
        return
    require_agent(agent_id)


def acts_on_another_agent(agent_id: str) -> bool:
    """True when the caller acts on an agent it is not granted as an agent (an operator's
    action, to audit); False without authentication."""
    caller = principal.current()
    if caller is None:
        return False
    own = caller.has(Role.AGENT) and any(
        pattern == agent_id or fnmatch.fnmatchcase(agent_id, pattern)
        for pattern in caller.agent_patterns
    )
    return not own


@contextlib.contextmanager
def audited_if_another_agent(action: str, agent_id: str) -> Iterator[None]:
    """Audit the enclosed change of ``agent_id`` (its outcome too) when the caller is not
    that agent: an operator acting on someone else's agent."""
    if not acts_on_another_agent(agent_id):
        yield
        return
    with audited(action, agent_id):
        yield


@contextlib.contextmanager
def audited(action: str, target: str) -> Iterator[None]:
    """Audit the enclosed operator action with its outcome: "ok", or the error's kind."""
    try:
        yield
    except Exception as exc:
        audit.operator_action(action, target, f"failed: {type(exc).__name__}")
        raise
    audit.operator_action(action, target)


def audit_cancel(task_id: str, submitted_by: str) -> None:
    """Audit an operator's cancellation of a task it did not submit (a client may cancel
    only its own tasks: nothing to audit)."""
    caller = principal.current()
    if caller is not None and caller.is_operator and caller.name != submitted_by:
        audit.operator_action("cancel_task", task_id)
