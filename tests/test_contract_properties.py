"""Property-based tests over the whole gRPC contract: Hypothesis generates requests for every
RPC of AgentService and TaskService (valid ones, ones with any field replaced by any value,
and entirely arbitrary ones: unknown enum numbers, NaN and infinities, Structs nested up to
90 levels, huge and unicode strings, empty messages) and sends them to a live node (a
``python -m coordinator serve`` subprocess) over a real channel, as a stock Python client
would. Raw bytes that may not decode at all go to every method too.

What every answer must respect:
- its code is one a client can act on: OK, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
  FAILED_PRECONDITION, OUT_OF_RANGE, RESOURCE_EXHAUSTED (the request itself was over the
  message limit, or a documented quota), ABORTED (a replaced stream); DEADLINE_EXCEEDED or
  CANCELLED only on a stream the test gave a short deadline. Never UNKNOWN or INTERNAL, and
  never a reply the Python client cannot decode (that is INTERNAL on the client's side);
- its message is bounded and names no Python internals, and its trailers fit in 8 KiB;
- a batch (unary or stream) answers one result per entry, one message per request message.

After each batch of examples (one test), the node must still be SERVING, must have logged
no traceback, and every task stored so far must read back through GetTask and ListTasks,
and every assignment pushed to a Python agent must decode.

Budget: the "ci" Hypothesis profile (the default, used by ``make test``) runs a fixed,
derandomized number of examples per RPC, without shrinking, in about two minutes; ``make
test-properties`` runs the "long" profile (HYPOTHESIS_PROFILE=long): many more examples,
random, shrunk to a minimal failing request.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import redis
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from aitbc.coordinator.v1 import agent_pb2, task_pb2
from coordinator.storage import keys
from support import CoordinatorProcess, RedisServer

FieldDescriptor = pb_descriptor.FieldDescriptor

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

# --------------------------------------------------------------------------- budget
settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "80")),
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=False,
    # Shrinking replays requests against the node hundreds of times: the long profile does
    # it, CI reports the first failing request as generated.
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=list(HealthCheck),
)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "300")),
    derandomize=False,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
PROFILE_NAME = os.environ.get("HYPOTHESIS_PROFILE", "ci")
PROFILE = settings.get_profile(PROFILE_NAME)
BATCH_TIMEOUT_S = 300 if PROFILE_NAME == "ci" else 3600
"""pytest-timeout's limit for one batch (its thread method ends the whole run)."""
RAW_EXAMPLES_SHARE = 0.5
"""Raw-bytes examples per method, as a share of the typed ones (they cost less to vary)."""

# --------------------------------------------------------------------------- the contract
SERVICES = (
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
    task_pb2.DESCRIPTOR.services_by_name["TaskService"],
)
METHODS: dict[str, pb_descriptor.MethodDescriptor] = {
    f"{service.full_name}/{method.name}": method
    for service in SERVICES
    for method in service.methods
}
"""Every RPC of the contract, from the generated descriptors: "package.Service/Method"."""

ALLOWED = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
SHORT_DEADLINE_CODES = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""The node's (default) and the stock Python client's message limit."""
MAX_TRAILER_BYTES = 8 * 1024
"""An error's message and trailers together: what a stock client accepts (its soft limit)."""
PYTHON_INTERNALS = re.compile(r"<class '|Traceback \(most recent|File \"/")
UNARY_TIMEOUT_S = 10.0
SHORT_STREAM_DEADLINE_S = 0.25
"""StreamAssignments and WatchTask never end by themselves: they get this deadline."""

# --------------------------------------------------------------------------- values
POOL_AGENTS = ("prop-agent-0", "prop-agent-1", "prop-agent-2")
"""Agents the generated requests may name (and register, drain, deregister)."""
WORKER_ID = f"prop-worker-{uuid.uuid4().hex[:8]}"
"""The test's own agent, which hands out fresh assignments (never named by a request)."""
CONNECTED_ID = f"prop-connected-{uuid.uuid4().hex[:8]}"
"""An agent whose stream the test holds open, for Heartbeat requests (only they name it):
Heartbeat answers FAILED_PRECONDITION before anything else to an agent with no stream."""
PROBE_MARKER = uuid.uuid4().hex
"""In the task_data of the test's probe tasks, so the worker keeps their assignments."""
KNOWN_TASK_IDS: list[str] = []
"""Tasks created before the examples run, that requests may name."""


class Huge(str):
    """A long string that Hypothesis prints short."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"{self[:1]!r} * {len(self)}"


@dataclass(frozen=True)
class Placeholder:
    """A value the test body fills in: a field of a fresh assignment to the worker."""

    probe: int
    part: str  # "task_id", "agent_id" or "fencing_token"


TOKEN_FORGERIES = ("NaN", "Infinity", "-Infinity", "1e999", "flip", "cut")


@dataclass(frozen=True)
class ForgedToken:
    """A page token the test body forges from a real one (a next_page_token of the same
    request with page_size 1): its numbers replaced by ``forgery`` when it decodes as
    base64 JSON, or one character flipped ("flip"), or cut in half ("cut")."""

    forgery: str


def forge(token: str, forgery: str) -> str:
    if not token:
        return token
    if forgery == "cut":
        return token[: len(token) // 2]
    try:
        content = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:
        content = None
    if forgery == "flip" or not isinstance(content, dict):
        middle = len(token) // 2
        return token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
    value = json.loads(forgery) if forgery != "1e999" else math.inf
    forged = {k: value if isinstance(v, int | float) else v for k, v in content.items()}
    raw = json.dumps(forged).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def probe_fields(probe: int) -> dict[str, Any]:
    return {
        "task_id": Placeholder(probe, "task_id"),
        "agent_id": Placeholder(probe, "agent_id"),
        "fencing_token": Placeholder(probe, "fencing_token"),
    }


def probe_strategies(probe: int) -> dict[str, st.SearchStrategy[Any]]:
    return {name: st.just(value) for name, value in probe_fields(probe).items()}


def known_task_id(index: int) -> str:
    return KNOWN_TASK_IDS[index % len(KNOWN_TASK_IDS)] if KNOWN_TASK_IDS else "no-such-task"


HUGE_SIZES = (65, 129, 257, 1025, 5000, 70_000)
huge_text = st.sampled_from(HUGE_SIZES).map(lambda n: Huge("x" * n))
very_huge_text = st.sampled_from((1_100_000, 4_300_000)).map(lambda n: Huge("y" * n))
ids = st.sampled_from(
    (*POOL_AGENTS, "a", "A-1.b_c:d", "x" * 128, "x" * 129, "bad id!", "é", "a=b", " ", "-lead")
)
text = st.one_of(
    st.just(""),
    st.text(max_size=12),
    ids,
    st.integers(0, 50).map(known_task_id),
    huge_text,
)
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from((math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, 5e-324)),
    st.text(max_size=10),
    huge_text,
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


def nested(depth: int, wrapper: str, leaf: Any, outer_dicts: int = 0) -> Any:
    """``leaf`` inside ``depth`` lists or dicts, inside ``outer_dicts`` more dicts (a dict
    level costs the wire three message levels, a list two: both parities of depth)."""
    value = leaf
    for _ in range(depth):
        value = [value] if wrapper == "list" else {"k": value}
    for _ in range(outer_dicts):
        value = {"s": value}
    return value


deep_value = st.builds(
    nested,
    # Any depth, and often the boundaries: the 32-level limit, and about 47 list levels
    # (33 dict levels), where a request still decodes but a reply carrying it nests deeper.
    st.one_of(st.integers(1, 90), st.sampled_from((31, 32, 33, 34, 45, 46, 47, 48, 49))),
    st.sampled_from(("list", "dict")),
    json_leaf,
    st.integers(0, 2),
)
struct_value = st.one_of(
    st.dictionaries(st.text(max_size=8), json_value, max_size=4),
    st.builds(lambda v: {"deep": v}, deep_value),
    st.builds(lambda n: {f"k{i}": i for i in range(n)}, st.sampled_from((100, 5000))),
    st.builds(lambda v: {"big": v}, very_huge_text),
)
"""A google.protobuf.Struct as a dict: anything JSON-like, and the nasty cases."""
time_value = st.tuples(
    st.one_of(st.integers(-5, 700), st.integers(-(2**63), 2**63 - 1)),
    st.one_of(st.just(0), st.integers(-(2**31), 2**31 - 1)),
)
"""Duration or Timestamp as (seconds, nanos), in and out of their valid ranges."""
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def enum_value(enum: pb_descriptor.EnumDescriptor) -> st.SearchStrategy[int]:
    """Known numbers, and unknown ones (a newer client's, or garbage)."""
    return st.one_of(
        st.sampled_from([v.number for v in enum.values]),
        st.sampled_from((-1, 99, 2**31 - 1, -(2**31))),
        st.integers(-(2**31), 2**31 - 1),
    )


def scalar(fd: FieldDescriptor) -> st.SearchStrategy[Any]:
    if fd.type in INT_RANGES:
        low, high = INT_RANGES[fd.type]
        return st.one_of(st.integers(max(low, -3), 1100), st.integers(low, high))
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        width = 64 if fd.type == FieldDescriptor.TYPE_DOUBLE else 32
        return st.one_of(
            st.floats(width=width), st.sampled_from((math.nan, math.inf, -math.inf, -1.0, 0.5))
        )
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if fd.type == FieldDescriptor.TYPE_STRING:
        return text
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=32)
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return enum_value(fd.enum_type)
    raise AssertionError(f"no strategy for field type {fd.type} ({fd.full_name})")


def is_map(fd: FieldDescriptor) -> bool:
    return fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry


def single_value(fd: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    """One value of a (non-repeated view of a) field, as a spec."""
    if fd.type != FieldDescriptor.TYPE_MESSAGE:
        return scalar(fd)
    name = fd.message_type.full_name
    if name == "google.protobuf.Struct":
        return struct_value
    if name in ("google.protobuf.Duration", "google.protobuf.Timestamp"):
        return time_value
    if depth >= 3:
        return st.just({})
    return any_spec(fd.message_type, depth + 1)


def field_value(fd: FieldDescriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    """Any value of a field, as a spec (maps are dicts, repeated fields lists)."""
    if is_map(fd):
        key_fd = fd.message_type.fields_by_name["key"]
        value_fd = fd.message_type.fields_by_name["value"]
        small = st.dictionaries(scalar(key_fd), single_value(value_fd, depth), max_size=4)
        if key_fd.type != FieldDescriptor.TYPE_STRING:
            return small
        # Many entries, many of them invalid: the error must stay bounded.
        many = st.builds(
            lambda n, bad: {(f"bad key {i}=" if bad else f"k{i}"): "v" * 300 for i in range(n)},
            st.sampled_from((65, 1000)),
            st.booleans(),
        )
        return st.one_of(small, many) if value_fd.type == FieldDescriptor.TYPE_STRING else small
    if fd.is_repeated:
        values = st.lists(single_value(fd, depth), max_size=4)
        if fd.type == FieldDescriptor.TYPE_STRING:
            many = st.builds(lambda n: [f"bad value {i}!" * 3 for i in range(n)], st.just(2000))
            return st.one_of(values, many)
        return values
    return single_value(fd, depth)


_ANY_SPECS: dict[tuple[str, int], st.SearchStrategy[dict[str, Any]]] = {}


def any_spec(desc: pb_descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Any message of type ``desc``, as a spec: each field set or not, at most one member of
    each oneof."""
    key = (desc.full_name, depth)
    if key not in _ANY_SPECS:
        plain = {
            fd.name: field_value(fd, depth) for fd in desc.fields if fd.containing_oneof is None
        }
        parts = [st.fixed_dictionaries({}, optional=plain)]
        for oneof in desc.oneofs:
            members = [
                st.fixed_dictionaries({fd.name: field_value(fd, depth)}) for fd in oneof.fields
            ]
            parts.append(st.one_of(st.just({}), *members))
        _ANY_SPECS[key] = st.tuples(*parts).map(
            lambda dicts: {k: v for d in dicts for k, v in d.items()}
        )
    return _ANY_SPECS[key]


def contract(
    desc: pb_descriptor.Descriptor, plausible: st.SearchStrategy[dict[str, Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    """A plausible request, the same with one field replaced by any value, or anything."""
    names = sorted(fd.name for fd in desc.fields)
    if not names:
        return plausible

    def replace_one(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
        return st.sampled_from(names).flatmap(
            lambda name: field_value(desc.fields_by_name[name]).map(
                lambda value: {
                    **{
                        k: v
                        for k, v in base.items()
                        if desc.fields_by_name[k].containing_oneof is None
                        or desc.fields_by_name[k].containing_oneof
                        is not desc.fields_by_name[name].containing_oneof
                    },
                    name: value,
                }
            )
        )

    return st.one_of(plausible, plausible.flatmap(replace_one), any_spec(desc))


# --------------------------------------------------------------------------- plausible requests
def req(name: str) -> pb_descriptor.Descriptor:
    """A request message's descriptor, by name."""
    return (
        agent_pb2.DESCRIPTOR.message_types_by_name.get(name)
        or task_pb2.DESCRIPTOR.message_types_by_name[name]
    )


pool_id = st.sampled_from(POOL_AGENTS)
known_statuses = st.sampled_from((0, 1, 2, 3, 4, 5))
known_priorities = st.integers(0, 5)
known_states = st.integers(0, 7)
page_token = st.one_of(
    st.just(""),
    text,
    st.sampled_from(("AAAA", "eyJ4IjogTmFOfQ==", "not base64 !")),
    st.sampled_from(TOKEN_FORGERIES).map(ForgedToken),
)
valid_duration = st.tuples(st.integers(1, 600), st.just(0))
probe = st.integers(0, 2)
task_ref = st.one_of(
    st.integers(0, 50).map(known_task_id), probe.map(lambda i: Placeholder(i, "task_id")), text
)


def with_optional(
    required: dict[str, Any], optional: dict[str, Any]
) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(required, optional=optional)


plausible_submit = with_optional(
    {"task_type": st.sampled_from(("echo", "test")), "task_data": struct_value},
    {
        "priority": known_priorities,
        "max_attempts": st.integers(0, 5),
        "request_id": st.one_of(st.sampled_from(("req-1", "req-2")), st.uuids().map(str)),
        "routing_key": st.text(max_size=8),
        "balancing_strategy": st.integers(0, 8),
        "schedule_to_start_timeout": valid_duration,
        "start_to_close_timeout": valid_duration,
        "requirements": with_optional(
            {},
            {
                "capabilities": st.lists(st.sampled_from(("gpu", "text")), max_size=2),
                "min_health_score": st.floats(0, 1),
                "agent_id": pool_id,
            },
        ),
        "retry_policy": with_optional(
            {}, {"initial_backoff": valid_duration, "backoff_multiplier": st.floats(1, 4)}
        ),
    },
)
submit_entry = contract(req("SubmitTaskRequest"), plausible_submit)
submit_batch = st.one_of(
    st.fixed_dictionaries({"tasks": st.lists(submit_entry, min_size=1, max_size=4)}),
    st.just({"tasks": []}),
    st.just({"tasks": [{"task_type": "echo"}] * 1001}),
)


error_spec = with_optional(
    {"message": st.text(max_size=20)},
    {"type": st.text(max_size=10), "retryable": st.booleans(), "details": struct_value},
)


def report_of(probe_index: int) -> st.SearchStrategy[dict[str, Any]]:
    ids_ = probe_fields(probe_index)
    return st.one_of(
        st.just({"acknowledge": ids_}),
        with_optional(probe_strategies(probe_index), {"lease_duration": valid_duration}).map(
            lambda r: {"extend_lease": r}
        ),
        with_optional(probe_strategies(probe_index), {"result": struct_value}).map(
            lambda r: {"complete": r}
        ),
        with_optional(probe_strategies(probe_index), {"error": error_spec}).map(
            lambda r: {"fail": r}
        ),
    )


report_entry = contract(req("TaskReport"), probe.flatmap(report_of))
report_batch = st.one_of(
    st.fixed_dictionaries({"reports": st.lists(report_entry, min_size=1, max_size=4)}),
    st.just({"reports": []}),
    st.just({"reports": [{"acknowledge": {"task_id": "t", "agent_id": "a"}}] * 1001}),
)

PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "aitbc.coordinator.v1.AgentService/RegisterAgent": with_optional(
        {"agent_id": pool_id, "agent_type": st.sampled_from(("worker", "inference"))},
        {
            "capabilities": st.lists(st.sampled_from(("gpu", "text")), max_size=2),
            "labels": st.dictionaries(
                st.sampled_from(("zone", "tier")), st.text(max_size=5), max_size=2
            ),
            "max_concurrency": st.integers(0, 8),
            "weight": st.floats(0.1, 10),
        },
    ),
    "aitbc.coordinator.v1.AgentService/Heartbeat": with_optional(
        {"agent_id": st.one_of(st.just(CONNECTED_ID), pool_id)},
        {
            "status": st.sampled_from((0, 1, 3)),
            "load_metrics": st.fixed_dictionaries({"cpu": st.floats(0, 1)}),
        },
    ),
    "aitbc.coordinator.v1.AgentService/UpdateAgentStatus": with_optional(
        {"agent_id": pool_id, "status": st.sampled_from((1, 3, 4, 5))},
        {"reason": st.text(max_size=20)},
    ),
    "aitbc.coordinator.v1.AgentService/DeregisterAgent": st.fixed_dictionaries(
        {"agent_id": pool_id}
    ),
    "aitbc.coordinator.v1.AgentService/GetAgent": st.fixed_dictionaries({"agent_id": pool_id}),
    "aitbc.coordinator.v1.AgentService/DiscoverAgents": with_optional(
        {},
        {
            "statuses": st.lists(known_statuses, max_size=3),
            "agent_type": st.sampled_from(("worker", "inference")),
            "capabilities": st.lists(st.sampled_from(("gpu", "text")), max_size=2),
            "min_health_score": st.floats(0, 1),
            "page_size": st.integers(0, 1000),
            "page_token": page_token,
        },
    ),
    "aitbc.coordinator.v1.AgentService/StreamAssignments": with_optional(
        {"agent_id": pool_id}, {"max_assignments_per_message": st.integers(0, 64)}
    ),
    "aitbc.coordinator.v1.TaskService/SubmitTask": plausible_submit,
    "aitbc.coordinator.v1.TaskService/SubmitTasks": submit_batch,
    "aitbc.coordinator.v1.TaskService/StreamSubmitTasks": submit_batch,
    "aitbc.coordinator.v1.TaskService/GetTask": st.fixed_dictionaries({"task_id": task_ref}),
    "aitbc.coordinator.v1.TaskService/ListTasks": with_optional(
        {},
        {
            "states": st.lists(known_states, max_size=3),
            "agent_id": st.one_of(pool_id, st.just(WORKER_ID)),
            "priorities": st.lists(known_priorities, max_size=3),
            "dead_letter": st.booleans(),
            "page_size": st.integers(0, 1000),
            "page_token": page_token,
        },
    ),
    "aitbc.coordinator.v1.TaskService/CancelTask": with_optional(
        {"task_id": task_ref}, {"reason": st.text(max_size=20)}
    ),
    "aitbc.coordinator.v1.TaskService/AcknowledgeTask": probe.map(probe_fields),
    "aitbc.coordinator.v1.TaskService/ExtendTaskLease": probe.flatmap(
        lambda i: with_optional(probe_strategies(i), {"lease_duration": valid_duration})
    ),
    "aitbc.coordinator.v1.TaskService/CompleteTask": probe.flatmap(
        lambda i: with_optional(probe_strategies(i), {"result": struct_value})
    ),
    "aitbc.coordinator.v1.TaskService/FailTask": probe.flatmap(
        lambda i: with_optional(probe_strategies(i), {"error": error_spec})
    ),
    "aitbc.coordinator.v1.TaskService/ReportTasks": report_batch,
    "aitbc.coordinator.v1.TaskService/StreamReportTasks": report_batch,
    "aitbc.coordinator.v1.TaskService/WatchTask": st.fixed_dictionaries({"task_id": task_ref}),
    "aitbc.coordinator.v1.TaskService/GetStats": st.just({}),
    "aitbc.coordinator.v1.TaskService/ListQueues": st.just({}),
    "aitbc.coordinator.v1.TaskService/PurgeQueue": with_optional(
        {"priority": known_priorities}, {"reason": st.text(max_size=20)}
    ),
    "aitbc.coordinator.v1.TaskService/GetBalancingStrategy": st.just({}),
    "aitbc.coordinator.v1.TaskService/SetBalancingStrategy": st.fixed_dictionaries(
        {"strategy": st.integers(0, 8)}
    ),
}
"""A plausible request per RPC (valid, or nearly: it reaches the handler's real work)."""


def strategy_for(method: str) -> st.SearchStrategy[list[dict[str, Any]]]:
    """The requests of one example, as specs: one for a unary or server-streaming RPC, a few
    messages for a client stream."""
    descriptor = METHODS[method]
    one = contract(descriptor.input_type, PLAUSIBLE[method])
    if descriptor.client_streaming:
        return st.lists(one, min_size=1, max_size=3)
    return one.map(lambda spec: [spec])


def nested_bytes(levels: int) -> bytes:
    """Field 1, length-delimited, inside itself ``levels`` times: past the parser's depth."""
    data = b""
    for _ in range(levels):
        size, prefix = len(data), b""
        while True:
            prefix += bytes([(size & 0x7F) | (0x80 if size > 0x7F else 0)])
            size >>= 7
            if not size:
                break
        data = b"\x0a" + prefix + data
    return data


KNOWN_BAD_BYTES = (
    b"\xff",  # a tag that is a truncated varint
    b"\x0a\xff\xff\xff\xff\x0f",  # field 1, length-delimited, length 4 GiB
    b"\x0a\x05ab",  # field 1, length 5, 2 bytes
    b"\x08" + b"\x80" * 11,  # a varint longer than 10 bytes
    b"\x0f",  # wire type 7 (does not exist)
    b"\x0d\x00\x00",  # field 1 fixed32, truncated
    b"\x00\x00",  # field number 0
    b"\x0a\x02\x0a\x05",  # a nested message cut short
    nested_bytes(150),
)
raw_payload = st.one_of(st.sampled_from(KNOWN_BAD_BYTES), st.binary(max_size=120))


# --------------------------------------------------------------------------- specs to messages
def message_class(desc: pb_descriptor.Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(desc)


def fill(message: Message, spec: dict[str, Any]) -> None:
    """Set ``spec`` on ``message`` in place. (Building nested messages separately and copying
    them would re-parse them, which the Python runtime refuses past 100 levels: in place, a
    request can be as deep as the test wants.)"""
    for name, value in spec.items():
        fd = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name) if fd.type == FieldDescriptor.TYPE_MESSAGE else None
        if is_map(fd):
            value_fd = fd.message_type.fields_by_name["value"]
            for key, item in value.items():
                if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                    fill_message(target[key], item)
                else:
                    target[key] = item
        elif fd.is_repeated:
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                for item in value:
                    fill_message(target.add(), item)
            else:
                getattr(message, name).extend(value)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            target.SetInParent()
            fill_message(target, value)
        else:
            setattr(message, name, value)


def fill_message(target: Message, value: Any) -> None:
    kind = target.DESCRIPTOR.full_name
    if kind == "google.protobuf.Struct":
        target.update(value)
    elif kind in ("google.protobuf.Duration", "google.protobuf.Timestamp"):
        target.seconds, target.nanos = value  # type: ignore[attr-defined]
    else:
        fill(target, value)


def forge_tokens(node: LiveNode, method: str, specs: list[dict[str, Any]]) -> list[Any]:
    """The specs with each ForgedToken replaced by a forgery of a real next_page_token."""
    forged = []
    for spec in specs:
        token = spec.get("page_token")
        if isinstance(token, ForgedToken):
            first = message_class(METHODS[method].input_type)()
            fill(first, {k: v for k, v in spec.items() if k not in ("page_token", "page_size")})
            first.page_size = 1  # type: ignore[attr-defined]
            try:
                real = node.call(method)(first, timeout=UNARY_TIMEOUT_S).next_page_token
            except grpc.RpcError:
                real = ""  # the filters are refused anyway
            spec = {**spec, "page_token": forge(real, token.forgery)}
        forged.append(spec)
    return forged


def resolve(spec: Any, probes: Callable[[int], Assignment]) -> Any:
    """The spec with its placeholders replaced by the fields of fresh assignments."""
    if isinstance(spec, Placeholder):
        assignment = probes(spec.probe)
        return WORKER_ID if spec.part == "agent_id" else getattr(assignment, spec.part)
    if isinstance(spec, dict):
        return {k: resolve(v, probes) for k, v in spec.items()}
    if isinstance(spec, list):
        return [resolve(v, probes) for v in spec]
    return spec


Assignment = agent_pb2.Assignment


# --------------------------------------------------------------------------- the live node
def multicallable(channel: grpc.Channel, method: str, raw: bool = False) -> Any:
    """A callable for ``method``; with ``raw``, requests and replies are bytes."""
    descriptor = METHODS[method]
    path = f"/{method}"
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(descriptor.client_streaming, descriptor.server_streaming)]
    if raw:
        return kind(path, request_serializer=None, response_deserializer=None)
    return kind(
        path,
        request_serializer=message_class(descriptor.input_type).SerializeToString,
        response_deserializer=message_class(descriptor.output_type).FromString,
    )


class Worker:
    """The test's own agent, on plain threads: it holds its StreamAssignments open and
    heartbeats; assignments of the test's probe tasks wait for the test, every other task
    pushed to it is completed at once (so its slots stay free). It reads the stream as bytes
    and counts the assignments that a Python agent could not decode."""

    def __init__(self, channel: grpc.Channel, agent_id: str) -> None:
        self.agent_id = agent_id
        self.channel = channel
        self._stream = channel.unary_stream(
            "/aitbc.coordinator.v1.AgentService/StreamAssignments",
            request_serializer=agent_pb2.StreamAssignmentsRequest.SerializeToString,
            response_deserializer=None,
        )
        self._complete = channel.unary_unary(
            "/aitbc.coordinator.v1.TaskService/CompleteTask",
            request_serializer=task_pb2.CompleteTaskRequest.SerializeToString,
            response_deserializer=None,
        )
        self._register = multicallable(channel, "aitbc.coordinator.v1.AgentService/RegisterAgent")
        self._heartbeat = multicallable(channel, "aitbc.coordinator.v1.AgentService/Heartbeat")
        self.undecodable: list[str] = []
        self.stream_errors: list[str] = []
        """How the worker's stream ended each time it did (it never should)."""
        self.checked = (0, 0)
        """How many undecodable messages and stream ends the last check saw."""
        self.ready = threading.Event()
        self._probes: dict[str, Assignment] = {}
        self._arrived = threading.Condition()
        self._stopping = threading.Event()
        self._call: Any = None
        self._threads = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._beat, daemon=True),
        ]

    def start(self) -> None:
        self._register(
            agent_pb2.RegisterAgentRequest(
                agent_id=self.agent_id, agent_type="worker", max_concurrency=1024
            ),
            timeout=UNARY_TIMEOUT_S,
        )
        for thread in self._threads:
            thread.start()
        assert self.ready.wait(10), "the worker's stream did not open"

    def stop(self) -> None:
        self._stopping.set()
        if self._call is not None:
            self._call.cancel()
        for thread in self._threads:
            thread.join(5)

    def _read(self) -> None:
        while not self._stopping.is_set():
            self._call = self._stream(
                agent_pb2.StreamAssignmentsRequest(
                    agent_id=self.agent_id, max_assignments_per_message=8
                )
            )
            try:
                for raw in self._call:
                    self._on_event(raw)
            except grpc.RpcError as error:
                if not self._stopping.is_set():
                    self.stream_errors.append(
                        f"{error.code().name}: {(error.details() or '')[:200]}"
                    )
            if not self._stopping.is_set():
                time.sleep(0.1)
                self._register(
                    agent_pb2.RegisterAgentRequest(
                        agent_id=self.agent_id, agent_type="worker", max_concurrency=1024
                    ),
                    timeout=UNARY_TIMEOUT_S,
                )

    def _on_event(self, raw: bytes) -> None:
        try:
            event = agent_pb2.StreamAssignmentsResponse.FromString(raw)
        except DecodeError as exc:
            self.undecodable.append(f"{len(raw)} bytes: {exc}")
            return
        kind = event.WhichOneof("event")
        if kind == "ready":
            self.ready.set()
        assignments = (
            [event.assignment]
            if kind == "assignment"
            else list(event.assignments.assignments)
            if kind == "assignments"
            else []
        )
        for assignment in assignments:
            marker = assignment.task_data.fields.get("probe")
            if marker is not None and marker.string_value == PROBE_MARKER:
                with self._arrived:
                    self._probes[assignment.task_id] = assignment
                    self._arrived.notify_all()
                continue
            try:
                self._complete(
                    task_pb2.CompleteTaskRequest(
                        task_id=assignment.task_id,
                        agent_id=self.agent_id,
                        fencing_token=assignment.fencing_token,
                    ),
                    timeout=UNARY_TIMEOUT_S,
                )
            except grpc.RpcError:
                pass  # a refusal here is the fuzzed calls' business, checked there

    def _beat(self) -> None:
        while not self._stopping.wait(0.5):
            try:
                self._heartbeat(
                    agent_pb2.HeartbeatRequest(agent_id=self.agent_id), timeout=UNARY_TIMEOUT_S
                )
            except grpc.RpcError:
                pass

    def news(self) -> list[str]:
        """What went wrong on this agent's side since the last call."""
        undecodable = self.undecodable[self.checked[0] :]
        ended = self.stream_errors[self.checked[1] :]
        self.checked = (len(self.undecodable), len(self.stream_errors))
        news = []
        if undecodable:
            news.append(
                f"{self.agent_id}: {len(undecodable)} assignment message(s) a Python agent "
                f"could not decode: {undecodable[:3]}"
            )
        if ended:
            news.append(f"{self.agent_id}: its stream ended {len(ended)} time(s): {ended[:3]}")
        return news

    def wait_probe(self, task_id: str, timeout_s: float = 10.0) -> Assignment:
        with self._arrived:
            found = self._arrived.wait_for(lambda: task_id in self._probes, timeout_s)
            assert found, (
                f"the probe task {task_id} was not assigned to the worker in {timeout_s} s"
            )
            return self._probes.pop(task_id)


@dataclass(repr=False)
class LiveNode:
    redis_server: RedisServer
    process: CoordinatorProcess
    channel: grpc.Channel
    worker: Worker
    connected: Worker
    redis: redis.Redis
    log_offset: int = 0
    seen_updates: dict[str, bytes] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"LiveNode({self.process.address})"

    def call(self, method: str, raw: bool = False) -> Any:
        key = (method, raw)
        if key not in self._calls:
            self._calls[key] = multicallable(self.channel, method, raw)
        return self._calls[key]

    def __post_init__(self) -> None:
        self._calls: dict[tuple[str, bool], Any] = {}

    def submit_probe(self) -> Assignment:
        """A task pinned to the worker, and its assignment (fresh task_id and token)."""
        request = task_pb2.SubmitTaskRequest(
            task_type="probe",
            max_attempts=1,
            requirements=task_pb2.TaskRequirements(agent_id=WORKER_ID),
        )
        request.task_data.update({"probe": PROBE_MARKER})
        reply = self.call("aitbc.coordinator.v1.TaskService/SubmitTask")(
            request, timeout=UNARY_TIMEOUT_S
        )
        return self.worker.wait_probe(reply.task.task_id)

    def reset_pool(self) -> None:
        """Register the pool agents again: a batch starts with them known and ACTIVE."""
        register = self.call("aitbc.coordinator.v1.AgentService/RegisterAgent")
        status = self.call("aitbc.coordinator.v1.AgentService/UpdateAgentStatus")
        for agent_id in POOL_AGENTS:
            register(
                agent_pb2.RegisterAgentRequest(
                    agent_id=agent_id, agent_type="worker", max_concurrency=4
                ),
                timeout=UNARY_TIMEOUT_S,
            )
            status(
                agent_pb2.UpdateAgentStatusRequest(
                    agent_id=agent_id, status=agent_pb2.AGENT_STATUS_ACTIVE
                ),
                timeout=UNARY_TIMEOUT_S,
            )


@pytest.fixture(scope="module")
def live() -> Iterator[LiveNode]:
    server = RedisServer()
    server.start()
    process = CoordinatorProcess(
        {
            "REDIS_URL": server.url(0),
            "NODE_ID": "prop-node",
            "COORDINATOR_HEARTBEAT_INTERVAL_S": "0.5",
            "COORDINATOR_LIVENESS_TIMEOUT_S": "3",
            "COORDINATOR_STREAM_GRACE_S": "1",
            "COORDINATOR_TASK_TIMER_INTERVAL_S": "0.1",
        }
    )
    channel: grpc.Channel | None = None
    agents: list[Worker] = []
    client = redis.Redis.from_url(server.url(0))
    try:
        process.wait_serving()
        channel = grpc.insecure_channel(process.address)
        agents = [Worker(channel, WORKER_ID), Worker(channel, CONNECTED_ID)]
        for agent in agents:
            agent.start()
        node = LiveNode(server, process, channel, agents[0], agents[1], client)
        node.reset_pool()
        submit = node.call("aitbc.coordinator.v1.TaskService/SubmitTask")
        for n in range(4):
            request = task_pb2.SubmitTaskRequest(
                task_type="seed",
                requirements=task_pb2.TaskRequirements(capabilities=["nobody-has-it"]),
            )
            request.task_data.update({"n": n})
            KNOWN_TASK_IDS.append(submit(request, timeout=UNARY_TIMEOUT_S).task.task_id)
        KNOWN_TASK_IDS.append(node.submit_probe().task_id)
        node.log_offset = len(process.logs())
        yield node
    finally:
        KNOWN_TASK_IDS.clear()
        for agent in agents:
            agent.stop()
        if channel is not None:
            channel.close()
        process.close()
        client.close()
        server.close()


# --------------------------------------------------------------------------- checks
def trailer_bytes(error: grpc.RpcError) -> int:
    total = 0
    for key, value in error.trailing_metadata() or ():
        total += len(key) + (len(value) if isinstance(value, bytes) else len(value.encode()))
    return total


def check_error(
    where: str, error: grpc.RpcError, *, short_deadline: bool, request_bytes: int
) -> None:
    """An error answer must be one a client can act on, bounded, with no Python internals."""
    code = error.code()
    details = error.details() or ""
    shown = f"{where}: {code.name}: {details[:300]!r}"
    allowed = ALLOWED | (SHORT_DEADLINE_CODES if short_deadline else frozenset())
    assert code in allowed, f"code not allowed: {shown}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # Allowed for a request over the limit (or a documented quota), not for a reply the
        # node built too large, nor for error trailers too large for the client.
        assert "metadata size" not in details, f"error trailers over the client's limit: {shown}"
        if "larger than max" in details:
            assert request_bytes > MAX_MESSAGE_BYTES, f"reply over the message limit: {shown}"
    assert not PYTHON_INTERNALS.search(details), f"message shows Python internals: {shown}"
    size = trailer_bytes(error) + len(details.encode())
    assert size <= MAX_TRAILER_BYTES, f"message and trailers of {size} bytes: {shown}"


BATCH_FIELDS = ("tasks", "reports")
"""The entries of a batch request (SubmitTasks, ReportTasks and their streams): each is
refused on its own, in its result, while the call succeeds."""
REFUSAL_DEPTH = 40
"""A Struct nested deeper than this must be refused (the limit is 32 levels; the margin
leaves the exact way of counting levels to the implementation)."""


def struct_depth_and_finite(value: Message, depth: int = 1) -> tuple[int, bool]:
    """How deep a Struct, ListValue or Value nests, and whether all its numbers are finite."""
    kind = value.DESCRIPTOR.full_name
    if kind == "google.protobuf.Value":
        which = value.WhichOneof("kind")
        if which == "number_value":
            return depth, math.isfinite(value.number_value)
        if which in ("struct_value", "list_value"):
            return struct_depth_and_finite(getattr(value, which), depth)
        return depth, True
    children = value.fields.values() if kind == "google.protobuf.Struct" else value.values
    deepest, finite = depth, True
    for child in children:
        child_depth, child_finite = struct_depth_and_finite(child, depth + 1)
        deepest, finite = max(deepest, child_depth), finite and child_finite
    return deepest, finite


def forbidden(message: Message, skip: tuple[str, ...] = ()) -> str | None:
    """Why the contract forbids this request (an unknown enum number, a number that is not
    finite, a Struct nested too deep), or None."""
    for fd, value in message.ListFields():
        if fd.name in skip:
            continue
        values = list(value.values()) if is_map(fd) else value if fd.is_repeated else [value]
        item_fd = fd.message_type.fields_by_name["value"] if is_map(fd) else fd
        for item in values:
            reason = forbidden_value(item_fd, item)
            if reason is not None:
                return f"{fd.name}{reason}"
    return None


def forbidden_value(fd: FieldDescriptor, item: Any) -> str | None:
    """forbidden() for one value of field ``fd``."""
    if fd.type == FieldDescriptor.TYPE_ENUM and fd.enum_type.values_by_number.get(item) is None:
        return f": unknown enum number {item}"
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return None if math.isfinite(item) else f": {item}"
    if fd.type != FieldDescriptor.TYPE_MESSAGE:
        return None
    kind = item.DESCRIPTOR.full_name
    if kind == "google.protobuf.Struct":
        depth, finite = struct_depth_and_finite(item)
        if depth > REFUSAL_DEPTH:
            return f": a Struct nested {depth} levels"
        return None if finite else ": a Struct with a number that is not finite"
    if kind.startswith("google.protobuf."):
        return None
    reason = forbidden(item)
    return None if reason is None else f".{reason}"


def check_ok(where: str, replies: list[Any], requests: list[Message]) -> None:
    """An OK answer: it refused nothing the contract forbids, and a batch answers one result
    per entry (the forbidden entries with their error), one reply per request message."""
    for request in requests:
        reason = forbidden(request, skip=BATCH_FIELDS)
        assert reason is None, f"{where}: OK for a request with {reason}"
    batch = next((f for f in BATCH_FIELDS if f in requests[0].DESCRIPTOR.fields_by_name), None)
    if batch is None:
        return
    assert len(replies) == len(requests), (
        f"{where}: {len(replies)} replies to {len(requests)} messages"
    )
    for reply, request in zip(replies, requests, strict=True):
        entries = getattr(request, batch)
        assert len(reply.results) == len(entries), (
            f"{where}: {len(reply.results)} results for {len(entries)} entries"
        )
        for index, (entry, result) in enumerate(zip(entries, reply.results, strict=True)):
            reason = forbidden(entry)
            assert reason is None or result.HasField("error"), (
                f"{where}: entry {index} with {reason} accepted"
            )


def exchange(node: LiveNode, method: str, messages: list[Any], raw: bool = False) -> None:
    """Send one example's request(s) and check the answer."""
    descriptor = METHODS[method]
    call = node.call(method, raw)
    short = descriptor.server_streaming and not descriptor.client_streaming
    timeout = SHORT_STREAM_DEADLINE_S if short else UNARY_TIMEOUT_S
    sizes = [len(m) if raw else m.ByteSize() for m in messages]
    where = f"{method}{' (raw bytes)' if raw else ''}"
    replies: list[Any] = []
    try:
        if descriptor.client_streaming:
            replies = list(call(iter(messages), timeout=timeout))
        elif descriptor.server_streaming:
            for reply in call(messages[0], timeout=timeout):
                replies.append(reply)
        else:
            replies = [call(messages[0], timeout=timeout)]
    except grpc.RpcError as error:
        check_error(where, error, short_deadline=short, request_bytes=max(sizes))
        return
    if not raw:
        check_ok(where, replies, messages)


LOG_LINE_START = re.compile(r"^\d{4}-\d\d-\d\dT", re.MULTILINE)


def traceback_summaries(logs: str) -> list[str]:
    """Each logged traceback as its log line and its last line (the exception)."""
    summaries = []
    for entry in LOG_LINE_START.split(logs):
        if "Traceback (most recent call last)" in entry:
            lines = entry.strip().splitlines()
            summaries.append(f"{lines[0][:200]} ... {lines[-1][:300]}")
    return summaries


def check_node(node: LiveNode) -> None:
    """After a batch: SERVING, no traceback logged, every task reads back, every assignment
    pushed to the worker decoded."""
    problems: list[str] = []
    status = node.process.health(timeout_s=5)
    if status != "SERVING":
        problems.append(f"health is {status}")
    logs = node.process.logs()
    new_logs, node.log_offset = logs[node.log_offset :], len(logs)
    tracebacks = traceback_summaries(new_logs)
    if tracebacks:
        problems.append(
            f"the node logged {len(tracebacks)} traceback(s); the first: {tracebacks[0]}"
        )
    for agent in (node.worker, node.connected):
        problems.extend(agent.news())

    # Tasks stored or changed since the last check: each through GetTask.
    with node.redis.pipeline(transaction=True) as pipe:  # archived meanwhile: seen once
        pipe.zrange(keys.TASK_ALL, 0, -1)
        pipe.lrange(keys.TASK_ARCHIVED, 0, -1)
        task_ids = [t.decode() for listed in pipe.execute() for t in listed]
    with node.redis.pipeline(transaction=False) as pipe:
        for task_id in task_ids:
            pipe.hget(keys.task(task_id), "updated_at_ms")
        updated = pipe.execute()
    changed = [t for t, u in zip(task_ids, updated, strict=True) if node.seen_updates.get(t) != u]
    get_task = node.call("aitbc.coordinator.v1.TaskService/GetTask")
    unreadable: list[str] = []
    futures = [
        (t, get_task.future(task_pb2.GetTaskRequest(task_id=t), timeout=UNARY_TIMEOUT_S))
        for t in changed
    ]
    stamps = dict(zip(task_ids, updated, strict=True))
    for task_id, future in futures:
        node.seen_updates[task_id] = stamps[task_id]  # reported once, when stored or changed
        try:
            future.result()
        except grpc.RpcError as error:
            unreadable.append(f"{task_id}: {error.code().name}: {(error.details() or '')[:120]}")
    if unreadable:
        problems.append(
            f"GetTask cannot read {len(unreadable)} of {len(changed)} task(s) stored or changed in this batch: {unreadable[:3]}"
        )

    # Every task, page by page, through ListTasks (all of them, and the worker's).
    list_tasks = node.call("aitbc.coordinator.v1.TaskService/ListTasks")
    for query in (task_pb2.ListTasksRequest(), task_pb2.ListTasksRequest(agent_id=WORKER_ID)):
        token, pages, listed = "", 0, 0
        while True:
            query.page_token = token
            try:
                page = list_tasks(query, timeout=UNARY_TIMEOUT_S)
            except grpc.RpcError as error:
                problems.append(
                    f"ListTasks{'(agent_id=worker)' if query.agent_id else ''} page {pages + 1} after {listed} tasks: "
                    f"{error.code().name}: {(error.details() or '')[:160]}"
                )
                break
            pages += 1
            listed += len(page.tasks)
            token = page.next_page_token
            if not token or pages > 10_000:
                break
        if (
            not query.agent_id
            and listed != len(task_ids)
            and not any(p.startswith("ListTasks page") for p in problems)
        ):
            problems.append(f"ListTasks listed {listed} tasks, Redis holds {len(task_ids)}")
    assert not problems, "after the batch:\n- " + "\n- ".join(problems)


def run_batch(node: LiveNode, body: Callable[[], None]) -> None:
    """Run a batch of examples, then check the node whatever the examples found; one
    failure that tells both."""
    node.reset_pool()
    failures: list[str] = []
    try:
        body()
    except AssertionError as exc:  # Hypothesis re-raises the example's, with notes
        notes = "\n".join(getattr(exc, "__notes__", ()))
        failures.append(f"{exc}\n{notes}".strip())
    try:
        check_node(node)
    except AssertionError as exc:
        failures.append(str(exc))
    if failures:
        raise AssertionError("\n\n".join(failures)) from None


# --------------------------------------------------------------------------- tests
def test_every_rpc_has_a_strategy():
    """A new RPC must get a strategy here (and a removed one lose it)."""
    assert set(PLAUSIBLE) == set(METHODS), (
        f"without a strategy: {sorted(set(METHODS) - set(PLAUSIBLE))}; "
        f"strategy for no RPC: {sorted(set(PLAUSIBLE) - set(METHODS))}"
    )


def run_example(node: LiveNode, method: str, specs: list[dict[str, Any]]) -> None:
    """Build one example's request(s) (fresh assignments for its placeholders, forged page
    tokens), send them and check the answer."""
    request_class = message_class(METHODS[method].input_type)
    probes: dict[int, Assignment] = {}

    def probe_assignment(index: int) -> Assignment:
        if index not in probes:
            probes[index] = node.submit_probe()
        return probes[index]

    messages = []
    for spec in resolve(forge_tokens(node, method, specs), probe_assignment):
        message = request_class()
        fill(message, spec)
        messages.append(message)
    try:
        exchange(node, method, messages)
    finally:
        cancel = node.call("aitbc.coordinator.v1.TaskService/CancelTask", raw=True)
        for assignment in probes.values():  # free the worker's slot
            try:
                cancel(
                    task_pb2.CancelTaskRequest(task_id=assignment.task_id).SerializeToString(),
                    timeout=UNARY_TIMEOUT_S,
                )
            except grpc.RpcError:
                pass


ISSUE_47_DEPTH = {"a": {"s": nested(47, "list", 1)}}
"""issue 14's reproduction of a task_data that a Python reader cannot parse back."""
ENTRY = {"task_type": "echo", "task_data": {"n": 1}}
KNOWN_CASES: dict[str, list[list[dict[str, Any]]]] = {
    "aitbc.coordinator.v1.AgentService/Heartbeat": [
        [{"agent_id": CONNECTED_ID, "status": 99}],
        [{"agent_id": CONNECTED_ID, "status": -1}],
    ],
    "aitbc.coordinator.v1.AgentService/UpdateAgentStatus": [
        [{"agent_id": POOL_AGENTS[0], "status": 99}]
    ],
    "aitbc.coordinator.v1.AgentService/DiscoverAgents": [[{"statuses": [99]}]],
    "aitbc.coordinator.v1.AgentService/RegisterAgent": [
        [
            {
                "agent_id": POOL_AGENTS[0],
                "agent_type": "worker",
                "labels": {f"bad key {i}=": "v" for i in range(10_000)},
            }
        ]
    ],
    "aitbc.coordinator.v1.TaskService/SubmitTask": [
        [{**ENTRY, "task_data": ISSUE_47_DEPTH}],
        [{**ENTRY, "task_data": {"x": math.nan}}],
        [{**ENTRY, "priority": 99}],
    ],
    "aitbc.coordinator.v1.TaskService/SubmitTasks": [
        [{"tasks": [ENTRY, {**ENTRY, "task_data": {"x": math.inf}}]}],
        [{"tasks": [ENTRY, {**ENTRY, "balancing_strategy": 99}]}],
    ],
    "aitbc.coordinator.v1.TaskService/StreamSubmitTasks": [
        [{"tasks": [ENTRY]}, {"tasks": [ENTRY, {**ENTRY, "task_data": {"x": -math.inf}}]}],
    ],
    "aitbc.coordinator.v1.TaskService/GetTask": [[{"task_id": "x" * 5000}]],
    "aitbc.coordinator.v1.TaskService/CancelTask": [[{"task_id": "x" * 5000}]],
    "aitbc.coordinator.v1.TaskService/WatchTask": [[{"task_id": "x" * 5000}]],
    "aitbc.coordinator.v1.TaskService/ListTasks": [
        [{"page_token": ForgedToken("NaN")}],
        [{"states": [99]}],
        [{}],
    ],
    "aitbc.coordinator.v1.TaskService/CompleteTask": [
        [{**probe_fields(0), "result": ISSUE_47_DEPTH}],
        [{**probe_fields(0), "result": {"x": math.nan}}],
    ],
    "aitbc.coordinator.v1.TaskService/FailTask": [
        [{**probe_fields(0), "error": {"message": "m", "details": {"x": math.nan}}}],
    ],
    "aitbc.coordinator.v1.TaskService/ReportTasks": [
        [{"reports": [{"complete": {**probe_fields(0), "result": {"x": math.nan}}}]}],
    ],
    "aitbc.coordinator.v1.TaskService/StreamReportTasks": [
        [{"reports": [{"complete": {**probe_fields(0), "result": {"x": math.nan}}}]}],
    ],
}
"""Requests that broke the contract once (issue 14): every run sends them first."""


@pytest.mark.timeout(BATCH_TIMEOUT_S)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_generated_requests_get_an_actionable_answer(live: LiveNode, method: str):
    if method not in PLAUSIBLE:
        pytest.fail(f"{method} has no strategy in PLAUSIBLE")
    strategy = strategy_for(method)

    @settings(PROFILE)
    @given(data=st.data())
    def examples(data: st.DataObject) -> None:
        run_example(live, method, data.draw(strategy, label="requests"))

    def known_then_generated() -> None:
        for specs in KNOWN_CASES.get(method, []):
            try:
                run_example(live, method, specs)
            except AssertionError as exc:
                raise AssertionError(f"known case {specs!r:.300}: {exc}") from None
        examples()

    run_batch(live, known_then_generated)


@pytest.mark.timeout(BATCH_TIMEOUT_S)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_raw_bytes_get_an_actionable_answer(live: LiveNode, method: str):
    """Bytes that may not decode as the request at all: INVALID_ARGUMENT, never UNKNOWN."""

    @settings(PROFILE, max_examples=max(3, int(PROFILE.max_examples * RAW_EXAMPLES_SHARE)))
    @given(payloads=st.lists(raw_payload, min_size=1, max_size=2))
    def examples(payloads: list[bytes]) -> None:
        exchange(
            live, method, payloads if METHODS[method].client_streaming else payloads[:1], raw=True
        )

    run_batch(live, examples)
