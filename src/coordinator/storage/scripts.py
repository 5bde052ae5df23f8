"""The named Lua scripts of ``coordinator/storage/lua``, loaded once and bound to a Redis client.

Each script documents its KEYS and ARGV at the top of its file. redis-py sends EVALSHA and
loads the script (SCRIPT LOAD) when Redis does not know it, after a restart; ``run_batch``
does the same for a batch.

Every script is sent with the helpers of ``lua/availability_lib.lua`` it uses (which keep
``agents:available`` exact: the registry's scripts change status and liveness, the task
scripts slots and streams). Task scripts draw on more helpers (``TASK_HELPERS``): the
tables of ``finished_records``, ``lua/quota_lib.lua`` (the principals' quotas),
``lua/finished_lib.lua`` (reading finished tasks' compact form), ``lua/packing_lib.lua``
(writing that form), ``lua/archive_lib.lua`` (the archive of finished tasks),
``lua/rotation_lib.lua`` (round robin and the hash ring inside Redis) and
``lua/task_lib.lua``, then comes its own file. Only the
helpers a script reaches are sent, and its key names (``K.queue``: the names of
``keys.TASK_SCRIPT_KEYS``, and ``K.publish``, the command that publishes on a channel:
SPUBLISH with a hash tag) are written in as literals (``lua_source``): Redis runs the
whole text every call. The task scripts' keys are
built inside the script, because which agent or queue a task touches is only
known there; like the registry's, they run on a single Redis, or on Redis Cluster when every
key carries one hash tag (``key_tags``): then the literals are tagged too, and all a script
touches is in one slot. A script's source is built for the tag in use when it is asked for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

from coordinator.storage import finished_records, key_tags, keys, lua_source
from coordinator.storage.multiplex import MultiplexedConnection

SCRIPT_NAMES = (
    "register_agent",
    "heartbeat",
    "update_agent_status",
    "deregister_agent",
    "sweep_stale_agents",
    "discover_agents",
)

TASK_SCRIPT_NAMES = (
    "submit_task",
    "dispatch_turn",
    "dispatch_snapshot",
    "queue_heads",
    "assign_task",
    "report_task",
    "release_task",
    "cancel_task",
    "promote_due_tasks",
    "expire_tasks",
    "connect_stream",
    "disconnect_stream",
    "forget_finished_tasks",
    "compact_finished_tasks",
    "list_index_entries",
    "rebuild_available",
    "holders_in_doubt",
)


AGENT_HELPERS = ("availability_lib",)
TASK_HELPERS = (
    "availability_lib",
    "quota_lib",
    "finished_lib",
    "packing_lib",
    "archive_lib",
    "rotation_lib",
    "task_lib",
)
"""The helper files of ``lua/`` the registry's and the task scripts draw on, in the order
they are defined in (each may use those before it); a script gets those it reaches."""


def source(name: str) -> str:
    """The Lua source of one named script, its keys spelled with the hash tag in use."""
    return _source(name, key_tags.current_tag())


@dataclass(frozen=True, slots=True)
class ScriptText:
    """A script as Redis knows it: its SHA1 and its source."""

    sha: str
    script: str | bytes | memoryview

    @classmethod
    def of(cls, script: str) -> ScriptText:
        return cls(hashlib.sha1(script.encode()).hexdigest(), script)


ENTRIES_FORM: dict[str, ScriptText] = {}
"""The entries form (``lua_source.ENTRIES_LOOP``) of every named script, by the SHA1 of its
own form: ``run_batch`` sends consecutive calls of one script as entries of one call."""


@cache
def _source(name: str, tag: str) -> str:  # the tag: a key of the cache, the literals spell it
    own = _assembled(name, entries=False)
    ENTRIES_FORM[ScriptText.of(own).sha] = ScriptText.of(_assembled(name, entries=True))
    return own


def _assembled(name: str, *, entries: bool) -> str:
    if name in SCRIPT_NAMES:
        helpers = [(f"{lib}.lua", _read(lib)) for lib in AGENT_HELPERS]
    elif name in TASK_SCRIPT_NAMES:
        helpers = [
            ("finished_records.lua_tables()", finished_records.lua_tables()),
            *((f"{lib}.lua", _read(lib)) for lib in TASK_HELPERS),
        ]
    else:
        raise KeyError(f"no Lua script named {name!r}")
    return lua_source.assembled(_read(name), helpers, _key_names(), entries=entries)


def _read(name: str) -> str:
    return resources.files("coordinator.storage").joinpath("lua", f"{name}.lua").read_text()


def _key_names() -> dict[str, str]:
    # Redis Cluster broadcasts a PUBLISH to every node of the cluster; SPUBLISH (sharded
    # pub/sub, Redis 7) keeps it on the shard of the channel's slot, the tag's.
    publish = "SPUBLISH" if key_tags.current_tag() else "PUBLISH"
    return {**keys.TASK_SCRIPT_KEYS, "publish": publish}


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


class TaskScripts:
    """Every task script, registered on one Redis client. Call with ``args=[...]`` only."""

    def __init__(self, redis: Redis) -> None:
        for name in TASK_SCRIPT_NAMES:
            setattr(self, name, redis.register_script(source(name)))

    submit_task: AsyncScript
    dispatch_turn: AsyncScript
    dispatch_snapshot: AsyncScript
    queue_heads: AsyncScript
    assign_task: AsyncScript
    report_task: AsyncScript
    release_task: AsyncScript
    cancel_task: AsyncScript
    promote_due_tasks: AsyncScript
    expire_tasks: AsyncScript
    connect_stream: AsyncScript
    disconnect_stream: AsyncScript
    forget_finished_tasks: AsyncScript
    compact_finished_tasks: AsyncScript
    list_index_entries: AsyncScript
    rebuild_available: AsyncScript
    holders_in_doubt: AsyncScript


ScriptCall = tuple[AsyncScript, Sequence[str], Sequence[Any]]
"""One call of a script in a batch: the script, its KEYS and its ARGV."""


@dataclass(frozen=True, slots=True)
class PiggybackCalls:
    """Script calls that ride at the end of another batch, to share its round trip."""

    calls: list[ScriptCall]
    take_replies: Callable[[list[Any], list[Any], bool], None]
    """Takes the batch's own replies, then these calls' (errors included, as exception
    objects), and whether these ran after every call of the batch: False when one of those
    had to be sent again after them (its script was loaded after a NOSCRIPT)."""


ENTRIES_PER_CALL = 128
"""Most calls of one script sent as the entries of one call (which holds Redis while they
all run, as the calls sent together would)."""


@dataclass(frozen=True, slots=True)
class _Command:
    """One EVALSHA of a batch: ``count`` calls from ``first``, one call of the script
    ``text``, or (``entries``: more than one) the entries of one call of its entries form."""

    text: ScriptText
    first: int
    count: int
    argv: tuple[Any, ...]

    @property
    def entries(self) -> bool:
        return self.count > 1

    def wire(self) -> tuple[Any, ...]:
        return ("EVALSHA", self.text.sha, *self.argv)


def _commands(calls: Sequence[ScriptCall], start: int, end: int) -> list[_Command]:
    """The EVALSHAs for calls[start:end]: each run of calls of one script without KEYS that
    has an entries form, in entries of at most ENTRIES_PER_CALL; any other call alone."""
    commands: list[_Command] = []
    i = start
    while i < end:
        script, keys, args = calls[i]
        form = ENTRIES_FORM.get(script.sha) if not keys else None
        j = i + 1
        while (
            form is not None
            and j < end
            and j - i < ENTRIES_PER_CALL
            and calls[j][0].sha == script.sha
            and not calls[j][1]
        ):
            j += 1
        if form is not None and j - i > 1:
            argv: list[Any] = [0]
            for _, _, entry in calls[i:j]:
                argv += (len(entry), *entry)
            commands.append(_Command(form, i, j - i, tuple(argv)))
        else:
            text = ScriptText(script.sha, script.script)
            commands.append(_Command(text, i, 1, (len(keys), *keys, *args)))
        i = j
    return commands


async def run_batch(
    connection: MultiplexedConnection,
    calls: Sequence[ScriptCall],
    *,
    raise_on_error: bool = True,
    piggyback: PiggybackCalls | None = None,
) -> list[Any]:
    """Run many script calls in one write on the node's shared connection: one round trip.

    Sends EVALSHA only; consecutive calls of one script go as the entries of one call of
    its entries form (``ENTRIES_FORM``): they run in order, each as if alone, its reply or
    error its own. A call refused with NOSCRIPT (Redis restarted, or SCRIPT FLUSH) did
    not run, so it is sent again after its script is loaded (SCRIPT LOAD, in the same
    write). Returns the replies in order. A script's error is raised (the first), like a single call's, or with
    ``raise_on_error=False`` left in its place so that the other replies are not lost; an
    outage (no connection, a timeout) always raises. A ``piggyback``'s calls run after
    ``calls``; its ``take_replies`` gets every reply (before any error is raised), and only
    the batch's own are returned.
    """
    own = len(calls)
    if piggyback is not None:
        calls = [*calls, *piggyback.calls]
    if not calls:
        return []
    commands = [*_commands(calls, 0, own), *_commands(calls, own, len(calls))]
    replies = await connection.execute([command.wire() for command in commands])
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        # Each script missing is loaded once, in the same write as the calls sent again: a
        # batch of a hundred calls after a restart sends its script once, not a hundred times.
        loads = {commands[i].text.sha: commands[i].text.script for i in missing}
        again = await connection.execute(
            [
                *(("SCRIPT", "LOAD", script) for script in loads.values()),
                *(commands[i].wire() for i in missing),
            ]
        )
        for i, reply in zip(missing, again[len(loads) :], strict=True):
            replies[i] = reply
    by_call: list[Any] = []
    for command, reply in zip(commands, replies, strict=True):
        if not command.entries:
            by_call.append(reply)
        elif isinstance(reply, Exception):
            by_call += [reply] * command.count  # refused as a whole: none of them ran
        elif not isinstance(reply, list) or len(reply) != command.count:
            by_call += [ResponseError("an entries form gave no reply per entry")] * command.count
        else:
            by_call += reply
    replies = by_call
    if piggyback is not None:
        replies, piggybacked = replies[:own], replies[own:]
        piggyback.take_replies(
            replies, piggybacked, not (missing and commands[missing[0]].first < own)
        )
    if raise_on_error:
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
    return replies
