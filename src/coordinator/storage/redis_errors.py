"""What a Redis error means for the caller: an outage to wait out (UNAVAILABLE at the edge, a
retry on the next timer below it), or something else. The gRPC layer, the dispatcher and the
node's timers classify errors here, so they agree on what "Redis is gone" is."""

from __future__ import annotations

from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

REDIS_OUTAGES = (RedisConnectionError, RedisTimeoutError, BusyLoadingError)
"""Redis cannot be reached, timed out, or is still loading its data."""

POOL_EXHAUSTED = "No connection available."
"""redis-py's message when no pooled connection came free in time: Redis is fine, the node
is overloaded."""

REDIS_WRITE_REFUSALS = (ReadOnlyError, OutOfMemoryError)
"""Redis answers but refuses writes: a replica after a failover, or maxmemory reached."""


CLUSTER_REDIRECTS = (AskError, TryAgainError, ClusterDownError)
"""Redis Cluster mode: the slot moved (MOVED, a subclass of ASK), is moving (TRYAGAIN), or
the cluster cannot serve it (CLUSTERDOWN). The next connection goes to the owner then."""

NON_LOCAL_KEY = "Script attempted to access a non local key in a cluster node"
"""A script's error when a key it touches is not on the node: the slot moved away (its first
key fails: nothing written), or is being moved key by key (MIGRATING: the script may stop
half-way, so the slot is best moved in one step; docs/scaling.md, "Resharding")."""


def cluster_redirect(exc: BaseException) -> bool:
    """True when a Redis Cluster error says the slot is not (or not only) on that node."""
    if isinstance(exc, CLUSTER_REDIRECTS):
        return True
    return isinstance(exc, ResponseError) and NON_LOCAL_KEY in str(exc)


def redis_unavailable(exc: BaseException) -> bool:
    """True when a Redis error means "try again later" rather than a bug of ours."""
    if isinstance(exc, REDIS_OUTAGES + REDIS_WRITE_REFUSALS) or cluster_redirect(exc):
        return True
    # MISCONF: Redis stops writes because it cannot persist (a full or failing disk).
    return isinstance(exc, ResponseError) and str(exc).startswith("MISCONF")


def redis_error_kind(exc: BaseException) -> str | None:
    """The kind of Redis outage an error is, for the ``redis_errors`` metric: "unavailable"
    (unreachable, timed out, loading), "refused_writes", or None for any other error."""
    if isinstance(exc, REDIS_OUTAGES) or cluster_redirect(exc):
        return "unavailable"
    if redis_unavailable(exc):
        return "refused_writes"
    return None


class ReplicationShortfall(RedisConnectionError):
    """A write reached fewer replicas than required in time. A ConnectionError so that every
    layer treats it as an outage (UNAVAILABLE at the edge, a retry on the next timer)."""
