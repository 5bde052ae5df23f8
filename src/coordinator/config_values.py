"""How each configuration variable's text becomes a value (``config.load_settings`` calls
these): one parser a kind of value, each raising ValueError with what is wrong, which the
reader turns into ConfigError naming the variable."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import urlparse

from coordinator import tls
from coordinator.strategies import Strategy

_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_AGENT_TYPE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*|[A-Za-z0-9._-]+)$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
REFLECTION_MODES = ("authenticated", "open")
ANY_AGENT_TYPE = "*"
"""In COORDINATOR_AGENT_TYPES: any agent type is accepted."""

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration variable has a bad value; the message names the variable."""


class Reader:
    """Reads each variable once: its default when unset or blank, else its parser's value;
    ConfigError naming the variable when the parser refuses it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = values

    def get(self, name: str, default: T, parse: Callable[[str], T]) -> T:
        raw = self._values.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc} (got {raw!r})") from None


def host(raw: str) -> str:
    if not _HOST.match(raw):
        raise ValueError("must be a host name, an IPv4 address or an IPv6 address (:: or [::])")
    return raw


def file_path(raw: str) -> str:
    # Read (and checked) when the node starts, by the module that uses it: a missing or
    # invalid file is then a ConfigError naming this variable, and the node does not start.
    if len(raw) > 4096 or not raw.isprintable():
        raise ValueError("must be a file path")
    return raw


def name(raw: str) -> str:
    if len(raw) > 256 or not raw.isprintable():
        raise ValueError("must be at most 256 printable characters")
    return raw


def reflection(raw: str) -> str:
    value = raw.lower()
    if value not in REFLECTION_MODES:
        raise ValueError(f"must be one of {', '.join(REFLECTION_MODES)} (any case)")
    return value


def connections(raw: str) -> int:
    value = int(raw)
    if not 4 <= value <= 10_000:
        raise ValueError("must be a connection count from 4 to 10000")
    return value


def workers(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 256:
        raise ValueError("must be a number of worker processes from 1 to 256")
    return value


def batch_tasks(raw: str) -> int:
    value = int(raw)
    if not 1000 <= value <= 1_000_000:
        raise ValueError("must be a number of tasks from 1000 (one full batch) to 1000000")
    return value


def quota_rate(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= 1_000_000:
        raise ValueError("must be a number of tasks per second from 0 (no limit) to 1000000")
    return value


def quota_burst(raw: str) -> float:
    value = float(raw)
    if not 1 <= value <= 1_000_000:
        raise ValueError("must be a number of tasks from 1 to 1000000 (empty: twice the rate)")
    return value


def quota_tasks(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 1_000_000_000:
        raise ValueError("must be a number of tasks from 0 (no limit) to 1000000000")
    return value


def redis_url(raw: str) -> str:
    parsed = urlparse(raw)
    if parsed.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    if parsed.scheme != "unix" and not parsed.hostname:
        raise ValueError("must name a host, as in redis://host:6379/1")
    return raw


def sentinels(raw: str) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port``: the Sentinel set (port 26379 when left out)."""
    found = []
    for entry in (e.strip() for e in raw.split(",")):
        if entry.startswith("["):  # [IPv6]:port
            name, _, rest = entry[1:].partition("]")
            number = rest.removeprefix(":")
        elif entry.count(":") == 1:
            name, number = entry.split(":")
        else:
            name, number = entry, ""
        if not name or not _HOST.match(name):
            raise ValueError("must be sentinels as host:port,host:port")
        found.append((name, port(number) if number else 26379))
    return tuple(found)


_CLUSTER_TAG = re.compile(r"[A-Za-z0-9._-]{1,64}")


def cluster_tag(raw: str) -> str:
    """The Redis Cluster hash tag of every key (empty: a single Redis, no tag)."""
    if raw and not _CLUSTER_TAG.fullmatch(raw):
        raise ValueError("must be 1-64 letters, digits, '.', '_' or '-' (no braces), such as aitbc")
    return raw


def sentinel_master(raw: str) -> str:
    if not raw.isprintable() or " " in raw or len(raw) > 200:
        raise ValueError("must be the master set name the sentinels monitor, such as mymaster")
    return raw


def replicas(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 100:
        raise ValueError("must be a replica count from 0 (no waiting) to 100")
    return value


def replica_timeout_ms(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 60_000:
        raise ValueError("must be milliseconds from 1 to 60000")
    return value


def port(raw: str) -> int:
    port = int(raw)
    if not 0 <= port <= 65535:
        raise ValueError("must be a port number from 0 to 65535")
    return port


def positive(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a number of seconds greater than 0")
    return value


def retained_tasks(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 1_000_000_000:
        raise ValueError("must be a number of tasks from 0 (no bound by count) to 1000000000")
    return value


def ratio(raw: str) -> float:
    """A share: a number above 0 and at most 1."""
    value = float(raw)
    if not 0 < value <= 1:
        raise ValueError("must be a share above 0 and at most 1, such as 0.9")
    return value


def non_negative(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a number of seconds, 0 or more")
    return value


def msg_size(raw: str) -> int:
    value = int(raw)
    if not 64 * 1024 <= value <= 256 * 1024 * 1024:
        raise ValueError("must be a byte count from 65536 to 268435456")
    return value


def queue_events(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 1_000_000:
        raise ValueError("must be an event count from 1 to 1000000")
    return value


def queue_bytes(raw: str) -> int:
    value = int(raw)
    if not 64 * 1024 <= value <= 1024 * 1024 * 1024:
        raise ValueError("must be a byte count from 65536 to 1073741824")
    return value


def node_id(raw: str) -> str:
    if not _NODE_ID.match(raw):
        raise ValueError(
            "must be 1 to 128 letters, digits or . _ : - starting with a letter or digit"
        )
    return raw


def agent_types(raw: str) -> tuple[str, ...]:
    types = tuple(dict.fromkeys(t.strip() for t in raw.split(",") if t.strip()))
    if not types:
        raise ValueError("must list at least one agent type, or *")
    for agent_type in types:
        if agent_type != ANY_AGENT_TYPE and not _AGENT_TYPE.match(agent_type):
            raise ValueError(f"{agent_type!r} is not a valid agent type ([a-z][a-z0-9_-]*)")
    return types


def strategy(raw: str) -> str:
    return Strategy.parse(raw).name.lower()


def task_data_size(raw: str) -> int:
    value = int(raw)
    if not 1024 <= value <= 256 * 1024 * 1024:
        raise ValueError("must be a byte count from 1024 to 268435456")
    return value


def struct_depth(raw: str) -> int:
    # 32 is the most every protobuf reader can parse back (api.wire.MAX_STRUCT_DEPTH).
    value = int(raw)
    if not 1 <= value <= 32:
        raise ValueError("must be a number of levels from 1 to 32")
    return value


def certificates_file(raw: str) -> str:
    try:
        tls.read_certificates(raw)
    except OSError as exc:
        raise ValueError(f"cannot read the file: {exc.strerror or exc}") from None
    return raw


def private_key_file(raw: str) -> str:
    try:
        tls.read_private_key(raw)
    except OSError as exc:
        raise ValueError(f"cannot read the file: {exc.strerror or exc}") from None
    return raw


def log_level(raw: str) -> str:
    level = raw.upper()
    if level not in _LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
    return level


def boolean(raw: str) -> bool:
    value = raw.lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"must be one of {', '.join(_TRUE + _FALSE)} (any case)")


def log_format(raw: str) -> str:
    value = raw.lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"must be one of {', '.join(LOG_FORMATS)} (any case)")
    return value
