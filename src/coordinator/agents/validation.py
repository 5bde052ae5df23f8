"""Checks on everything a client sends, collecting every violation with its field path.

Functions here take plain Python values (the API layer unpacks protobuf messages first) and
return validated domain objects or raise ``InvalidArgument``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

from coordinator.agents.records import AgentRegistration, AgentStatus, DiscoverQuery
from coordinator.errors import echo
from coordinator.violations import Violations

AGENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
AGENT_TYPE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,127}$")
"""Capabilities and services."""
MAP_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
"""Keys of labels, endpoints, metadata and load metrics (no ``=``: label index keys use it)."""

MAX_TAGS = 64
MAX_LABELS = 64
MAX_ENDPOINTS = 16
MAX_METADATA = 64
MAX_LOAD_METRICS = 32
MAX_LABEL_VALUE_CHARS = 256
MAX_ENDPOINT_VALUE_CHARS = 512
MAX_METADATA_VALUE_CHARS = 4096
MAX_METADATA_TOTAL_CHARS = 64 * 1024
MAX_CONCURRENCY = 1024
MAX_WEIGHT = 1000.0
MAX_REASON_CHARS = 256
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100

HEARTBEAT_STATUSES = (AgentStatus.ACTIVE, AgentStatus.BUSY)
SETTABLE_STATUSES = (
    AgentStatus.ACTIVE,
    AgentStatus.BUSY,
    AgentStatus.MAINTENANCE,
    AgentStatus.ERROR,
)


def agent_id(value: str, field: str = "agent_id") -> str:
    """A well-formed agent id, or InvalidArgument naming ``field``."""
    violations = Violations()
    _check_agent_id(value, field, violations)
    violations.raise_if_any()
    return value


def _check_agent_id(value: str, field: str, violations: Violations) -> None:
    if not value:
        violations.add(field, "is required")
    elif not AGENT_ID.match(value):
        violations.add(
            field,
            "must be 1 to 128 letters, digits or . _ : - starting with a letter or digit",
        )


def _check_agent_type(
    value: str, field: str, allowed: Iterable[str], any_type: bool, violations: Violations
) -> None:
    allowed = tuple(allowed)
    if not value:
        violations.add(field, "is required")
    elif not AGENT_TYPE.match(value):
        violations.add(field, "must be 1 to 64 of a-z 0-9 _ - starting with a letter")
    elif not any_type and value not in allowed:
        violations.add(field, f"{echo(value)} is not allowed; allowed types: {', '.join(allowed)}")


def tags(values: Iterable[str], field: str, violations: Violations) -> tuple[str, ...]:
    unique = tuple(dict.fromkeys(values))
    if len(unique) > MAX_TAGS:
        violations.add(field, f"has {len(unique)} entries; at most {MAX_TAGS}")
    for index, tag in enumerate(unique):
        if not TAG.match(tag):
            violations.add(
                f"{field}[{index}]",
                f"{echo(tag)} must be 1 to 128 letters, digits or . _ : / + - starting with a letter or digit",
            )
    return unique


def _string_map(
    values: Mapping[str, str],
    field: str,
    max_entries: int,
    max_value_chars: int,
    violations: Violations,
) -> dict[str, str]:
    if len(values) > max_entries:
        violations.add(field, f"has {len(values)} entries; at most {max_entries}")
    for key, value in values.items():
        if not MAP_KEY.match(key):
            violations.add(
                f"{field}[{echo(key)}]",
                "key must be 1 to 63 letters, digits or . _ / - starting with a letter or digit",
            )
        if len(value) > max_value_chars:
            violations.add(
                f"{field}[{echo(key)}]",
                f"value has {len(value)} characters; at most {max_value_chars}",
            )
    return dict(values)


def _load_metrics(
    values: Mapping[str, float], field: str, violations: Violations
) -> dict[str, float]:
    if len(values) > MAX_LOAD_METRICS:
        violations.add(field, f"has {len(values)} entries; at most {MAX_LOAD_METRICS}")
    for name, value in values.items():
        if not MAP_KEY.match(name):
            violations.add(
                f"{field}[{echo(name)}]",
                "name must be 1 to 63 letters, digits or . _ / - starting with a letter or digit",
            )
        if not math.isfinite(value):
            violations.add(f"{field}[{echo(name)}]", "must be a finite number")
        elif name in ("cpu", "memory") and not 0.0 <= value <= 1.0:
            violations.add(f"{field}[{echo(name)}]", f"is a fraction from 0 to 1; got {value}")
    return dict(values)


def registration(
    *,
    agent_id: str,
    agent_type: str,
    capabilities: Iterable[str],
    services: Iterable[str],
    endpoints: Mapping[str, str],
    metadata: Mapping[str, str],
    labels: Mapping[str, str],
    max_concurrency: int,
    weight: float,
    allowed_agent_types: Iterable[str],
    any_agent_type: bool,
) -> AgentRegistration:
    """A validated registration, with defaults applied (0 slots means 1, weight 0 means 1)."""
    v = Violations()
    _check_agent_id(agent_id, "agent_id", v)
    _check_agent_type(agent_type, "agent_type", allowed_agent_types, any_agent_type, v)
    caps = tags(capabilities, "capabilities", v)
    svcs = tags(services, "services", v)
    eps = _string_map(endpoints, "endpoints", MAX_ENDPOINTS, MAX_ENDPOINT_VALUE_CHARS, v)
    meta = _string_map(metadata, "metadata", MAX_METADATA, MAX_METADATA_VALUE_CHARS, v)
    total = sum(len(k) + len(val) for k, val in metadata.items())
    if total > MAX_METADATA_TOTAL_CHARS:
        v.add("metadata", f"holds {total} characters; at most {MAX_METADATA_TOTAL_CHARS}")
    labs = _string_map(labels, "labels", MAX_LABELS, MAX_LABEL_VALUE_CHARS, v)
    slots = max_concurrency or 1
    if not 1 <= slots <= MAX_CONCURRENCY:
        v.add("max_concurrency", f"must be from 1 to {MAX_CONCURRENCY}; got {max_concurrency}")
    if weight == 0.0:
        weight = 1.0
    if not math.isfinite(weight) or not 0.0 < weight <= MAX_WEIGHT:
        v.add("weight", f"must be greater than 0 and at most {MAX_WEIGHT:g}; got {weight}")
    v.raise_if_any()
    return AgentRegistration(
        agent_id=agent_id,
        agent_type=agent_type,
        capabilities=caps,
        services=svcs,
        endpoints=eps,
        metadata=meta,
        labels=labs,
        max_concurrency=slots,
        weight=weight,
    )


def heartbeat(
    agent_id: str, load_metrics: Mapping[str, float], status: AgentStatus | None
) -> tuple[dict[str, float], AgentStatus | None]:
    """Validated heartbeat fields: the metrics to store (empty: keep) and the status or None."""
    v = Violations()
    _check_agent_id(agent_id, "agent_id", v)
    metrics = _load_metrics(load_metrics, "load_metrics", v)
    if status is not None and status not in HEARTBEAT_STATUSES:
        v.add("status", f"a heartbeat may report ACTIVE or BUSY, not {status.name}")
    v.raise_if_any()
    return metrics, status


def status_update(
    agent_id: str, status: AgentStatus | None, load_metrics: Mapping[str, float], reason: str
) -> tuple[AgentStatus, dict[str, float], str]:
    """Validated UpdateAgentStatus fields."""
    v = Violations()
    _check_agent_id(agent_id, "agent_id", v)
    if status is None:
        v.add("status", "is required: ACTIVE, BUSY, MAINTENANCE or ERROR")
    elif status not in SETTABLE_STATUSES:
        v.add("status", f"{status.name} is derived from heartbeats and cannot be set")
    metrics = _load_metrics(load_metrics, "load_metrics", v)
    if len(reason) > MAX_REASON_CHARS:
        v.add("reason", f"has {len(reason)} characters; at most {MAX_REASON_CHARS}")
    v.raise_if_any()
    assert status is not None
    return status, metrics, reason


def discover_query(
    *,
    statuses: Iterable[tuple[int, AgentStatus | None]],
    agent_type: str,
    capabilities: Iterable[str],
    services: Iterable[str],
    labels: Mapping[str, str],
    min_health_score: float,
    page_size: int,
    page_token: str,
    violations: Violations | None = None,
) -> DiscoverQuery:
    """A validated DiscoverAgents query (no statuses means ACTIVE; page size 0 means 100);
    ``statuses`` are (wire number, status) pairs and ``violations`` holds problems found
    already (unknown enum numbers: ``api.wire.enums_from_proto``), reported with these."""
    v = violations or Violations()
    wanted: set[AgentStatus] = set()
    for index, (number, status) in enumerate(statuses):
        if status is not None:
            wanted.add(status)
        elif number == 0:  # another number without a status is in ``violations`` already
            v.add(f"statuses[{index}]", "must name a status, not UNSPECIFIED")
    if agent_type and not AGENT_TYPE.match(agent_type):
        v.add("agent_type", "must be 1 to 64 of a-z 0-9 _ - starting with a letter")
    caps = tags(capabilities, "capabilities", v)
    svcs = tags(services, "services", v)
    labs = _string_map(labels, "labels", MAX_LABELS, MAX_LABEL_VALUE_CHARS, v)
    if not math.isfinite(min_health_score) or not 0.0 <= min_health_score <= 1.0:
        v.add("min_health_score", f"must be from 0 to 1; got {min_health_score}")
    size = page_size or DEFAULT_PAGE_SIZE
    if not 1 <= size <= MAX_PAGE_SIZE:
        v.add("page_size", f"must be from 1 to {MAX_PAGE_SIZE}; got {page_size}")
    v.raise_if_any()
    return DiscoverQuery(
        statuses=frozenset(wanted or {AgentStatus.ACTIVE}),
        agent_type=agent_type,
        capabilities=caps,
        services=svcs,
        labels=labs,
        min_health_score=min_health_score,
        page_size=size,
        page_token=page_token,
    )
