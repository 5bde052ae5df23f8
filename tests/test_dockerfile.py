"""deploy/Dockerfile, read statically (no Docker daemon here): base image, non-root user,
port, command and health check agree with the code, the files it copies exist and pass
.dockerignore, and those files alone build a package that runs.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from coordinator.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BASE_IMAGE = "python:3.11-slim"


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of every instruction, continuation lines joined, comments out."""
    result: list[tuple[str, str]] = []
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        keyword, _, arguments = (buffer + line).partition(" ")
        result.append((keyword.upper(), " ".join(arguments.split())))
        buffer = ""
    assert not buffer, f"the Dockerfile ends inside an instruction: {buffer!r}"
    return result


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each stage (its FROM first); global ARGs are dropped."""
    result: list[list[tuple[str, str]]] = []
    for keyword, arguments in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, arguments))
    return result


def global_args() -> dict[str, str]:
    """ARG defaults declared before the first FROM."""
    values: dict[str, str] = {}
    for keyword, arguments in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in arguments:
            name, value = arguments.split("=", 1)
            values[name] = value
    return values


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1]


def arguments_of(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [arguments for k, arguments in stage if k == keyword]


def dockerfile_user() -> str:
    """The USER the container runs as (the last one of the final stage)."""
    users = arguments_of(final_stage(), "USER")
    assert users, "the final stage sets no USER: the container would run as root"
    return users[-1]


def copy_sources() -> list[str]:
    """Paths COPY takes from the build context (not from another stage)."""
    sources = []
    for stage in stages():
        for arguments in arguments_of(stage, "COPY"):
            words = shlex.split(arguments)
            if any(w.startswith("--from=") for w in words):
                continue
            flags_dropped = [w for w in words if not w.startswith("--")]
            sources.extend(flags_dropped[:-1])
    return sources


def dockerignore_patterns() -> list[tuple[bool, str]]:
    """(excludes, pattern) per line of .dockerignore, in order."""
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        patterns.append((not include, line.lstrip("!").strip("/")))
    return patterns


def sent_to_builder(relative: str) -> bool:
    """Whether Docker would send this file of the context (the last matching pattern wins;
    a pattern matching a folder matches everything in it; ``**`` matches any folders)."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for excludes, pattern in dockerignore_patterns():
        globs = {pattern}
        if pattern.startswith("**/"):
            globs.add(pattern[3:])
        for candidate in candidates:
            if any(fnmatch.fnmatchcase(candidate, glob) for glob in globs):
                excluded = excludes
                break
    return not excluded


def context_files(source: str) -> list[str]:
    """The repository files under ``source`` (git-tracked or not, no caches) that Docker
    would send."""
    path = ROOT / source
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    relative = [str(p.relative_to(ROOT)) for p in files]
    return [r for r in relative if sent_to_builder(r)]


def test_every_stage_starts_from_python_311_slim() -> None:
    args = global_args()
    for stage in stages():
        image = stage[0][1].split()[0]
        for name, value in args.items():
            image = image.replace(f"${{{name}}}", value).replace(f"${name}", value)
        assert image.startswith(BASE_IMAGE), image


def test_the_container_runs_as_a_numeric_non_root_user_it_creates() -> None:
    user = dockerfile_user()
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, (
        f"USER {user}: runAsNonRoot needs a numeric non-zero uid"
    )
    created = " ".join(arguments_of(final_stage(), "RUN"))
    assert f"useradd --system --uid {uid}" in created, "the final stage must create that user"
    if gid:
        assert f"groupadd --system --gid {gid}" in created


def image_environment() -> dict[str, str]:
    """The ENV of the final stage (``ENV NAME=value ...`` form)."""
    values: dict[str, str] = {}
    for arguments in arguments_of(final_stage(), "ENV"):
        for word in shlex.split(arguments):
            name, _, value = word.partition("=")
            values[name] = value
    return values


def test_it_exposes_the_configured_default_ports() -> None:
    exposed = {
        int(p.split("/")[0]) for a in arguments_of(final_stage(), "EXPOSE") for p in a.split()
    }
    settings = Settings()
    assert settings.port in exposed
    assert settings.metrics_port in exposed
    assert int(image_environment()["COORDINATOR_HEALTH_PORT"]) in exposed


IMAGE_CREDENTIALS = {
    "COORDINATOR_TLS_CERT_FILE": "/etc/aitbc/tls/tls.crt",
    "COORDINATOR_TLS_KEY_FILE": "/etc/aitbc/tls/tls.key",
    "COORDINATOR_AUTH_TOKEN_FILE": "/etc/aitbc/auth/tokens.csv",
}
"""The files the image expects mounted: the same layout as deploy/kubernetes (configmap.yaml)
and deploy/systemd (aitbc.env.example)."""


def test_the_image_serves_tls_and_auth_from_mounted_files() -> None:
    import yaml

    environment = image_environment()
    for name, path in IMAGE_CREDENTIALS.items():
        assert environment.get(name) == path, name
    assert not any(name == "COORDINATOR_INSECURE" for name in environment)
    assert "COORDINATOR_HOST" not in environment, "the default follows authentication"
    configmap = yaml.safe_load((ROOT / "deploy/kubernetes/configmap.yaml").read_text())["data"]
    example = dict(
        line.split("=", 1)
        for line in (ROOT / "deploy/aitbc.env.example").read_text().splitlines()
        if line[:1].isupper() and "=" in line
    )
    for name, path in IMAGE_CREDENTIALS.items():
        assert configmap[name] == example[name] == path, name
    header = DOCKERFILE.read_text().split("\nFROM", 1)[0]
    assert all(path in header for path in IMAGE_CREDENTIALS.values()), "document the mounts"


def test_it_runs_the_serve_command() -> None:
    (command,) = arguments_of(final_stage(), "CMD")
    assert json.loads(command) == ["python", "-m", "coordinator", "serve"]
    assert not arguments_of(final_stage(), "ENTRYPOINT")
    assert arguments_of(final_stage(), "STOPSIGNAL") == ["SIGTERM"]


def test_the_health_check_probes_the_plaintext_health_port() -> None:
    # The gRPC port is TLS: the check asks the health-only plaintext listener instead.
    (healthcheck,) = arguments_of(final_stage(), "HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :])
    assert command[:2] == ["aitbc-coordinator", "health"]
    address = command[command.index("--address") + 1]
    host, port = address.rsplit(":", 1)
    assert host == "127.0.0.1"
    assert port == image_environment()["COORDINATOR_HEALTH_PORT"] != str(Settings().port)


def test_only_runtime_dependencies_are_installed() -> None:
    runs = " ".join(arguments for stage in stages() for arguments in arguments_of(stage, "RUN"))
    assert "pip install" in runs
    assert "[dev]" not in runs and "pip install -e" not in runs and "--editable" not in runs


def test_copied_paths_exist_and_reach_the_builder() -> None:
    sources = copy_sources()
    assert set(sources) == {"pyproject.toml", "src", "generated/python"}, sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert context_files(source), f".dockerignore drops all of {source}"
    needed = [
        "src/coordinator/__main__.py",
        "generated/python/aitbc/coordinator/v1/descriptor_set.binpb",
        *(str(p.relative_to(ROOT)) for p in (ROOT / "src/coordinator/storage/lua").glob("*.lua")),
    ]
    for path in needed:
        assert sent_to_builder(path), f".dockerignore drops {path}"


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    for path in (
        ".venv/bin/python",
        ".git/config",
        ".state/redis/appendonly.aof",
        "tests/conftest.py",
    ):
        assert not sent_to_builder(path), path
    assert not sent_to_builder("src/coordinator/__pycache__/server.cpython-311.pyc")


def test_dockerignore_matcher() -> None:
    assert sent_to_builder("pyproject.toml")
    assert sent_to_builder("src/coordinator/storage/lua/submit_task.lua")
    assert not sent_to_builder("README.md")
    assert not sent_to_builder("generated/js/index.js")


@pytest.mark.timeout(180)
def test_the_copied_files_alone_build_a_package_that_runs(tmp_path: Path) -> None:
    """What ``pip install --no-deps .`` does in the build stage, from a context holding only
    what the Dockerfile copies: the wheel has the code, the Lua scripts, the descriptor set
    and the console script, and ``python -m coordinator`` runs from it."""
    context = tmp_path / "context"
    for source in copy_sources():
        for relative in context_files(source):
            target = context / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / relative, target)
    wheels = tmp_path / "wheels"
    # No build isolation: nothing to download; the dev install has setuptools (grpcio-tools
    # requires it), as the build stage's isolated build gets it from PyPI.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            str(context),
        ],
        check=True,
        capture_output=True,
        timeout=150,
    )
    (wheel,) = wheels.glob("aitbc_agent_coordinator-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    lua = {
        f"coordinator/storage/lua/{p.name}"
        for p in (ROOT / "src/coordinator/storage/lua").glob("*.lua")
    }
    assert lua <= names, sorted(lua - names)
    assert "aitbc/coordinator/v1/descriptor_set.binpb" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert (
        "aitbc-coordinator = coordinator.__main__:main"
        in zipfile.ZipFile(wheel).read(entry_points).decode()
    )

    installed = tmp_path / "installed"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(installed),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    # The installed copy, not the editable one of the venv: it comes first on the path.
    env = {**os.environ, "PYTHONPATH": str(installed)}
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import coordinator.server, sys; print(coordinator.server.__file__)",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().startswith(str(installed)), probe.stdout
    usage = subprocess.run(
        [sys.executable, "-m", "coordinator", "serve", "--help"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert usage.returncode == 0, usage.stderr
    assert "--env-file" in usage.stdout
