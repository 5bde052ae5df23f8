"""docs/security.md cannot rot: every command of its console blocks is run, in order, with
the real grpcurl and aitbc-coordinator, against real nodes with TLS and authentication on,
and its output is compared with the documented one (the parser and the comparison of
tests/docs_support.py).

The nodes are the page's ```dotenv blocks: each starts with ``# node: VAR`` and is written
to a file and served with ``serve --env-file`` (``${DIR}`` taken from the environment, as
the page says), just before the first command that uses ``$VAR``, which then holds the
node's address (``localhost:PORT``: the development certificate names localhost). ``DIR`` is
the test's scratch folder. Besides what docs_support replaces, a node's address reads as
``$VAR`` and a token hash as ``<sha256>`` in the compared output.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from docs_support import (
    GRPCURL,
    command_environment,
    normalise,
    output_matches,
    parse_console,
    run_step,
)
from support import RedisServer, wait_until

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "security.md"
DOTENV = re.compile(r"```dotenv\n(.*?)```", re.S)
NODE_LINE = re.compile(r"^# node: ([A-Z_]+)$")
SHA256 = re.compile(r"\b[0-9a-f]{64}\b")


def node_blocks(text: str) -> dict[str, str]:
    """{address variable: env file text} of the page's ```dotenv blocks, in order."""
    nodes = {}
    for block in DOTENV.findall(text):
        first, _, _ = block.partition("\n")
        match = NODE_LINE.match(first)
        assert match, f"a dotenv block must start with '# node: VAR': {first!r}"
        nodes[match.group(1)] = block
    return nodes


def uses(command: str, variable: str) -> bool:
    return re.search(rf"\${variable}\b|\$\{{{variable}\}}", command) is not None


def wait_serving_over_tls(address: str, folder: Path, timeout_s: float = 20.0) -> None:
    """SERVING through TLS with the page's CA (and the operator's client certificate, which
    a node requiring one accepts and one that does not ignores)."""
    tls = folder / "tls"
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(tls / "ca.pem").read_bytes(),
        private_key=(tls / "client-ops-alice-key.pem").read_bytes(),
        certificate_chain=(tls / "client-ops-alice.pem").read_bytes(),
    )

    def serving() -> bool:
        with grpc.secure_channel(address, credentials) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1.0
                )
            except grpc.RpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    wait_until(serving, timeout_s, interval_s=0.1, what=f"a TLS node on {address}")


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.mark.timeout(240)
async def test_every_security_command_runs_and_prints_what_is_documented(
    spawn_node, private_redis, tmp_path
) -> None:
    assert GRPCURL, f"grpcurl is not installed next to {sys.executable} (pip install -e '.[dev]')"
    text = PAGE.read_text()
    steps = parse_console(text)
    nodes = node_blocks(text)
    assert set(nodes) == {"ADDR", "MTLS_ADDR"}, nodes
    redis_url = private_redis.url(1)
    env = command_environment("", redis_url)
    del env["ADDR"]
    env["DIR"] = str(tmp_path)
    started: dict[str, str] = {}
    for step in steps:
        for variable, block in nodes.items():
            if variable in started or not uses(step.command, variable):
                continue
            env_file = tmp_path / f"{variable.lower()}.env"
            env_file.write_text(block)
            node = spawn_node(
                {"REDIS_URL": redis_url, "DIR": str(tmp_path), "NODE_ID": variable.lower()},
                args=("--env-file", str(env_file)),
            )
            address = f"localhost:{node.port}"
            wait_serving_over_tls(address, tmp_path)
            started[variable] = env[variable] = address
        code, output, env = await run_step(step, env)
        where = f"docs/security.md line {step.line}: {step.command}"
        assert code == 0, f"{where}\nexit code {code}, output:\n{output}"
        for variable, address in started.items():
            output = output.replace(address, f"${variable}")
        actual = normalise(SHA256.sub("<sha256>", output).splitlines())
        expected = normalise(step.expected)
        assert output_matches(expected, actual), (
            f"{where}\nthe output differs from the documented one:\n"
            + "\n".join(["documented:", *expected, "real:", *actual])
        )
    assert set(started) == set(nodes), f"no command used {set(nodes) - set(started)}"


def test_the_page_shows_every_credential_form_and_no_plaintext_call() -> None:
    commands = [step.command for step in parse_console(PAGE.read_text())]
    grpcurl = [c for c in commands if c.startswith("grpcurl") or "$(grpcurl" in c]
    plaintext = [c for c in grpcurl if "-plaintext" in c]
    assert plaintext and all("|| echo" in c for c in plaintext), "plaintext only as a refusal"
    verified = [c for c in grpcurl if c not in plaintext]
    assert all("-cacert" in c for c in verified), "every grpcurl verifies the node's certificate"
    joined = "\n".join(commands)
    for form in ("-cert ", "-key ", '-H "$', "aitbc-coordinator token ", "--static"):
        assert form in joined, form
    assert "aitbc-coordinator dev-ca " in joined


def test_node_blocks_parse() -> None:
    page = "x\n```dotenv\n# node: ADDR\nA=1\n```\n```dotenv\n# node: B_ADDR\nB=2\n```\n"
    assert node_blocks(page) == {"ADDR": "# node: ADDR\nA=1\n", "B_ADDR": "# node: B_ADDR\nB=2\n"}
    assert uses("grpcurl $ADDR x", "ADDR") and not uses("grpcurl $ADDRESS", "ADDR")
    assert not uses("grpcurl $MTLS_ADDR x", "ADDR")
    with pytest.raises(AssertionError):
        node_blocks("```dotenv\nA=1\n```\n")
