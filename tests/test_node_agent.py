"""The Node.js example agent (examples/node-agent/agent.js, on @grpc/grpc-js and the stubs
in generated/js) against real coordinator nodes: it registers, streams, heartbeats, runs
tasks submitted from Python, drops cancelled ones, follows a draining node to another,
reopens a stream the coordinator no longer sees, and deregisters on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from google.protobuf.json_format import MessageToDict

from agent_harness import eventually, submit_request, wait_for_state
from aitbc.coordinator.v1 import agent_pb2, task_pb2, task_pb2_grpc
from coordinator.storage import keys
from support import REPO
from tls_support import Pki

AGENT_DIR = REPO / "examples" / "node-agent"
NODE = shutil.which("node")

if NODE is None and os.environ.get("CI") != "true":
    pytest.skip("node is not installed (CI installs it)", allow_module_level=True)


class NodeAgent:
    """``node agent.js`` as a subprocess; its stdout lines (``event=... key=value``) are kept."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._new_line = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(raw.decode().rstrip("\n"))
            self._new_line.set()

    async def wait_for_line(self, pattern: str, timeout_s: float = 10.0) -> str:
        """The first output line matching ``pattern`` (a regex), waiting for it if need be."""

        async def find() -> str:
            while True:
                self._new_line.clear()
                for line in self.lines:
                    if re.search(pattern, line):
                        return line
                if self._reader.done():
                    raise AssertionError(f"agent exited without printing {pattern!r}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._new_line.wait(), 0.5)

        try:
            return await asyncio.wait_for(find(), timeout_s)
        except TimeoutError:
            output = "\n".join(self.lines)
            raise AssertionError(f"no line matching {pattern!r}; output:\n{output}") from None

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await self._reader


@pytest.fixture
async def spawn_agent() -> AsyncIterator[Callable[..., Awaitable[NodeAgent]]]:
    """``await spawn_agent(address, agent_id)``: run the Node agent; all are killed at the end."""
    assert NODE, "node is not installed: CI must install nodejs (see .ci/run)"
    assert (AGENT_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir(), (
        "examples/node-agent/node_modules is missing: `make test` runs npm ci there"
    )
    agents: list[NodeAgent] = []

    async def spawn(
        address: str, agent_id: str, *args: str, env: dict[str, str] | None = None
    ) -> NodeAgent:
        process = await asyncio.create_subprocess_exec(
            NODE,
            str(AGENT_DIR / "agent.js"),
            "--address",
            address,
            "--agent-id",
            agent_id,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        agent = NodeAgent(process)
        agents.append(agent)
        return agent

    yield spawn
    for agent in agents:
        await agent.close()


async def stream_node(node, agent_id: str) -> str:
    """The node holding the agent's StreamAssignments, once it is registered and streaming."""

    async def probe() -> str:
        try:
            reply = await node.agents.GetAgent(agent_pb2.GetAgentRequest(agent_id=agent_id))
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return ""
        return reply.agent.node_id

    return await eventually(probe, what=f"agent {agent_id} to open its stream")


async def test_completes_tasks_then_deregisters_on_sigterm(node, spawn_agent):
    agent = await spawn_agent(f"127.0.0.1:{node.port}", "node-agent-1", "--max-concurrency", "2")
    assert await stream_node(node, "node-agent-1") == "test-node"

    payloads = [{"n": n, "text": f"task {n}", "nested": {"ok": True}} for n in range(5)]
    task_ids = []
    for payload in payloads:
        request = submit_request(data=payload, task_type="echo")
        request.requirements.agent_id = "node-agent-1"
        task_ids.append((await node.tasks.SubmitTask(request)).task.task_id)

    for task_id, payload in zip(task_ids, payloads, strict=True):
        task = await wait_for_state(node.tasks, task_id, task_pb2.TASK_STATE_COMPLETED)
        assert MessageToDict(task.result) == {
            "handled_by": "node",
            "agent_id": "node-agent-1",
            "echo": payload,
        }
        assert [(a.attempt, a.agent_id) for a in task.attempts] == [(1, "node-agent-1")]

    agent.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(agent.process.wait(), 10) == 0
    await agent.wait_for_line(r"event=deregistered .*existed=true")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await node.agents.GetAgent(agent_pb2.GetAgentRequest(agent_id="node-agent-1"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_drops_a_cancelled_task(node, spawn_agent):
    agent = await spawn_agent(f"127.0.0.1:{node.port}", "node-agent-2")
    await stream_node(node, "node-agent-2")
    # delay_ms keeps the example's work running until the cancel notice arrives.
    task_id = (await node.tasks.SubmitTask(submit_request(data={"delay_ms": 60_000}))).task.task_id
    await wait_for_state(node.tasks, task_id, task_pb2.TASK_STATE_RUNNING)

    await node.tasks.CancelTask(task_pb2.CancelTaskRequest(task_id=task_id, reason="not needed"))
    await agent.wait_for_line(rf'event=cancel .*task_id={task_id} .*reason="not needed"')
    await agent.wait_for_line(rf"event=dropped .*task_id={task_id}")
    task = await wait_for_state(node.tasks, task_id, task_pb2.TASK_STATE_CANCELLED)
    assert not task.HasField("result")


async def test_follows_a_draining_node_to_the_next_address(start_node, spawn_agent):
    node_a = await start_node(node_id="node-a")
    node_b = await start_node(node_id="node-b")
    addresses = f"127.0.0.1:{node_a.port},127.0.0.1:{node_b.port}"
    agent = await spawn_agent(addresses, "node-agent-3")
    assert await stream_node(node_b, "node-agent-3") == "node-a"

    await node_a.coordinator.stop(grace_s=1)
    await agent.wait_for_line(r"event=node_draining .*node_id=node-a")

    async def on_node_b() -> bool:
        return await stream_node(node_b, "node-agent-3") == "node-b"

    await eventually(on_node_b, what="the agent's stream to move to node-b")
    task_id = (await node_b.tasks.SubmitTask(submit_request(data={"after": "drain"}))).task.task_id
    task = await wait_for_state(node_b.tasks, task_id, task_pb2.TASK_STATE_COMPLETED)
    assert task.result["handled_by"] == "node"


async def test_reopens_the_stream_when_a_heartbeat_is_refused(node, spawn_agent, redis_client):
    agent = await spawn_agent(f"127.0.0.1:{node.port}", "node-agent-4")
    await agent.wait_for_line(r"event=stream_ready")
    # What a half-open connection looks like to the coordinator: no stream for the agent.
    assert await redis_client.hdel(keys.AGENTS_CONNECTED, "node-agent-4") == 1

    await agent.wait_for_line(r"event=heartbeat_failed .*code=FAILED_PRECONDITION")
    await agent.wait_for_line(r"event=stream_ended .*reason=heartbeat_refused")

    async def reopened() -> bool:
        return sum("event=stream_ready" in line for line in agent.lines) >= 2

    await eventually(reopened, what="a second StreamReady")
    task_id = (await node.tasks.SubmitTask(submit_request(data={"x": 1}))).task.task_id
    task = await wait_for_state(node.tasks, task_id, task_pb2.TASK_STATE_COMPLETED)
    assert MessageToDict(task.result)["echo"] == {"x": 1}


async def tls_round_trip(pki: Pki, address: str, agent_id: str) -> None:
    """Submit a task for ``agent_id`` over TLS (with a client certificate) and wait for it."""
    client = pki.client("submitter", "client")
    async with grpc.aio.secure_channel(address, pki.channel_credentials(client)) as channel:
        tasks = task_pb2_grpc.TaskServiceStub(channel)
        request = submit_request(data={"over": "tls"}, task_type="echo")
        request.requirements.agent_id = agent_id
        task_id = (await tasks.SubmitTask(request)).task.task_id
        task = await wait_for_state(tasks, task_id, task_pb2.TASK_STATE_COMPLETED)
    assert MessageToDict(task.result)["echo"] == {"over": "tls"}


async def test_runs_over_mutual_tls(start_node, spawn_agent, tmp_path):
    pki = Pki.create(tmp_path / "pki")
    node = await start_node(**pki.node_settings(client_ca=True))
    address = f"localhost:{node.port}"
    cert, key = pki.client("node-agent-tls", "agent")
    env = {
        "AITBC_TLS_CA_FILE": str(pki.ca_file),
        "AITBC_TLS_CERT_FILE": str(cert),
        "AITBC_TLS_KEY_FILE": str(key),
    }
    agent = await spawn_agent(address, "node-agent-tls", env=env)
    await agent.wait_for_line(r"event=stream_ready")
    await tls_round_trip(pki, address, "node-agent-tls")

    # Without its client certificate the handshake fails: the agent cannot register.
    refused = await spawn_agent(
        address, "node-agent-no-cert", env={"AITBC_TLS_CA_FILE": str(pki.ca_file)}
    )
    await refused.wait_for_line(r"event=register_failed .*code=UNAVAILABLE")


async def test_runs_over_tls_with_a_token(start_node, spawn_agent, tmp_path):
    # A node without authentication configured ignores the token: this checks TLS and that
    # a token file is accepted; the node's verification of it is tested with authentication.
    pki = Pki.create(tmp_path / "pki")
    node = await start_node(**pki.node_settings())
    address = f"localhost:{node.port}"
    token_file = tmp_path / "agent.token"
    token_file.write_text("node-agent-token\n")
    env = {"AITBC_TLS_CA_FILE": str(pki.ca_file), "AITBC_TOKEN_FILE": str(token_file)}
    agent = await spawn_agent(address, "node-agent-token", env=env)
    await agent.wait_for_line(r"event=stream_ready")
    await tls_round_trip(pki, address, "node-agent-token")


async def test_refuses_to_send_a_token_in_the_clear_across_a_network(spawn_agent, tmp_path):
    token_file = tmp_path / "agent.token"
    token_file.write_text("secret\n")
    agent = await spawn_agent(
        "10.255.0.1:9001", "node-agent-x", env={"AITBC_TOKEN_FILE": str(token_file)}
    )
    assert await asyncio.wait_for(agent.process.wait(), 10) == 2
    await agent.wait_for_line(r"a token is sent only over TLS")
