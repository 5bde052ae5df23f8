"""The deployment files and the docs agree with what config.py really reads.

Names are taken from config.py's source with ``ast`` (every ``<reader>.get("NAME", ...)``
call), so a variable added to or removed from config.py fails here until the example env
file, docs/configuration.md and the systemd unit follow.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from coordinator import config
from coordinator.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
ENV_EXAMPLE = ROOT / "deploy" / "aitbc.env.example"
UNIT = ROOT / "deploy" / "systemd" / "aitbc-agent-coordinator.service"
CONFIGURATION_PAGE = ROOT / "docs" / "configuration.md"
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "deploy" / "systemd" / "README.md",
    ROOT / "bench" / "README.md",
]

ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
ENV_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")
MENTIONED = re.compile(r"\b(COORDINATOR_[A-Z0-9_]*[A-Z0-9]|REDIS_URL|NODE_ID)\b")

# Settings fields that are not plain defaults: node_id is random when NODE_ID is empty, and
# redis_url_explicit records whether REDIS_URL was given at all.
NOT_COMPARED = {"node_id", "redis_url_explicit"}


def config_variable_names() -> set[str]:
    """Every variable of ``config.VARIABLES`` and every NAME in a ``something.get("NAME", ...)``
    call of config.py (the variables read apart from the table)."""
    tree = ast.parse(Path(config.__file__).read_text(), filename=config.__file__)
    names = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and ENV_NAME.match(node.args[0].value)
        ):
            names.add(node.args[0].value)
    return names | {variable for variable, _, _ in config.VARIABLES.values()}


def env_example_entries() -> list[tuple[str, str]]:
    """The ``NAME=value`` lines of the example env file, in order."""
    entries = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = ENV_LINE.match(line)
        if match:
            entries.append((match.group(1), match.group(2)))
    return entries


def unit_settings() -> dict[str, dict[str, list[str]]]:
    """The unit file as {section: {key: [values in order]}} (systemd allows repeated keys)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{UNIT.name}: {raw!r} is outside any section"
        assert "=" in line, f"{UNIT.name}: {raw!r} is not KEY=VALUE"
        assert not line.endswith("\\"), f"{UNIT.name}: keep each setting on one line"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


_SPAN_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


def timespan_s(value: str) -> float:
    """A systemd time span ("30", "30s", "1min 30s") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts and re.fullmatch(r"(\s*\d+(\.\d+)?\s*[a-z]*)+\s*", value), value
    return sum(float(number) * _SPAN_UNITS[unit or "s"] for number, unit in parts)


def defaults_without(settings: Settings) -> dict[str, object]:
    return {k: v for k, v in dataclasses.asdict(settings).items() if k not in NOT_COMPARED}


def test_config_py_reads_the_expected_kind_of_names() -> None:
    names = config_variable_names()
    assert {"REDIS_URL", "NODE_ID", "COORDINATOR_PORT"} <= names
    assert all(n in ("REDIS_URL", "NODE_ID") or n.startswith("COORDINATOR_") for n in names)


def test_env_example_lists_exactly_the_variables_config_reads() -> None:
    names = [name for name, _ in env_example_entries()]
    assert len(names) == len(set(names)), f"duplicates in {ENV_EXAMPLE.name}: {names}"
    assert set(names) == config_variable_names()


PRODUCTION_VALUES = {
    "COORDINATOR_TLS_CERT_FILE": "/etc/aitbc/tls/tls.crt",
    "COORDINATOR_TLS_KEY_FILE": "/etc/aitbc/tls/tls.key",
    "COORDINATOR_AUTH_TOKEN_FILE": "/etc/aitbc/auth/tokens.csv",
}
"""The example's only values that are not defaults: a node installed from it serves TLS and
authenticates every call (files laid out as in deploy/systemd/README.md)."""


def test_env_example_values_are_the_defaults() -> None:
    entries = dict(env_example_entries())
    assert {k: entries[k] for k in PRODUCTION_VALUES} == PRODUCTION_VALUES
    # The rest are the defaults (an empty value in the environment means the default).
    from_file = load_settings(dict.fromkeys(PRODUCTION_VALUES, ""), ENV_EXAMPLE)
    assert defaults_without(from_file) == defaults_without(load_settings({}))
    assert defaults_without(from_file) == defaults_without(Settings())


def test_env_example_is_safe_by_default(tmp_path: Path) -> None:
    """With the files it names in place, the example's node has TLS and authentication on,
    so its default host is every interface; COORDINATOR_INSECURE stays false."""
    import trustme

    entries = dict(env_example_entries())
    assert entries["COORDINATOR_INSECURE"] == "false"
    assert entries["COORDINATOR_HOST"] == "", "the default host follows authentication"
    ca = trustme.CA()
    server = ca.issue_cert("node-a.example")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    server.private_key_and_cert_chain_pem.write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    tokens = tmp_path / "tokens.csv"
    tokens.write_text(f"sha256:{'ab' * 32},ops-admin,operator,\n")
    local = {
        "COORDINATOR_TLS_CERT_FILE": str(cert),
        "COORDINATOR_TLS_KEY_FILE": str(key),
        "COORDINATOR_AUTH_TOKEN_FILE": str(tokens),
    }
    assert set(local) == set(PRODUCTION_VALUES)
    assert load_settings(local, ENV_EXAMPLE).host == "0.0.0.0"


def test_env_example_has_no_trailing_comments() -> None:
    # systemd's EnvironmentFile= would keep " # ..." as part of the value.
    for name, value in env_example_entries():
        assert "#" not in value, f"{name}: put the comment on its own line"


def test_unit_reads_the_env_file_and_outlives_the_shutdown_grace() -> None:
    service = unit_settings()["Service"]
    assert service["EnvironmentFile"] == ["/etc/aitbc/.env"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert service["Restart"] == ["on-failure"]
    stop_s = timespan_s(service["TimeoutStopSec"][-1])
    grace_default = Settings().shutdown_grace_s
    grace_example = dict(env_example_entries())["COORDINATOR_SHUTDOWN_GRACE_S"]
    assert stop_s > grace_default
    assert stop_s > float(grace_example)


def test_unit_may_read_the_credential_files_and_nothing_more() -> None:
    service = unit_settings()["Service"]
    # A throw-away user in the group that owns /etc/aitbc/tls and /etc/aitbc/auth.
    assert service["DynamicUser"] == ["yes"]
    assert service["SupplementaryGroups"] == ["aitbc"]
    assert service["ProtectSystem"] == ["strict"]
    assert not any(key.startswith("ReadWrite") for key in service)
    readme = (ROOT / "deploy" / "systemd" / "README.md").read_text()
    assert "install -d -o root -g aitbc -m 0750 /etc/aitbc/tls /etc/aitbc/auth" in readme
    for path in PRODUCTION_VALUES.values():
        assert "-o root -g aitbc -m 0640" in readme and path in readme, path


def test_unit_runs_the_coordinator_serve_command() -> None:
    sections = unit_settings()
    (exec_start,) = sections["Service"]["ExecStart"]
    program, *args = exec_start.split()
    assert program.startswith("/"), "ExecStart needs an absolute path"
    assert program.endswith(("/aitbc-coordinator", "/python", "/python3"))
    assert "serve" in args
    assert "network-online.target" in sections["Unit"]["After"][0].split()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_mention_only_variables_config_reads(doc: Path) -> None:
    unknown = set(MENTIONED.findall(doc.read_text())) - config_variable_names()
    assert not unknown, f"{doc.name} mentions variables config.py does not read: {unknown}"


def test_configuration_page_documents_every_variable() -> None:
    missing = config_variable_names() - set(MENTIONED.findall(CONFIGURATION_PAGE.read_text()))
    assert not missing, f"docs/configuration.md does not document: {sorted(missing)}"


def test_timespan_parser() -> None:
    assert timespan_s("30") == 30
    assert timespan_s("30s") == 30
    assert timespan_s("1min 30s") == 90
    assert timespan_s("500ms") == 0.5
