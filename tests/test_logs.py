"""Log formats: ``key=value`` text (the default) and JSON lines carrying the structured
fields (node_id, agent_id, task_id, ...)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import grpc
import pytest

from agent_harness import ScriptedAgent, submit_request
from coordinator import logs
from coordinator.config import ConfigError, load_settings


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    """``logs.configure`` replaces the root logger's handlers: put pytest's back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_a_node_logging_json_writes_only_json_lines_with_its_fields(spawn_node):
    # DEBUG: the lines about each single task (submitted, acknowledged, completed) are DEBUG.
    node = spawn_node(
        env={
            "NODE_ID": "json-node",
            "COORDINATOR_LOG_FORMAT": "json",
            "COORDINATOR_LOG_LEVEL": "DEBUG",
        }
    )
    node.wait_serving()
    async with grpc.aio.insecure_channel(node.address) as channel:
        agent = await ScriptedAgent(channel, "json-agent").start()
        try:
            submitted = await agent.tasks.SubmitTask(submit_request())
            assignment = await agent.next_assignment()
            await agent.acknowledge(assignment)
            await agent.complete(assignment)
        finally:
            await agent.stop()
    node.signal()
    assert node.wait() == 0, node.logs()

    lines = node.logs().splitlines()
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert entries, "the node logged nothing"
    for entry in entries:
        assert {"timestamp", "level", "logger", "message"} <= entry.keys(), entry
        assert entry["node_id"] == "json-node", entry
    assert any(e["message"] == "coordinator stopped" for e in entries)
    by_agent = [e for e in entries if e.get("agent_id") == "json-agent"]
    assert any(e["message"] == "assignment stream opened" for e in by_agent)
    task_id = submitted.task.task_id
    assert [e for e in by_agent if e.get("task_id") == task_id], by_agent


def test_json_lines_carry_extra_fields_and_tracebacks(capsys, restore_root_logger):
    logs.configure("INFO", "unit-node", "json")
    log = logging.getLogger("coordinator.test")
    log.info(
        "task %s by agent", "complete", extra={"agent_id": "a-1", "task_id": "t-1", "attempt": 2}
    )
    # An extra field named like a standard key is kept beside it, and one that JSON cannot
    # hold is written as text.
    log.warning("odd fields", extra={"level": "mine", "reason": ValueError("bad")})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("it failed")
    log.debug("below the level")

    first, odd, failed = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first == {
        "timestamp": first["timestamp"],
        "level": "INFO",
        "logger": "coordinator.test",
        "message": "task complete by agent",
        "agent_id": "a-1",
        "attempt": 2,
        "node_id": "unit-node",
        "task_id": "t-1",
    }
    assert first["timestamp"].endswith("Z") and first["timestamp"][10] == "T"
    assert odd["level"] == "WARNING" and odd["extra_level"] == "mine"
    assert odd["reason"] == "bad"
    assert failed["level"] == "ERROR"
    assert "RuntimeError: boom" in failed["exception"]


def test_text_remains_the_default_format(capsys, restore_root_logger):
    assert load_settings({}).log_format == "text"
    logs.configure("INFO", "unit-node")
    logging.getLogger("coordinator.test").info("hello", extra={"agent_id": "a-1"})
    line = capsys.readouterr().err.strip()
    assert line.endswith(" INFO coordinator.test hello agent_id=a-1 node_id=unit-node")


def test_log_format_is_validated_naming_the_variable():
    assert load_settings({"COORDINATOR_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match=r"^COORDINATOR_LOG_FORMAT: "):
        load_settings({"COORDINATOR_LOG_FORMAT": "xml"})
