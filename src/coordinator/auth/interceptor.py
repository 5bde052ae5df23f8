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

Registered only when authentication is on: without it the node answers as it always did.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_status import rpc_status

from coordinator.api.error_mapping import OWN_SERVICES_PREFIX, to_status
from coordinator.api.method_wrapping import WrappingInterceptor
from coordinator.auth import audit
from coordinator.auth.audit import Auditor
from coordinator.auth.authenticator import Authenticator
from coordinator.auth.permissions import RPC_PERMISSIONS, Permission, allows, roles_holding
from coordinator.auth.principal import Principal, calling_as
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
        needed: Permission | _AnyPrincipal | None = (
            RPC_PERMISSIONS.get(method) if own else ANY_PRINCIPAL
        )
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, needed, own), **kwargs
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, method, needed, own), **kwargs
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, method, needed, own), **kwargs
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(handler.stream_stream, method, needed, own), **kwargs
            )
        return handler

    async def _admit(
        self,
        request: Any,
        context: Context,
        method: str,
        needed: Permission | _AnyPrincipal | None,
        own: bool,
    ) -> Principal:
        """The caller's principal, allowed ``needed``; refused (audited) otherwise."""
        target = _target(request)
        rpc = audit.rpc_name(method)
        principal: Principal | None = None
        try:
            principal = self._authenticator.authenticate(
                context.invocation_metadata(), context.auth_context
            )
            if needed is None:
                raise PermissionDenied(f"{rpc} has no declared permission; refused to everyone")
            if isinstance(needed, Permission) and not allows(principal, needed):
                roles = ", ".join(role.value for role in roles_holding(needed))
                raise PermissionDenied(
                    f"principal {echo(principal.name)} lacks permission {needed.value} for {rpc} "
                    f"(roles holding it: {roles})"
                )
        except (Unauthenticated, PermissionDenied) as exc:
            code = "UNAUTHENTICATED" if isinstance(exc, Unauthenticated) else "PERMISSION_DENIED"
            name = principal.name if principal is not None else "-"
            self._auditor.refused(code, name, rpc, target, str(exc))
            audit.mark_recorded(exc)
            if not own:  # no error mapping outside for services not ours: answer here
                await context.abort_with_status(rpc_status.to_status(to_status(exc)))
            raise
        return principal

    def _unary(
        self, behavior: Any, method: str, needed: Permission | _AnyPrincipal | None, own: bool
    ) -> Any:
        async def wrapped(request: Any, context: Context) -> Any:
            principal = await self._admit(request, context, method, needed, own)
            with calling_as(principal), audit.scope(method, self._auditor):
                try:
                    return await behavior(request, context)
                except PermissionDenied as exc:
                    audit.denied(exc, _target(request))
                    raise

        return wrapped

    def _stream(
        self, behavior: Any, method: str, needed: Permission | _AnyPrincipal | None, own: bool
    ) -> Any:
        if not inspect.isasyncgenfunction(behavior):  # a handler that writes with context.write

            async def written(request: Any, context: Context) -> None:
                principal = await self._admit(request, context, method, needed, own)
                with calling_as(principal), audit.scope(method, self._auditor):
                    await behavior(request, context)

            return written

        async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
            principal = await self._admit(request, context, method, needed, own)
            with calling_as(principal), audit.scope(method, self._auditor):
                try:
                    async for response in behavior(request, context):
                        yield response
                except PermissionDenied as exc:
                    audit.denied(exc, _target(request))
                    raise

        return wrapped
