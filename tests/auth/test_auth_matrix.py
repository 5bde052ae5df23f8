"""The role x RPC matrix, generated from the one authorization table.

Every RPC of AgentService and TaskService is called by each role (through HS256, RS256 and
ES256 JWTs and static tokens), without a credential, and with bad credentials of each kind.
A caller whose roles hold the RPC's permission is let through (OK, or the domain's own
answer to a minimal request: NOT_FOUND, INVALID_ARGUMENT, ...); any other valid principal is
PERMISSION_DENIED naming the permission; a bad or missing credential is UNAUTHENTICATED.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc
import jwt
import pytest
from auth_support import STATIC_TOKENS, Keys, bearer, call_rpc
from google.protobuf import message_factory

from aitbc.coordinator.v1 import task_pb2
from coordinator.auth.permissions import (
    ROLE_PERMISSIONS,
    RPC_PERMISSIONS,
    SERVICES,
    Permission,
    method_path,
)
from coordinator.auth.principal import Role

REFUSED = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}


def test_every_rpc_of_both_services_is_in_the_table() -> None:
    methods = {method_path(s.full_name, m.name) for s in SERVICES for m in s.methods}
    missing = methods - set(RPC_PERMISSIONS)
    assert not missing, f"RPCs without a permission in auth/permissions.py: {sorted(missing)}"
    assert set(RPC_PERMISSIONS) == methods  # and nothing stale
    assert len(methods) >= 25


def test_every_permission_is_needed_by_some_rpc_and_held_by_the_operator() -> None:
    assert set(RPC_PERMISSIONS.values()) == set(Permission)
    assert ROLE_PERMISSIONS[Role.OPERATOR] == frozenset(Permission)
    assert set(ROLE_PERMISSIONS) == set(Role)


@dataclass(frozen=True)
class Caller:
    """How a matrix row authenticates: ``roles`` None means it must be UNAUTHENTICATED."""

    name: str
    roles: tuple[str, ...] | None

    def metadata(self, keys: Keys) -> tuple[tuple[str, str], ...]:
        agents = ["agent-own-*"]
        mint = keys.mint
        roles = list(self.roles or ())
        match self.name:
            case "agent" | "client" | "reader" | "operator":
                return bearer(mint(f"jwt-{self.name}", roles, agents))
            case "client-es256":
                return bearer(mint("es-client", roles, algorithm="ES256"))
            case "reader-rs256":
                return bearer(mint("rs-reader", roles, algorithm="RS256"))
            case "agent-static" | "operator-static":
                principal = "static-" + self.name.split("-")[0]
                return bearer(STATIC_TOKENS[principal][0])
            case "no-credential":
                return ()
            case "expired":
                return bearer(mint("late", ["operator"], ttl_s=-3600))
            case "forged":
                return bearer(
                    mint("forger", ["operator"], algorithm="RS256", key=keys.stranger_rsa_private)
                )
            case "wrong-secret":
                return bearer(mint("forger", ["operator"], key="another-secret-" + "y" * 40))
            case "wrong-audience":
                return bearer(mint("elsewhere", ["operator"], audience="another-service"))
            case "alg-none":
                unsigned = jwt.encode(
                    {
                        "sub": "nobody",
                        "roles": ["operator"],
                        "aud": "aitbc-coordinator",
                        "exp": 4102444800,
                    },
                    None,
                    algorithm="none",
                )
                return bearer(unsigned)
            case "unknown-static":
                return bearer("not-a-token-anyone-issued")
            case "not-bearer":
                return (("authorization", "Basic b3BlcmF0b3I6cGFzc3dvcmQ="),)
        raise AssertionError(self.name)


CALLERS = [
    Caller("agent", ("agent",)),
    Caller("client", ("client",)),
    Caller("reader", ("reader",)),
    Caller("operator", ("operator",)),
    Caller("client-es256", ("client",)),
    Caller("reader-rs256", ("reader",)),
    Caller("agent-static", ("agent",)),
    Caller("operator-static", ("operator",)),
    Caller("no-credential", None),
    Caller("expired", None),
    Caller("forged", None),
    Caller("wrong-secret", None),
    Caller("wrong-audience", None),
    Caller("alg-none", None),
    Caller("unknown-static", None),
    Caller("not-bearer", None),
]


def expected(caller: Caller, permission: Permission) -> str:
    """ "allowed", "PERMISSION_DENIED" or "UNAUTHENTICATED", from the table alone."""
    if caller.roles is None:
        return "UNAUTHENTICATED"
    if any(permission in ROLE_PERMISSIONS[Role(role)] for role in caller.roles):
        return "allowed"
    return "PERMISSION_DENIED"


UNKNOWN_TASK = "00000000000000000000000000000000"


def minimal_request(method: str, task_id: str = UNKNOWN_TASK) -> Any:
    """An almost empty request of the method's type, naming an agent the agent row owns
    and ``task_id``."""
    service_name, _, name = method.lstrip("/").partition("/")
    service = next(s for s in SERVICES if s.full_name == service_name)
    descriptor = service.methods_by_name[name].input_type
    request = message_factory.GetMessageClass(descriptor)()
    if "agent_id" in descriptor.fields_by_name:
        request.agent_id = "agent-own-1"
    if "task_id" in descriptor.fields_by_name:
        request.task_id = task_id
    return request


@pytest.mark.parametrize("caller", CALLERS, ids=lambda c: c.name)
async def test_role_rpc_matrix(caller: Caller, auth_node: Any, keys: Keys) -> None:
    metadata = caller.metadata(keys)
    token = metadata[0][1].split(" ", 1)[-1] if metadata else ""
    # A client gets, watches and cancels its own tasks only (another's, or an unknown one,
    # is PERMISSION_DENIED alike): the task rows name one it submitted.
    task_id = UNKNOWN_TASK
    if caller.roles == ("client",):
        submitted = await auth_node.tasks.SubmitTask(
            task_pb2.SubmitTaskRequest(task_type="t"), metadata=metadata
        )
        task_id = submitted.task.task_id
    wrong: list[str] = []
    for method, permission in sorted(RPC_PERMISSIONS.items()):
        want = expected(caller, permission)
        request = minimal_request(method, task_id)
        code, message = await call_rpc(auth_node.channel, method, request, metadata)
        got = code.name if code in REFUSED else "allowed"
        if got != want:
            wrong.append(f"{method}: expected {want}, got {code.name} {message!r}")
        elif want == "PERMISSION_DENIED":
            if permission.value not in message:
                wrong.append(f"{method}: PERMISSION_DENIED does not name {permission.value}")
        if token and token[-16:] in message:
            wrong.append(f"{method}: the message echoes the token: {message!r}")
        await asyncio.sleep(0)
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("caller_name", "says"),
    [
        ("no-credential", "no credential"),
        ("expired", "token expired"),
        ("forged", "token signature does not verify"),
        ("wrong-secret", "token signature does not verify"),
        ("wrong-audience", "token audience is not aitbc-coordinator"),
        ("alg-none", "token algorithm 'none' is not accepted"),
        ("unknown-static", "unknown static token"),
        ("not-bearer", "must be 'Bearer <token>'"),
    ],
)
async def test_unauthenticated_says_which_check_failed(
    caller_name: str, says: str, auth_node: Any, keys: Keys
) -> None:
    caller = next(c for c in CALLERS if c.name == caller_name)
    method = "/aitbc.coordinator.v1.TaskService/GetStats"
    code, message = await call_rpc(
        auth_node.channel, method, minimal_request(method), caller.metadata(keys)
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert says in message
