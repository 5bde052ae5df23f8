"""Fixtures for the SDK tests: SDK agents and clients bound to real nodes, all stopped at
the end of each test."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from coordinator.sdk import Agent, Backoff, Client, Handler

FAST_BACKOFF = {"initial_s": 0.05, "max_s": 0.5}


class AgentRunner:
    """Starts ``Agent.run()`` in the background and stops every agent at the end."""

    def __init__(self) -> None:
        self.runs: list[tuple[Agent, asyncio.Task[None]]] = []

    async def start(
        self,
        addresses: str | Sequence[str],
        handler: Handler,
        agent_id: str = "sdk-agent",
        *,
        wait_connected: bool = True,
        **options: Any,
    ) -> Agent:
        """An SDK agent running in the background; by default, once its stream is open."""
        options.setdefault("handle_signals", False)
        options.setdefault("reconnect_backoff", Backoff(**FAST_BACKOFF))
        agent = Agent(agent_id, handler, addresses=addresses, **options)
        task = asyncio.create_task(agent.run())
        self.runs.append((agent, task))
        if wait_connected:
            connected = asyncio.create_task(agent.connected.wait())
            await asyncio.wait({connected, task}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()  # surface why run() ended
            assert agent.connected.is_set(), f"agent {agent_id} did not connect within 10 s"
        return agent

    def run_of(self, agent: Agent) -> asyncio.Task[None]:
        """The task running ``agent.run()``."""
        return next(task for a, task in self.runs if a is agent)

    async def stop_all(self) -> None:
        for agent, task in self.runs:
            agent.request_stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), 15)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


@pytest.fixture
async def sdk_agents() -> AsyncIterator[AgentRunner]:
    """``await sdk_agents.start(address, handler, agent_id, **Agent options)``."""
    runner = AgentRunner()
    yield runner
    await runner.stop_all()


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., Client]]:
    """``make_client(addresses, **options)``: Clients closed at the end."""
    clients: list[Client] = []

    def make(addresses: str | Sequence[str], **options: Any) -> Client:
        client = Client(addresses, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
