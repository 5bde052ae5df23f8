"""The audit trail: operator actions and refused calls, one structured line each, counted.

Logger ``coordinator.audit``; every line has the fields ``principal``, ``rpc``, ``target``
and ``outcome`` (and ``action``). Logged and counted:

* every operator action: a purge, a strategy change, the deregistration or status change of
  an agent the caller is not, the cancellation of a task it did not submit;
* every PERMISSION_DENIED, whether the RPC's permission or a resource (an agent id, a task)
  was refused, a batch entry included;
* UNAUTHENTICATED calls, at most ``UNAUTHENTICATED_LINES_PER_S`` lines a second (then one
  line with the count): anyone who reaches the port can make them, and must not be able to
  flood the log. They are all counted.

The interceptor opens an audit scope per call (``scope``) naming the RPC and the node's
``Auditor`` (its metrics); handlers call ``operator_action`` and ``denied`` without knowing
either. Without authentication there is no scope and nothing is audited.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from coordinator.auth.principal import Principal, current
from coordinator.errors import PermissionDenied

log = logging.getLogger("coordinator.audit")

ACTIONS = (
    "purge_queue",
    "set_strategy",
    "deregister_agent",
    "update_agent_status",
    "cancel_task",
    "permission_denied",
    "unauthenticated",
)
"""The ``action`` label values of the audit events metric."""

UNAUTHENTICATED_LINES_PER_S = 10


class Auditor:
    """Writes audit lines and counts them (``count_event(action)``, ``count_failure(rpc,
    code)``: the node's metrics)."""

    def __init__(
        self,
        count_event: Callable[[str], None] | None = None,
        count_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        self._count_event = count_event
        self._count_failure = count_failure
        self._window_start = 0.0
        self._lines_in_window = 0
        self._suppressed = 0

    def event(self, action: str, principal: str, rpc: str, target: str, outcome: str) -> None:
        """One audited action or refusal."""
        if self._count_event is not None:
            self._count_event(action)
        log.info(
            "audit %s by %s on %s: %s",
            action,
            principal,
            rpc,
            outcome,
            extra={
                "action": action,
                "principal": principal,
                "rpc": rpc,
                "target": target,
                "outcome": outcome,
            },
        )

    def refused(self, code: str, principal: str, rpc: str, target: str, message: str) -> None:
        """A call (or a batch entry) refused with ``code``: PERMISSION_DENIED or
        UNAUTHENTICATED; ``message`` is what the caller was told."""
        if self._count_failure is not None:
            self._count_failure(rpc, code)
        if code == "UNAUTHENTICATED":
            if not self._may_log_unauthenticated():
                if self._count_event is not None:
                    self._count_event("unauthenticated")
                return
            self.event("unauthenticated", principal, rpc, target, message)
            return
        self.event("permission_denied", principal, rpc, target, message)

    def _may_log_unauthenticated(self) -> bool:
        now = time.monotonic()
        if now - self._window_start >= 1.0:
            if self._suppressed:
                log.warning(
                    "audit: %d more UNAUTHENTICATED calls in the last second were not logged",
                    self._suppressed,
                    extra={"action": "unauthenticated", "outcome": "suppressed"},
                )
            self._window_start, self._lines_in_window, self._suppressed = now, 0, 0
        if self._lines_in_window < UNAUTHENTICATED_LINES_PER_S:
            self._lines_in_window += 1
            return True
        self._suppressed += 1
        return False


@dataclass(frozen=True)
class Scope:
    """The RPC a call is, and the auditor of its node."""

    rpc: str
    auditor: Auditor


_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "coordinator_audit_scope", default=None
)


def rpc_name(method: str) -> str:
    """``Service/Method`` of a full method name, for audit lines and labels."""
    service, _, name = method.lstrip("/").partition("/")
    return f"{service.rsplit('.', 1)[-1]}/{name}"


@contextlib.contextmanager
def scope_of(found: Scope) -> Iterator[None]:
    """Audit what the enclosed handler does in ``found``."""
    token = _scope.set(found)
    try:
        yield
    finally:
        _scope.reset(token)


def enter(found: Scope) -> contextvars.Token[Scope | None]:
    """Open ``found`` for the current call until ``leave(token)`` (``scope`` without a
    generator, for the interceptor's per-call path)."""
    return _scope.set(found)


def leave(token: contextvars.Token[Scope | None]) -> None:
    """Close the scope ``enter`` opened."""
    _scope.reset(token)


MAX_TARGET_CHARS = 128


def field(text: str) -> str:
    """A value from a request, safe in one log line: ASCII with escapes (no newline can
    forge a second line), at most ``MAX_TARGET_CHARS`` characters."""
    escaped = ascii(text)[1:-1]
    return escaped if len(escaped) <= MAX_TARGET_CHARS else escaped[: MAX_TARGET_CHARS - 3] + "..."


def _name(principal: Principal | None) -> str:
    return principal.name if principal is not None else "-"


def operator_action(action: str, target: str, outcome: str = "ok") -> None:
    """Record an operator action of the current call (no-op without authentication)."""
    found = _scope.get()
    if found is not None:
        found.auditor.event(action, _name(current()), found.rpc, field(target), outcome)


def denied(exc: PermissionDenied, target: str) -> PermissionDenied:
    """Record a resource refusal of the current call; returns ``exc`` marked as recorded
    (the interceptor does not record it again when it ends the call)."""
    found = _scope.get()
    if found is not None and not recorded(exc):
        found.auditor.refused(
            "PERMISSION_DENIED", _name(current()), found.rpc, field(target), str(exc)
        )
    mark_recorded(exc)
    return exc


def mark_recorded(exc: BaseException) -> None:
    """Note that ``exc`` has its audit line: later handlers of it do not write another."""
    exc.__dict__["audit_recorded"] = True


def recorded(exc: BaseException) -> bool:
    """True when ``exc`` has its audit line already."""
    return bool(exc.__dict__.get("audit_recorded"))
