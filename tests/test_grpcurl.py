"""The real grpcurl binary against a subprocess node, with no proto files: everything it knows
comes from server reflection, so this checks what an operator sees (services, documented
contract with its comments, health, JSON calls and rich error details).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from aitbc.coordinator.v1 import agent_pb2
from coordinator.server import AGENT_SERVICE, SERVICE_NAMES, TASK_SERVICE

GRPCURL = shutil.which("grpcurl", path=os.path.dirname(sys.executable))
AGENT_MESSAGE = agent_pb2.Agent.DESCRIPTOR.full_name
HEALTH_CHECK = f"{health.SERVICE_NAME}/Check"


def method(service, name: str) -> str:
    return f"{service.full_name}/{service.methods_by_name[name].name}"


@pytest.fixture
def address(spawn_node) -> str:
    assert GRPCURL, f"grpcurl is not installed next to {sys.executable} (pip install -e '.[dev]')"
    node = spawn_node()
    node.wait_serving()
    return node.address


def grpcurl(address: str, *args: str, data: dict | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``grpcurl -plaintext [-d JSON] ADDRESS ARGS...`` (reflection only, no protos)."""
    command = [GRPCURL, "-plaintext", "-max-time", "10"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    return subprocess.run([*command, address, *args], capture_output=True, text=True, timeout=30)


def ok_json(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def test_list_shows_both_services_health_and_reflection(address):
    result = grpcurl(address, "list")
    assert result.returncode == 0, result.stderr
    listed = set(result.stdout.split())
    assert listed >= {*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME}, listed

    result = grpcurl(address, "list", TASK_SERVICE.full_name)
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {
        f"{TASK_SERVICE.full_name}.{m.name}" for m in TASK_SERVICE.methods
    }


def test_describe_shows_the_proto_comments(address):
    result = grpcurl(address, "describe", AGENT_SERVICE.full_name)
    assert result.returncode == 0, result.stderr
    assert "// The agent's open stream is its presence" in result.stdout
    assert "// AgentService is the registry of agents." in result.stdout
    for rpc in AGENT_SERVICE.methods:
        assert f"rpc {rpc.name} (" in result.stdout

    result = grpcurl(address, "describe", AGENT_MESSAGE)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "// Agent is the registry's record of one agent." in text
    # A field's comment sits right above the field.
    comment = text.index("// Unique id chosen by the agent")
    assert comment < text.index("string agent_id = 1;") < text.index("string agent_type = 2;")
    assert "// Effective status, computed at read time" in text

    result = grpcurl(address, "describe", TASK_SERVICE.full_name)
    assert result.returncode == 0, result.stderr
    assert "// TaskService accepts, tracks and settles tasks." in result.stdout


def test_health_check_is_serving_for_the_server_and_each_service(address):
    for name in ("", *SERVICE_NAMES):
        assert ok_json(grpcurl(address, HEALTH_CHECK, data={"service": name})) == {
            "status": "SERVING"
        }, name
    unknown = grpcurl(address, HEALTH_CHECK, data={"service": "no.such.Service"})
    assert unknown.returncode != 0
    assert "Code: NotFound" in unknown.stdout + unknown.stderr


def test_register_and_discover_with_json(address):
    request = {
        "agent_id": "grpcurl-agent",
        "agent_type": "worker",
        "capabilities": ["text-generation"],
        "labels": {"zone": "eu-1"},
        "endpoints": {"http": "http://10.0.0.5:8080"},
    }
    reply = ok_json(grpcurl(address, method(AGENT_SERVICE, "RegisterAgent"), data=request))
    assert reply["created"] is True
    assert reply["agent"]["agentId"] == "grpcurl-agent"
    assert reply["agent"]["status"] == "AGENT_STATUS_ACTIVE"
    assert reply["heartbeatInterval"] == "10s"

    again = ok_json(grpcurl(address, method(AGENT_SERVICE, "RegisterAgent"), data=request))
    assert again.get("created", False) is False  # proto3 JSON omits false

    for filters in ({"capabilities": ["text-generation"]}, {"labels": {"zone": "eu-1"}}):
        found = ok_json(grpcurl(address, method(AGENT_SERVICE, "DiscoverAgents"), data=filters))
        assert [a["agentId"] for a in found["agents"]] == ["grpcurl-agent"], filters
        assert found["totalSize"] == 1
    none = ok_json(
        grpcurl(address, method(AGENT_SERVICE, "DiscoverAgents"), data={"labels": {"zone": "us-1"}})
    )
    assert none.get("agents", []) == []


def test_invalid_register_shows_invalid_argument_and_bad_request_details(address):
    result = grpcurl(
        address,
        method(AGENT_SERVICE, "RegisterAgent"),
        data={"agent_id": "", "agent_type": "worker", "labels": {"bad=key": "x"}},
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Code: InvalidArgument" in output, output
    assert "agent_id: is required" in output
    assert "type.googleapis.com/google.rpc.BadRequest" in output
    details = json.loads(output[output.index('{"@type"') :].splitlines()[0])
    assert details["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    fields = [v["field"] for v in details["field_violations"]]
    assert fields == ["agent_id", "labels['bad=key']"], details


def test_submit_and_get_a_task_with_json(address):
    result = grpcurl(address, "describe", TASK_SERVICE.full_name)
    assert result.returncode == 0, result.stderr
    assert "rpc SubmitTask (" in result.stdout
    assert "rpc GetTask (" in result.stdout

    request = {
        "task_type": "grpcurl-task",
        "task_data": {"prompt": "hello", "n": 2},
        "priority": "TASK_PRIORITY_HIGH",
        "requirements": {"capabilities": ["text-generation"]},
        "request_id": "grpcurl-request-1",
    }
    submitted = ok_json(grpcurl(address, method(TASK_SERVICE, "SubmitTask"), data=request))
    assert submitted["created"] is True
    task = submitted["task"]
    assert task["taskId"]
    assert task["taskType"] == "grpcurl-task"
    assert task["state"] == "TASK_STATE_PENDING"  # no agent can take it
    assert task["priority"] == "TASK_PRIORITY_HIGH"
    assert task["taskData"] == {"prompt": "hello", "n": 2}

    # The same request_id again: the same task, nothing created.
    again = ok_json(grpcurl(address, method(TASK_SERVICE, "SubmitTask"), data=request))
    assert again.get("created", False) is False
    assert again["task"]["taskId"] == task["taskId"]

    got = ok_json(
        grpcurl(address, method(TASK_SERVICE, "GetTask"), data={"task_id": task["taskId"]})
    )["task"]
    assert got["taskId"] == task["taskId"]
    assert got["state"] == "TASK_STATE_PENDING"
    assert got["taskData"] == {"prompt": "hello", "n": 2}
    assert got["requirements"]["capabilities"] == ["text-generation"]
    assert [t["state"] for t in got["transitions"]] == ["TASK_STATE_PENDING"]

    unknown_id = "0" * 32  # well formed, never issued
    missing = grpcurl(address, method(TASK_SERVICE, "GetTask"), data={"task_id": unknown_id})
    assert missing.returncode != 0
    assert "Code: NotFound" in missing.stdout + missing.stderr
