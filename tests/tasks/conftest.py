"""Fixtures of the task tests that run the Lua scripts on their own."""

from __future__ import annotations

import pytest

from coordinator.agents.registry import AgentRegistry
from coordinator.config import Settings
from coordinator.storage.scripts import TaskScripts
from script_support import LIVENESS_MS


@pytest.fixture
def scripts(redis_client) -> TaskScripts:
    return TaskScripts(redis_client)


@pytest.fixture
def registry(redis_client) -> AgentRegistry:
    return AgentRegistry(redis_client, Settings(liveness_timeout_s=LIVENESS_MS / 1000))
