"""``python -m coordinator agent`` and ``submit`` as real subprocesses against a real node."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

import grpc
import pytest

from agent_harness import eventually
from aitbc.coordinator.v1 import agent_pb2
from support import REPO


def addr(node: Any) -> str:
    return f"127.0.0.1:{node.port}"


async def _python_m(*args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "coordinator",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _read_until(stream: asyncio.StreamReader, needle: str, timeout_s: float = 20) -> str:
    """Lines of ``stream`` up to and including the first that contains ``needle``."""
    seen = ""
    async with asyncio.timeout(timeout_s):
        while needle not in seen:
            line = await stream.readline()
            if not line:
                raise AssertionError(f"output ended before {needle!r}:\n{seen}")
            seen += line.decode()
    return seen


@pytest.mark.timeout(60)
async def test_demo_agent_command_handles_a_submitted_task(node, make_client):
    agent = await _python_m("agent", "--address", addr(node), "--id", "demo-x")
    assert agent.stdout is not None and agent.stderr is not None
    try:
        await _read_until(agent.stdout, "demo agent connecting")

        async def streaming() -> bool:
            try:
                reply = await node.agents.GetAgent(agent_pb2.GetAgentRequest(agent_id="demo-x"))
            except grpc.aio.AioRpcError:
                return False
            return reply.agent.node_id != ""

        await eventually(streaming, 20, what="the demo agent's stream")

        client = make_client(addr(node))
        task = await client.submit("echo", {"x": 1, "words": ["a", "b"]})
        assert await client.wait(task.task_id, timeout_s=20) == {"x": 1, "words": ["a", "b"]}
        printed = await _read_until(agent.stdout, f"task {task.task_id} done")
        assert f"task {task.task_id} attempt 1: echo" in printed

        submit = await _python_m(
            "submit",
            "--address",
            addr(node),
            "--type",
            "sleep",
            "--data",
            '{"seconds": 0.2}',
            "--wait",
        )
        out, err = await asyncio.wait_for(submit.communicate(), 30)
        assert submit.returncode == 0, err.decode()
        lines = out.decode().splitlines()
        assert lines[0].startswith("submitted task ")
        assert json.loads(lines[-1]) == {"slept_s": 0.2}

        agent.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(agent.wait(), 20) == 0
        assert "[demo-x] agent stopped" in (await agent.stdout.read()).decode()
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await node.agents.GetAgent(agent_pb2.GetAgentRequest(agent_id="demo-x"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        if agent.returncode is None:
            agent.kill()
            await agent.wait()


async def test_submit_command_refuses_data_that_is_not_an_object(node):
    bad = await _python_m("submit", "--address", addr(node), "--type", "echo", "--data", "[1]")
    _, err = await asyncio.wait_for(bad.communicate(), 30)
    assert bad.returncode == 2 and "--data: must be a JSON object" in err.decode()
