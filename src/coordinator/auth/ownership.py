"""Whose task is it: a client reads, watches and cancels only the tasks it submitted.

A task stores its submitter (``Task.submitted_by``). Readers and operators may read and
watch any task, operators cancel any; any other principal (a client) only its own. To such
a principal, another's task and a task that does not exist are the same answer,
PERMISSION_DENIED with the same message, so that it cannot learn which task ids exist (or
what they hold: task_data and fencing tokens are the submitter's, readers' and operators'
to see). Without authentication there is no principal and every task is anyone's, as before.
"""

from __future__ import annotations

from coordinator.auth.principal import Role, current
from coordinator.errors import PermissionDenied, echo

READ_ANY_TASK = frozenset({Role.READER, Role.OPERATOR})
"""Roles that may get and watch any task (tasks.read, tasks.watch)."""

CANCEL_ANY_TASK = frozenset({Role.OPERATOR})
"""Roles that may cancel any task (tasks.cancel)."""


def required_submitter(any_task_roles: frozenset[Role]) -> str | None:
    """The name a task's ``submitted_by`` must equal for the current caller to act on it;
    None when it may act on any task (no authentication, or a role of ``any_task_roles``)."""
    principal = current()
    if principal is None or principal.roles & any_task_roles:
        return None
    return principal.name


def not_its_task(permission: str, rpc: str, task_id: str) -> PermissionDenied:
    """The refusal of a task that is not the caller's, or does not exist (one message for
    both)."""
    principal = current()
    name = principal.name if principal is not None else ""
    return PermissionDenied(
        f"principal {echo(name)} lacks permission {permission} for {rpc} on task_id "
        f"{echo(task_id)}: a client may act only on the tasks it submitted"
    )
