"""Logging set-up: one line per event, with structured fields, as ``key=value`` text or as
JSON lines (``COORDINATOR_LOG_FORMAT``).

Every line carries the node's ``node_id``; code adds ``agent_id`` / ``task_id`` and other
fields with ``extra={...}``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

_STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class _NodeIdFilter(logging.Filter):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self._node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "node_id"):
            record.node_id = self._node_id
        return True


class KeyValueFormatter(logging.Formatter):
    """``time level logger message key=value ...`` with the record's extra fields."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
        self.converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRIBUTES}
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in sorted(fields.items()))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``timestamp``, ``level``, ``logger``, ``message``, then the
    record's extra fields (``node_id``, ``agent_id``, ``task_id``, ...), and ``exception``
    with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": _utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in sorted(record.__dict__.items()):
            if key not in _STANDARD_ATTRIBUTES:
                # An extra field named like a standard key must not overwrite it.
                entry[f"extra_{key}" if key in entry else key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra field that JSON cannot hold (an enum, an exception) is
        # written as its text rather than losing the whole line.
        return json.dumps(entry, default=str, ensure_ascii=False)


def _utc_timestamp(created: float) -> str:
    """``2026-11-29T11:29:20.744Z``, the text format's timestamp."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created * 1000) % 1000:03d}Z"


def configure(level: str, node_id: str, log_format: str = "text") -> None:
    """Send the coordinator's logs to stderr at ``level``, tagged with ``node_id``, as
    ``key=value`` text or JSON lines (``log_format`` "text" or "json")."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else KeyValueFormatter())
    handler.addFilter(_NodeIdFilter(node_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
