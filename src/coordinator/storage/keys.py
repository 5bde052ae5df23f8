"""Every Redis key the coordinator uses, built in one place.

The layout keeps what operators of the old REST coordinator know: an agent's record is the
hash ``agent:{agent_id}`` and the set ``agents:active`` holds the agents that are ACTIVE and
live. The other keys are indexes kept exact by the Lua scripts in ``coordinator/storage/lua``.

The registry's and the task scripts touch index keys that only a single Redis (or a primary
with replicas) holds together, unless every key shares one hash slot: with
``COORDINATOR_REDIS_CLUSTER_TAG`` set, ``key_tags.use_tag`` (at the node's start-up, before
any key is built) puts the Redis Cluster hash tag ``{tag}`` in front of every name here,
e.g. ``{aitbc}agent:a1``: one coordinator cluster lives in one slot of a Redis Cluster.
Import this module and read its names at call time (``keys.AGENTS_ACTIVE``), never ``from
keys import NAME``: such a copy would keep the untagged name.
"""

from __future__ import annotations

AGENTS_ALL = "agents:all"
"""Set of every registered agent id."""

AGENTS_ACTIVE = "agents:active"
"""Set of agents whose status is ACTIVE and whose heartbeat is fresh (the old layout)."""

AGENTS_HEARTBEATS = "agents:heartbeats"
"""Sorted set: agent id scored by its last heartbeat in epoch milliseconds (the liveness index)."""

LIVENESS_SWEEP_LOCK = "coordinator:lock:liveness-sweep"
"""Held by the one node that runs a liveness sweep, so two nodes never sweep at once."""


NODE_PRESENCE_PREFIX = "coordinator:nodes:"


def node_presence(node_id: str) -> str:
    """Written by each node's health check and expiring soon after: the nodes alive now."""
    return f"{NODE_PRESENCE_PREFIX}{node_id}"


AGENT_KEY_PREFIX = "agent:"
"""Prefix of the agent hashes; scripts that read records found in an index are given it."""


def agent(agent_id: str) -> str:
    """The hash holding one agent's record."""
    return f"{AGENT_KEY_PREFIX}{agent_id}"


def status_index(status: str) -> str:
    """The set of agents whose stored status is ``status`` (an AgentStatus name).

    ACTIVE agents live in the historical ``agents:active`` set. INACTIVE has no set: it is
    derived from ``agents:heartbeats``.
    """
    if status == "ACTIVE":
        return AGENTS_ACTIVE
    if status == "INACTIVE":
        raise ValueError("INACTIVE is derived from agents:heartbeats and has no index set")
    return f"{STATUS_INDEX_PREFIX}{status.lower()}"


STATUS_INDEX_PREFIX = "agents:status:"
"""``agents:status:{status}`` (lower case): the agents of one stored status but ACTIVE."""

STORED_STATUSES = ("ACTIVE", "BUSY", "MAINTENANCE", "ERROR")
"""The AgentStatus names that are stored (and indexed); INACTIVE is only ever computed."""


def status_indexes() -> list[str]:
    """The index sets of every stored status, in ``STORED_STATUSES`` order."""
    return [status_index(status) for status in STORED_STATUSES]


TYPE_INDEX_PREFIX = "agents:type:"
CAPABILITY_INDEX_PREFIX = "agents:capability:"
SERVICE_INDEX_PREFIX = "agents:service:"
LABEL_INDEX_PREFIX = "agents:label:"


def type_index(agent_type: str) -> str:
    """The set of agents of one type."""
    return f"{TYPE_INDEX_PREFIX}{agent_type}"


def capability_index(capability: str) -> str:
    """The set of agents having one capability."""
    return f"{CAPABILITY_INDEX_PREFIX}{capability}"


def service_index(service: str) -> str:
    """The set of agents offering one service."""
    return f"{SERVICE_INDEX_PREFIX}{service}"


def label_index(key: str, value: str) -> str:
    """The set of agents carrying one label pair (label keys cannot contain ``=``)."""
    return f"{LABEL_INDEX_PREFIX}{key}={value}"


AGENTS_AVAILABLE = "agents:available"
"""Sorted set: the agents that can take a task now (ACTIVE, in ``agents:active``, their
stream open on a live node, a free slot), scored by slot use (active_tasks /
max_concurrency). Kept exact by every script that changes one of those
(``lua/availability_lib.lua``), so that a dispatch pass reads the least loaded agents in
O(log n) instead of every agent."""

AGENTS_AVAILABLE_PREFIX = "agents:available:"
"""``agents:available:{index set}`` (e.g. ``agents:available:agents:capability:gpu``): the
same as ``agents:available``, for the agents in one descriptive index set (type,
capability, service, label): a requirements class reads its eligible agents from the
smallest of these, never strands a task that few agents can take, and costs nothing when
none of them is free."""


def available_in(index_key: str) -> str:
    """The available agents of one descriptive index set."""
    return f"{AGENTS_AVAILABLE_PREFIX}{index_key}"


AGENTS_ROTATION = "agents:rotation"
"""Sorted set, every score 0: the agents of ``agents:available`` with a free slot (kept by
the same scripts), in ``agent_id`` order by ZRANGEBYLEX: round robin's rotation over every
free available agent, the next found in O(log n) from the last agent chosen."""

AGENTS_ROTATION_PREFIX = "agents:rotation:"
"""``agents:rotation:{index set}``: the same for the agents of one descriptive index set."""


AGENTS_RING = "agents:ring"
"""Sorted set: the consistent hash ring of every registered agent, 64 points an agent
(member ``{agent_id}#{i}``, scored by the point's 52-bit hash, ``balancing.ring_hash``),
kept by registration and deregistration only: it does not depend on who is free."""


# --- Tasks -----------------------------------------------------------------------------------
# The task scripts build some of these keys themselves (a task's agent is only known inside
# the script), so the prefixes below are injected into every task script by
# ``coordinator.storage.scripts`` as the Lua table ``K``: this module stays the one place they are
# spelled.

TASK_KEY_PREFIX = "task:"
"""Prefix of the task hashes ``task:{task_id}``."""

TASK_SEQUENCE = "tasks:seq"
"""Counter giving every task its place in line (FIFO within a priority)."""

TASK_QUEUE_PREFIX = "tasks:queue:"
"""``tasks:queue:{PRIORITY}``: sorted set of every PENDING task of one priority, scored by its
place in line; ``tasks:queue:{PRIORITY}:{class}@{node_id}``: the same, for the tasks of one
requirements class that one node queued (its dispatch partition, ``queued_class``)."""

TASK_CLASSES_PREFIX = "tasks:classes:"
"""``tasks:classes:{PRIORITY}``: the queued classes (``queued_class``) that have tasks."""

TASK_SCHEDULED = "tasks:scheduled"
"""Sorted set: tasks waiting for their retry backoff, scored by when they may run again."""

TASK_LEASES = "tasks:leases"
"""Sorted set: ASSIGNED and RUNNING tasks scored by the end of their lease."""

TASK_START_DEADLINES = "tasks:start-deadlines"
"""Sorted set: PENDING tasks scored by when their schedule-to-start timeout expires them."""

TASK_DEAD_LETTER = "tasks:dead-letter"
"""Sorted set: FAILED tasks, scored by their place in line (seq: creation order)."""

TASK_ALL = "tasks:all"
"""Sorted set: every task not archived, scored by seq, its creation order (ListTasks, newest
first, with the archive's indexes of the final states)."""

TASK_STATE_PREFIX = "tasks:state:"
"""``tasks:state:{STATE}``: sorted set of the tasks in one state not archived, scored by seq."""

TASK_FINISHED = "tasks:finished"
"""Sorted set: tasks in a final state not yet archived, scored by when they ended (the work
of the reaper's compaction, then of the retention clean-up)."""

# The archive: finished tasks, once compacted, leave the sorted sets above (a skiplist costs
# about 150 bytes an entry) for these, which Redis keeps packed (about 40 bytes an entry).

TASK_ARCHIVED = "tasks:archived"
"""List: the archived tasks, in the order they finished (oldest first: the retention)."""

TASK_ARCHIVED_STATES = "tasks:archived-states"
"""Hash: final state to the number of archived tasks in it."""

TASK_ARCHIVE_STATE_PREFIX = "tasks:archive:state:"
"""``tasks:archive:state:{STATE}`` (a final state): the archived tasks in that state, an
index of chunks (a sorted set of chunk numbers, each scored by the lowest seq of its range;
see ``lua/archive_lib.lua``)."""

TASK_ARCHIVE_AGENT_PREFIX = "tasks:archive:agent:"
"""``tasks:archive:agent:{agent_id}``: the archived tasks whose last attempt was on that
agent, an index of chunks like the above."""

TASK_ARCHIVE_CHUNK_PREFIX = "tasks:archive-chunk:"
"""``tasks:archive-chunk:{n}``: sorted set of at most 128 archived tasks of one index, scored
by seq, a consecutive range of that index."""

TASK_ARCHIVE_CHUNKS = "tasks:archive-chunks"
"""Counter numbering the chunks."""

TASK_BY_AGENT_PREFIX = "tasks:agent:"
"""``tasks:agent:{agent_id}``: tasks not archived whose current (or last) attempt is on that
agent, by seq."""

TASK_REQUEST_PREFIX = "tasks:request:"
"""``tasks:request:{request_id}``: the task a request_id created, for the idempotency window,
when it was submitted without authentication."""

TASK_PRINCIPAL_REQUEST_PREFIX = "tasks:request-of:"
"""``tasks:request-of:{len(principal)}:{principal}:{request_id}``: the same for a task that a
principal submitted. Each principal has its own request_ids, so that one principal's
request_id neither finds (and shows) nor blocks another's task."""

QUOTA_SUBMIT_PREFIX = "quota:submit:"
"""``quota:submit:{principal}``: hash of a principal's submit token bucket (``tokens``, and
``at_ms`` when they were counted); it expires once the bucket would be full again."""

QUOTA_UNFINISHED = "quota:unfinished"
"""Hash: principal to the number of its tasks not yet in a final state (a principal with none
has no field)."""

TASK_STATS = "tasks:stats"
"""Hash of cluster-wide counters (tasks_submitted, tasks_distributed, ...)."""

TASK_ASSIGN_LATENCIES = "tasks:assign-latencies"
"""List of the latest submit-to-assignment times in milliseconds, newest first."""

TASK_ASSIGNMENTS_PER_AGENT = "tasks:assignments-per-agent"
"""Hash: agent_id to the number of assignments it received."""

AGENT_TASKS_PREFIX = "agent-tasks:"
"""``agent-tasks:{agent_id}``: the tasks an agent holds now (ASSIGNED or RUNNING)."""

AGENTS_HOLDING = "agents:holding"
"""Set of agents holding at least one task: the ones the reaper must watch."""

AGENTS_CONNECTED = "agents:connected"
"""Hash: agent_id to ``{node_id} {session_id}`` of its open StreamAssignments."""

AGENTS_DISCONNECTED = "agents:disconnected"
"""Sorted set: agents holding tasks whose stream closed, scored by when it closed."""

NODE_CHANNEL_PREFIX = "coordinator:node:"
"""Pub/sub channel ``coordinator:node:{node_id}``: assignments and cancel notices for the
streams that node holds."""

TASK_CHANNEL_PREFIX = "coordinator:task:"
"""Pub/sub channel ``coordinator:task:{task_id}``: one message per transition (WatchTask)."""

DISPATCH_LOCK = "coordinator:lock:dispatch"
"""``coordinator:lock:dispatch:{node_id}``: held by the node passing over the tasks that
node ``node_id`` queued (its dispatch partition), so passes do not race for the same tasks.
Without the suffix: the partition of tasks queued before partitions existed."""

DISPATCH_WANTED = "coordinator:dispatch:wanted"
"""``coordinator:dispatch:wanted:{node_id}``: set (to the time in epoch milliseconds) when a
pass over that partition is wanted while another node holds its turn; the holder passes
until it is clear."""

TASK_REAP_LOCK = "coordinator:lock:task-reaper"
"""Held by the node running a reaper round (leases, retries, expiries, lost agents)."""

BALANCING_STRATEGY = "coordinator:balancing:strategy"
"""The cluster's load-balancing strategy (lower-case name)."""

PAGE_TOKEN_KEY = "coordinator:page-token-key"
"""The cluster's key for signing page tokens (64 hex digits), made by the first node that
found none (SET NX); see ``page_tokens``."""

BALANCER_STATE = "coordinator:balancing:state"
"""JSON memory of the rotating strategies (round robin position, weighted round robin)."""

ROTATION_POSITIONS = "coordinator:balancing:rotation"
"""Hash: requirements class to the agent round robin gave its last task (the rotation's
position, moved by the assigning script itself, so nodes passing at once share it)."""

TASK_SCRIPT_KEYS = {
    "task": TASK_KEY_PREFIX,
    "sequence": TASK_SEQUENCE,
    "queue": TASK_QUEUE_PREFIX,
    "classes": TASK_CLASSES_PREFIX,
    "scheduled": TASK_SCHEDULED,
    "leases": TASK_LEASES,
    "start_deadlines": TASK_START_DEADLINES,
    "dead_letter": TASK_DEAD_LETTER,
    "all": TASK_ALL,
    "state": TASK_STATE_PREFIX,
    "finished": TASK_FINISHED,
    "archived": TASK_ARCHIVED,
    "archived_states": TASK_ARCHIVED_STATES,
    "archive_state": TASK_ARCHIVE_STATE_PREFIX,
    "archive_agent": TASK_ARCHIVE_AGENT_PREFIX,
    "archive_chunk": TASK_ARCHIVE_CHUNK_PREFIX,
    "archive_chunks": TASK_ARCHIVE_CHUNKS,
    "by_agent": TASK_BY_AGENT_PREFIX,
    "request": TASK_REQUEST_PREFIX,
    "principal_request": TASK_PRINCIPAL_REQUEST_PREFIX,
    "quota_submit": QUOTA_SUBMIT_PREFIX,
    "quota_unfinished": QUOTA_UNFINISHED,
    "stats": TASK_STATS,
    "assign_latencies": TASK_ASSIGN_LATENCIES,
    "assignments_per_agent": TASK_ASSIGNMENTS_PER_AGENT,
    "agent": AGENT_KEY_PREFIX,
    "agent_tasks": AGENT_TASKS_PREFIX,
    "holding": AGENTS_HOLDING,
    "connected": AGENTS_CONNECTED,
    "disconnected": AGENTS_DISCONNECTED,
    "heartbeats": AGENTS_HEARTBEATS,
    "active": AGENTS_ACTIVE,
    "agents_all": AGENTS_ALL,
    "available": AGENTS_AVAILABLE,
    "available_in": AGENTS_AVAILABLE_PREFIX,
    "rotation": AGENTS_ROTATION,
    "rotation_in": AGENTS_ROTATION_PREFIX,
    "ring": AGENTS_RING,
    "rotation_positions": ROTATION_POSITIONS,
    "type_index": TYPE_INDEX_PREFIX,
    "capability_index": CAPABILITY_INDEX_PREFIX,
    "service_index": SERVICE_INDEX_PREFIX,
    "label_index": LABEL_INDEX_PREFIX,
    "node": NODE_PRESENCE_PREFIX,
    "node_channel": NODE_CHANNEL_PREFIX,
    "task_channel": TASK_CHANNEL_PREFIX,
    "balancing_strategy": BALANCING_STRATEGY,
    "balancer_state": BALANCER_STATE,
    "dispatch_lock": DISPATCH_LOCK,
    "dispatch_wanted": DISPATCH_WANTED,
}
"""The keys and prefixes the task scripts use, by the name they have in the Lua table ``K``."""


def task(task_id: str) -> str:
    """The hash holding one task."""
    return f"{TASK_KEY_PREFIX}{task_id}"


def task_queue(priority_name: str, requirements_class: str = "") -> str:
    """All PENDING tasks of one priority, or only those of one requirements class."""
    base = f"{TASK_QUEUE_PREFIX}{priority_name}"
    return f"{base}:{requirements_class}" if requirements_class else base


def queued_class(requirements_class: str, partition: str) -> str:
    """The name a requirements class is queued under in one dispatch partition (the node_id
    of the node that queued the task; node ids have no '@'): ``lua/task_lib.lua``'s
    class_partition reads the partition back."""
    return f"{requirements_class}@{partition}" if partition else requirements_class


def dispatch_turn_keys(partition: str) -> tuple[str, str]:
    """The lock and the 'wanted' flag of one partition's dispatch turn (as
    ``lua/task_lib.lua``'s turn_keys)."""
    if not partition:
        return DISPATCH_LOCK, DISPATCH_WANTED
    return f"{DISPATCH_LOCK}:{partition}", f"{DISPATCH_WANTED}:{partition}"


def task_classes(priority_name: str) -> str:
    """The requirements classes with queued tasks at one priority."""
    return f"{TASK_CLASSES_PREFIX}{priority_name}"


def tasks_in_state(state_name: str) -> str:
    """The tasks in one state."""
    return f"{TASK_STATE_PREFIX}{state_name}"


def tasks_by_agent(agent_id: str) -> str:
    """The tasks whose current attempt is on one agent."""
    return f"{TASK_BY_AGENT_PREFIX}{agent_id}"


def archived_in_state(state_name: str) -> str:
    """The archive's index of the archived tasks in one final state."""
    return f"{TASK_ARCHIVE_STATE_PREFIX}{state_name}"


def archived_by_agent(agent_id: str) -> str:
    """The archive's index of the archived tasks whose last attempt was on one agent."""
    return f"{TASK_ARCHIVE_AGENT_PREFIX}{agent_id}"


def task_request(request_id: str, principal: str = "") -> str:
    """The idempotency record of one request_id, of ``principal`` ("" without auth). The
    name's length comes first, so that no other principal and request_id spell the same key
    (``lua/submit_task.lua`` builds it the same way)."""
    if not principal:
        return f"{TASK_REQUEST_PREFIX}{request_id}"
    length = len(principal.encode())  # bytes, as Lua counts them
    return f"{TASK_PRINCIPAL_REQUEST_PREFIX}{length}:{principal}:{request_id}"


def quota_submit(principal: str) -> str:
    """The submit token bucket of one principal."""
    return f"{QUOTA_SUBMIT_PREFIX}{principal}"


def agent_tasks(agent_id: str) -> str:
    """The tasks one agent holds now."""
    return f"{AGENT_TASKS_PREFIX}{agent_id}"


def node_channel(node_id: str) -> str:
    """The pub/sub channel of one node's assignment streams."""
    return f"{NODE_CHANNEL_PREFIX}{node_id}"


def task_channel(task_id: str) -> str:
    """The pub/sub channel of one task's transitions."""
    return f"{TASK_CHANNEL_PREFIX}{task_id}"
