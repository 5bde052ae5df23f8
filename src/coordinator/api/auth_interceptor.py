"""The authentication and authorization interceptor.

For each call of AgentService and TaskService it resolves the caller's principal once
(a stream is one call: its messages are not checked again), checks that the principal holds
the RPC's permission (``permissions.RPC_PERMISSIONS``) and runs the handler as that principal
(``principal.calling_as``) inside an audit scope, so the handlers' resource checks and audit
lines know who is calling. Refusals are ``Unauthenticated`` / ``PermissionDenied``, which the
error mapping (outside this interceptor) turns into status codes; they are audited here.

Health (``grpc.health.v1``) is always open: probes carry no credential. Reflection needs a
valid credential of any role unless COORDINATOR_REFLECTION=open. Any other service needs a
valid credential.

A stream is authenticated when it opens: a token that expires, or a static token revoked,
while its stream is open ends nothing; the next call (or the agent's reconnection) is
refused. Registered only when authentication is on: without it the node answers as it
always did.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_status import rpc_status

from coordinator.api.error_mapping import OWN_SERVICES_PREFIX, to_status
from coordinator.api.method_wrapping import WrappingInterceptor
from coordinator.auth import audit
from coordinator.auth import principal as principal_context
from coordinator.auth.audit import Auditor
from coordinator.auth.authenticator import Authenticator
from coordinator.auth.permissions import RPC_PERMISSIONS, Permission, allows, roles_holding
from coordinator.auth.principal import Principal
from coordinator.errors import PermissionDenied, Unauthenticated, echo

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."

Context = grpc.aio.ServicerContext[Any, Any]


class _AnyPrincipal:
    """Stands for "any authenticated principal" (reflection, unknown services)."""


ANY_PRINCIPAL = _AnyPrincipal()


def _target(request: Any) -> str:
    """What a request acts on, for audit lines: its agent_id or task_id, else ""."""
    for field in ("agent_id", "task_id"):
        value = getattr(request, field, None)
        if isinstance(value, str) and value:
            return value
    return ""


class AuthInterceptor(WrappingInterceptor):
    """See the module docstring."""

    def __init__(
        self, authenticator: Authenticator, auditor: Auditor, reflection_open: bool = False
    ) -> None:
        super().__init__()
        self._authenticator = authenticator
        self._auditor = auditor
        self._reflection_open = reflection_open

    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if method.startswith(HEALTH_PREFIX):
            return handler
        if method.startswith(REFLECTION_PREFIX) and self._reflection_open:
            return handler
        own = method.startswith(OWN_SERVICES_PREFIX)
        rule = _Rule(
            audit.Scope(audit.rpc_name(method), self._auditor),
            RPC_PERMISSIONS.get(method) if own else ANY_PRINCIPAL,
            own,
        )
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, rule), **kwargs
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, rule), **kwargs
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, rule), **kwargs
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(handler.stream_stream, rule), **kwargs
            )
        return handler

    def _principal(self, context: Context, rule: _Rule) -> Principal:
        """The caller's principal, allowed the rule's permission; Unauthenticated or
        PermissionDenied otherwise (``_refuse`` audits and answers them)."""
        principal = self._authenticator.authenticate(
            context.invocation_metadata(), context.auth_context
        )
        needed = rule.needed
        if needed is None:
            raise _Denied(
                principal, f"{rule.scope.rpc} has no declared permission; refused to everyone"
            )
        if isinstance(needed, Permission) and not allows(principal, needed):
            roles = ", ".join(role.value for role in roles_holding(needed))
            raise _Denied(
                principal,
                f"principal {echo(principal.name)} lacks permission {needed.value} for "
                f"{rule.scope.rpc} (roles holding it: {roles})",
            )
        return principal

    async def _admit(self, request: Any, context: Context, rule: _Rule) -> Principal:
        """The caller's principal, allowed the rule's permission; a refusal is audited (and
        answered, see ``_refuse``) before it propagates."""
        try:
            return self._principal(context, rule)
        except (Unauthenticated, PermissionDenied) as exc:
            await self._refuse(exc, request, context, rule)
            raise

    async def _refuse(
        self, exc: Unauthenticated | PermissionDenied, request: Any, context: Context, rule: _Rule
    ) -> None:
        """Audit a refused call; answer it here for services the error mapping skips."""
        if isinstance(exc, _Denied):
            code, name = "PERMISSION_DENIED", exc.principal.name
        else:
            code, name = "UNAUTHENTICATED", "-"
        self._auditor.refused(code, name, rule.scope.rpc, audit.field(_target(request)), str(exc))
        audit.mark_recorded(exc)
        if not rule.own:
            await context.abort_with_status(rpc_status.to_status(to_status(exc)))

    def _unary(self, behavior: Any, rule: _Rule) -> Any:
        async def wrapped(request: Any, context: Context) -> Any:
            principal = await self._admit(request, context, rule)
            as_principal = principal_context.enter(principal)
            in_scope = audit.enter(rule.scope)
            try:
                return await behavior(request, context)
            except PermissionDenied as exc:
                audit.denied(exc, _target(request))
                raise
            finally:
                audit.leave(in_scope)
                principal_context.leave(as_principal)

        return wrapped

    def _stream(self, behavior: Any, rule: _Rule) -> Any:
        if not inspect.isasyncgenfunction(behavior):  # a handler that writes with context.write

            async def written(request: Any, context: Context) -> None:
                principal = await self._admit(request, context, rule)
                with principal_context.calling_as(principal), audit.scope_of(rule.scope):
                    await behavior(request, context)

            return written

        async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
            # Once per call: the messages of a stream are not authenticated again.
            principal = await self._admit(request, context, rule)
            with principal_context.calling_as(principal), audit.scope_of(rule.scope):
                try:
                    async for response in behavior(request, context):
                        yield response
                except PermissionDenied as exc:
                    audit.denied(exc, _target(request))
                    raise

        return wrapped


@dataclass(frozen=True)
class _Rule:
    """What one method needs: computed once per method, read on every call."""

    scope: audit.Scope
    needed: Permission | _AnyPrincipal | None
    own: bool


class _Denied(PermissionDenied):
    """The RPC's permission refused to an authenticated principal (named in the audit)."""

    def __init__(self, principal: Principal, message: str) -> None:
        super().__init__(message)
        self.principal = principal
