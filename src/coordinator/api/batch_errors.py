"""The batch calls' entries (SubmitTasks, ReportTasks): each taken as alone, with its own
error.

An entry that is refused gets the status the same entry would get alone from the unary
call: it is built by ``error_mapping.to_status``, the one mapping of errors to codes, so code,
message and field violations are identical. A Redis outage is not an entry's error: it fails
the whole call (UNAVAILABLE), as it would fail every unary call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from google.rpc import code_pb2, error_details_pb2

from aitbc.coordinator.v1 import task_pb2
from coordinator.api.error_mapping import to_status
from coordinator.errors import CoordinatorError
from coordinator.storage.redis_errors import redis_unavailable
from coordinator.tasks.validation import batch_entries

log = logging.getLogger(__name__)

Entry = TypeVar("Entry")
Parsed = TypeVar("Parsed")
Outcome = TypeVar("Outcome")

ENTRIES_PER_TURN = 25
"""Entries checked between two yields to the event loop: a batch of 1,000 large entries
would otherwise hold it for tens of milliseconds, and every other call with it."""


async def apply_entries(
    entries: Sequence[Entry],
    parse: Callable[[Entry], Parsed],
    apply: Callable[[list[Parsed]], Awaitable[Sequence[Outcome | Exception]]],
) -> list[Outcome | BaseException]:
    """Every entry's outcome, in order: ``parse`` checks each entry as the unary call would
    (its CoordinatorError is that entry's outcome), ``apply`` takes the valid ones together,
    one outcome each. A Redis outage among them raises: the whole call is UNAVAILABLE."""
    outcomes: list[Outcome | BaseException | None] = []
    parsed: list[Parsed] = []
    for index, entry in enumerate(entries):
        if index and not index % ENTRIES_PER_TURN:
            await asyncio.sleep(0)
        try:
            parsed.append(parse(entry))
            outcomes.append(None)  # filled in below, in order
        except CoordinatorError as exc:
            outcomes.append(exc)
    applied = await apply(parsed) if parsed else []
    raise_if_outage(applied)
    taken = iter(applied)
    return [next(taken) if outcome is None else outcome for outcome in outcomes]


async def answer_entries(
    entries: Sequence[Entry],
    field: str,
    parse: Callable[[Entry], Parsed],
    apply: Callable[[list[Parsed]], Awaitable[Sequence[Outcome | Exception]]],
    results: Any,
    fill: Callable[[Any, Outcome], None],
    method: str,
) -> None:
    """Answer one batch call, or one message of its stream: 1 to 1000 ``entries`` (else
    InvalidArgument naming ``field``), taken as ``apply_entries`` takes them; each outcome
    is added to ``results`` (the reply's repeated field), in order, by ``fill`` when it was
    accepted, as the entry's ``error`` when it was refused."""
    batch_entries(len(entries), field)
    for outcome in await apply_entries(entries, parse, apply):
        result = results.add()
        if isinstance(outcome, BaseException):
            set_entry_error(result.error, outcome, method)
        else:
            fill(result, outcome)


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
