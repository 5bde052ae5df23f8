"""The caller of the current call: a principal, its roles and the agents it may act as.

The authentication interceptor resolves one principal per call and sets it for the
handler's task (``calling_as``); handlers and the store read it with ``current()``. With
authentication off there is no principal (``current()`` is None) and every check passes,
so a node without auth behaves as before the trust boundary existed.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass, field

from coordinator.errors import PermissionDenied, echo


class Role(enum.Enum):
    """What a principal is for. Grants and tokens name roles in lower case."""

    AGENT = "agent"
    """Registers, heartbeats, updates its own status, opens its own stream and reports only
    the tasks assigned to the agents it may act as."""
    CLIENT = "client"
    """Submits tasks, and gets, watches and cancels the tasks it submitted."""
    READER = "reader"
    """Discovers agents, reads statistics and queues, lists and gets any task."""
    OPERATOR = "operator"
    """Everything, including purging queues, changing the strategy and acting on any agent
    or task."""

    @classmethod
    def parse(cls, text: str) -> Role:
        """The role named ``text`` (any case); ValueError naming the valid ones."""
        try:
            return cls(text.strip().lower())
        except ValueError:
            valid = ", ".join(r.value for r in cls)
            raise ValueError(f"unknown role {echo(text)}; expected one of: {valid}") from None


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    ``name`` identifies it (a JWT's ``sub``, a static token's principal, a certificate's
    SAN or CN); it is stored with the tasks it submits and keys its quotas. ``agent_patterns``
    are the agent ids it may act as, each an exact id or a shell-style pattern (``agent-*``).
    ``source`` says how it was authenticated: "jwt", "token" or "certificate".
    """

    name: str
    roles: frozenset[Role]
    agent_patterns: tuple[str, ...] = ()
    source: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def has(self, role: Role) -> bool:
        """True when the principal holds ``role``."""
        return role in self.roles

    @property
    def is_operator(self) -> bool:
        """Operators may do everything."""
        return Role.OPERATOR in self.roles

    def may_act_as(self, agent_id: str) -> bool:
        """True when the principal is an operator, or an agent granted ``agent_id``."""
        if self.is_operator:
            return True
        if Role.AGENT not in self.roles:
            return False
        return any(
            pattern == agent_id or fnmatch.fnmatchcase(agent_id, pattern)
            for pattern in self.agent_patterns
        )


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "coordinator_principal", default=None
)


def current() -> Principal | None:
    """The principal of the call being handled; None when authentication is off."""
    return _current.get()


@contextlib.contextmanager
def calling_as(principal: Principal | None) -> Iterator[None]:
    """Run the enclosed code (one call's handler) as ``principal``."""
    token = _current.set(principal)
    try:
        yield
    finally:
        _current.reset(token)


def enter(principal: Principal | None) -> contextvars.Token[Principal | None]:
    """Make ``principal`` the caller until ``leave(token)``: ``calling_as`` without a
    generator, for the interceptor's per-call path."""
    return _current.set(principal)


def leave(token: contextvars.Token[Principal | None]) -> None:
    """Undo the ``enter`` that returned ``token``."""
    _current.reset(token)


def require_agent(agent_id: str, field_name: str = "agent_id") -> None:
    """PermissionDenied unless the caller may act as ``agent_id`` (no-op without auth).

    The fencing token proves which agent a task is assigned to; this proves that the caller
    is that agent. Both are needed: a valid token stolen from a stream is not enough.
    """
    principal = current()
    if principal is None or principal.may_act_as(agent_id):
        return
    raise PermissionDenied(
        f"{field_name}: principal {echo(principal.name)} may not act as agent "
        f"{echo(agent_id)} (permission: act as that agent)"
    )


def submitter_name() -> str:
    """The name stored as a new task's submitter: the caller's, or "" without auth."""
    principal = current()
    return principal.name if principal is not None else ""
