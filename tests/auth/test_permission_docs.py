"""The proto comments (what `grpcurl describe` shows) state each RPC's permission and roles
exactly as the one authorization table does."""

from __future__ import annotations

import re

from coordinator.auth.permissions import RPC_PERMISSIONS, roles_holding
from support import REPO

PROTOS = sorted((REPO / "protos").rglob("*.proto"))
_RPC = re.compile(r"((?:^  //.*\n)+)^  rpc (\w+)\(", re.M)
_PERMISSION = re.compile(r"^  // Permission: ([a-z_.]+) \(roles: ([^)]*)\)\.$", re.M)


def documented() -> dict[str, tuple[str, set[str]]]:
    """RPC name -> (permission, role names) as its proto comment states them."""
    found: dict[str, tuple[str, set[str]]] = {}
    for proto in PROTOS:
        for comment, rpc in _RPC.findall(proto.read_text()):
            match = _PERMISSION.search(comment)
            assert match, f"{proto.name}: rpc {rpc} has no 'Permission: ... (roles: ...).' line"
            # "agent for its own agent ids, reader, operator": each role's first word.
            roles = {part.split()[0] for part in match.group(2).split(",")}
            found[rpc] = (match.group(1), roles)
    return found


def test_every_rpc_comment_names_its_permission_and_roles():
    stated = documented()
    assert set(stated) == {path.rsplit("/", 1)[1] for path in RPC_PERMISSIONS}
    for path, permission in RPC_PERMISSIONS.items():
        rpc = path.rsplit("/", 1)[1]
        assert stated[rpc][0] == permission.value, rpc
        assert stated[rpc][1] == {role.value for role in roles_holding(permission)}, rpc
