"""How much a principal may submit: a submit rate and a most of unfinished tasks.

Both are counted per principal in Redis (``lua/quota_lib.lua``), so every node of a cluster
enforces one budget: a token bucket of submits (``COORDINATOR_QUOTA_SUBMIT_RATE`` tasks/s,
up to ``COORDINATOR_QUOTA_SUBMIT_BURST`` at once) and a most of tasks not yet in a final
state (``COORDINATOR_QUOTA_MAX_UNFINISHED``). ``lua/submit_task.lua`` checks and takes them in
the step that creates a task, and a task's final transition gives its place back, so two
nodes never both admit a principal's last allowed task, and the count cannot drift.

Quotas need a principal: a task submitted without authentication counts for no one. A
resubmission that finds its task by request_id takes nothing. Over a quota, a submit is
``ResourceExhausted`` (RESOURCE_EXHAUSTED with google.rpc.RetryInfo); in a batch, that entry's
error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from coordinator.config import Settings
from coordinator.errors import ResourceExhausted, echo
from coordinator.storage import keys

OVER_QUOTA = "over_quota"
"""First item of ``lua/submit_task.lua``'s reply when the submitter is over a quota."""

UNFINISHED_RETRY_AFTER_S = 1.0
"""The retry delay told to a principal at its most unfinished tasks. When one of them ends
is not known (a task may run for hours): long enough not to hammer the cluster, short enough
that a client whose tasks end quickly does not idle."""


@dataclass(frozen=True)
class SubmitQuota:
    """The quotas every principal has (the same for all: ``Settings``)."""

    rate_per_s: float = 0.0
    """Submits per second, refilling the bucket; 0: no rate limit."""
    burst: float = 1.0
    """Most submits at once: the bucket's size."""
    max_unfinished: int = 0
    """Most tasks not yet in a final state; 0: no limit."""

    @classmethod
    def of(cls, settings: Settings) -> SubmitQuota:
        """The quotas ``settings`` configure."""
        return cls(
            rate_per_s=settings.quota_submit_rate,
            burst=settings.quota_submit_burst_effective,
            max_unfinished=settings.quota_max_unfinished,
        )

    def script_args(self, submitted_by: str) -> list[str]:
        """``lua/submit_task.lua``'s ARGV[12..15] for a task submitted by ``submitted_by``
        ("" without authentication: no quota applies)."""
        return [submitted_by, repr(self.rate_per_s), repr(self.burst), str(self.max_unfinished)]

    def refusal(self, reply: Sequence[Any], submitted_by: str) -> ResourceExhausted:
        """The error for ``lua/submit_task.lua``'s over-quota reply
        ({'over_quota', quota, retry_after_ms, detail}), naming the quota and its setting."""
        quota, retry_after_ms, detail = str(reply[1]), int(reply[2]), str(reply[3])
        who = f"principal {echo(submitted_by)}"
        if quota == "max_unfinished":
            return ResourceExhausted(
                f"quota exceeded: {who} has {detail} unfinished tasks, the most allowed "
                f"(COORDINATOR_QUOTA_MAX_UNFINISHED={self.max_unfinished}); retry when one "
                "of them has ended",
                retry_after_s=UNFINISHED_RETRY_AFTER_S,
            )
        retry_after_s = retry_after_ms / 1000
        return ResourceExhausted(
            f"quota exceeded: {who} may submit {self.rate_per_s:g} tasks/s, "
            f"{_count(self.burst)} at once (COORDINATOR_QUOTA_SUBMIT_RATE, "
            f"COORDINATOR_QUOTA_SUBMIT_BURST); retry after {retry_after_s:g} s",
            retry_after_s=retry_after_s,
        )


def is_refusal(reply: Any) -> bool:
    """Whether a ``lua/submit_task.lua`` reply is an over-quota refusal."""
    return isinstance(reply, list) and bool(reply) and reply[0] == OVER_QUOTA


async def unfinished(redis: Redis, principal: str) -> int:
    """How many of ``principal``'s tasks are not yet in a final state (what the quota
    counts)."""
    count = await redis.hget(keys.QUOTA_UNFINISHED, principal)
    return int(count or 0)


def _count(value: float) -> str:
    return str(math.floor(value)) if value == math.floor(value) else f"{value:g}"
