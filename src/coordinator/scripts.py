"""The named Lua scripts of ``coordinator/lua``, loaded once and bound to a Redis client.

Each script documents its KEYS and ARGV at the top of its file. redis-py sends EVALSHA and
falls back to EVAL (loading the script) after a Redis restart.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

SCRIPT_NAMES = (
    "register_agent",
    "heartbeat",
    "update_agent_status",
    "deregister_agent",
    "sweep_stale_agents",
    "discover_agents",
)


@cache
def source(name: str) -> str:
    """The Lua source of one named script."""
    if name not in SCRIPT_NAMES:
        raise KeyError(f"no Lua script named {name!r}")
    return resources.files("coordinator").joinpath("lua", f"{name}.lua").read_text()


class Scripts:
    """Every named script, registered on one Redis client."""

    def __init__(self, redis: Redis) -> None:
        self.register_agent = self._bind(redis, "register_agent")
        self.heartbeat = self._bind(redis, "heartbeat")
        self.update_agent_status = self._bind(redis, "update_agent_status")
        self.deregister_agent = self._bind(redis, "deregister_agent")
        self.sweep_stale_agents = self._bind(redis, "sweep_stale_agents")
        self.discover_agents = self._bind(redis, "discover_agents")

    @staticmethod
    def _bind(redis: Redis, name: str) -> AsyncScript:
        return redis.register_script(source(name))
