"""End to end on a secured cluster: two nodes on one Redis with TLS and JWT authentication,
an SDK agent on one node, SDK clients on the other, and the real grpcurl, as deployed."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from coordinator.sdk import RpcError, TaskContext, TlsOptions
from tls_support import Pki

SECRET = "cluster-secret-" + "s" * 40
GRPCURL = shutil.which("grpcurl", path=os.path.dirname(sys.executable))
TASK_SERVICE = "aitbc.coordinator.v1.TaskService"


def mint(subject: str, roles: list[str], agents: list[str] | None = None) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "roles": roles,
        "aud": "aitbc-coordinator",
        "iat": now,
        "exp": now + 600,
    }
    if agents is not None:
        claims["agents"] = agents
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def grpcurl(ca_file: Path, port: int, token: str | None, *args: str) -> tuple[int, str, str]:
    """Run the real grpcurl (asynchronously: the nodes share this event loop); returns its
    exit code, stdout and stderr."""
    assert GRPCURL, "grpcurl is not installed next to the interpreter"
    auth = ["-H", f"authorization: Bearer {token}"] if token else []
    process = await asyncio.create_subprocess_exec(
        GRPCURL,
        "-cacert",
        str(ca_file),
        *auth,
        *args[:-1],
        f"localhost:{port}",
        args[-1],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def echo(task: TaskContext) -> dict[str, Any]:
    return {"echo": task.data["n"]}


async def test_two_secured_nodes_serve_sdk_agents_clients_and_grpcurl(
    start_node, sdk_agents, make_client, tmp_path
):
    pki = Pki.create(tmp_path / "pki")
    secret_file = tmp_path / "hs256.secret"
    secret_file.write_text(SECRET)
    secured = {**pki.node_settings(), "auth_jwt_hs256_secret_file": str(secret_file)}
    node_a = await start_node(node_id="secure-a", **secured)
    node_b = await start_node(node_id="secure-b", **secured)
    tls = TlsOptions(str(pki.ca_file))

    await sdk_agents.start(
        f"localhost:{node_a.port}",
        echo,
        "secure-agent-1",
        tls=tls,
        token=mint("fleet", ["agent"], ["secure-agent-*"]),
        max_concurrency=4,
    )
    alice = make_client(f"localhost:{node_b.port}", tls=tls, token=mint("alice", ["client"]))
    submitted = [await alice.submit("echo", {"n": n}) for n in range(20)]
    for n, task in enumerate(submitted):
        assert await alice.wait(task.task_id, timeout_s=20) == {"echo": n}
    first = await alice.get(submitted[0].task_id)
    assert first.submitted_by == "alice"
    assert first.agent_id == "secure-agent-1"

    # Another client of the same cluster may not read alice's task, on either node.
    for node in (node_a, node_b):
        mallory = make_client(f"localhost:{node.port}", tls=tls, token=mint("mallory", ["client"]))
        with pytest.raises(RpcError) as caught:
            await mallory.get(submitted[0].task_id)
        assert caught.value.code.name == "PERMISSION_DENIED"

    # grpcurl: a reader lists alice's tasks through node A; no token is UNAUTHENTICATED.
    code, out, err = await grpcurl(
        pki.ca_file,
        node_a.port,
        mint("dashboard", ["reader"]),
        "-d",
        json.dumps({"page_size": 100}),
        f"{TASK_SERVICE}/ListTasks",
    )
    assert code == 0, err
    tasks = json.loads(out)["tasks"]
    assert {t["taskId"] for t in tasks} == {t.task_id for t in submitted}
    assert {t["submittedBy"] for t in tasks} == {"alice"}
    code, _, err = await grpcurl(
        pki.ca_file, node_a.port, None, "-d", "{}", f"{TASK_SERVICE}/GetStats"
    )
    assert code != 0
    assert "Unauthenticated" in err and "no credential" in err, err
