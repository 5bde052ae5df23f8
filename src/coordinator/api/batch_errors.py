"""Per-entry errors of the batch calls (SubmitTasks, ReportTasks).

An entry that is refused gets the status the same entry would get alone from the unary
call: it is built by ``error_mapping.to_status``, the one mapping of errors to codes, so code,
message and field violations are identical. A Redis outage is not an entry's error: it fails
the whole call (UNAVAILABLE), as it would fail every unary call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from google.rpc import code_pb2, error_details_pb2

from aitbc.coordinator.v1 import task_pb2
from coordinator.api.error_mapping import redis_unavailable, to_status

log = logging.getLogger(__name__)


def raise_if_outage(outcomes: Iterable[object]) -> None:
    """Raise the first Redis outage among a batch's outcomes (the call is then UNAVAILABLE)."""
    for outcome in outcomes:
        if isinstance(outcome, Exception) and redis_unavailable(outcome):
            raise outcome


def set_entry_error(target: task_pb2.BatchEntryError, exc: BaseException, method: str) -> None:
    """Fill ``target`` with the status a unary call would answer for ``exc``."""
    status = to_status(exc)
    if status.code == code_pb2.INTERNAL:
        log.error("unexpected error in an entry of %s", method, exc_info=exc)
    target.code = status.code
    target.message = status.message
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            for violation in bad_request.field_violations:
                target.field_violations.add(
                    field=violation.field, description=violation.description
                )
