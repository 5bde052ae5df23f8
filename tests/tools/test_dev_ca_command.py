"""``python -m coordinator dev-ca``: its files make a working mutual-TLS node."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import sys
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from support import REPO
from tls_support import health_over


async def dev_ca(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "coordinator",
        "dev-ca",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def credentials(out: Path, client: str | None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        (out / "ca.pem").read_bytes(),
        (out / f"client-{client}-key.pem").read_bytes() if client else None,
        (out / f"client-{client}.pem").read_bytes() if client else None,
    )


async def test_dev_ca_files_make_a_working_mtls_node(start_node, tmp_path: Path):
    out = tmp_path / "dev"
    code, printed, err = await dev_ca(
        "--out",
        str(out),
        "--server-name",
        "localhost",
        "--client",
        "agent-1:agent",
        "--client",
        "ops-alice:operator,reader",
    )
    assert code == 0, err
    assert "for development only" in printed
    for key in ("ca-key.pem", "server-key.pem", "client-agent-1-key.pem"):
        assert stat.S_IMODE(os.stat(out / key).st_mode) == 0o600, key

    ops = x509.load_pem_x509_certificate((out / "client-ops-alice.pem").read_bytes())
    assert [a.value for a in ops.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [
        "ops-alice"
    ]
    roles = [a.value for a in ops.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert roles == ["operator", "reader"]

    node = await start_node(
        tls_cert_file=str(out / "server.pem"),
        tls_key_file=str(out / "server-key.pem"),
        tls_client_ca_file=str(out / "ca.pem"),
    )
    assert await health_over(node.port, credentials(out, "agent-1")) == "SERVING"
    assert await health_over(node.port, credentials(out, None)) == "UNAVAILABLE"

    # A second run reuses the CA: certificates issued now work with the running node.
    code, _, err = await dev_ca("--out", str(out), "--client", "late:client")
    assert code == 0, err
    assert await health_over(node.port, credentials(out, "late")) == "SERVING"


async def test_dev_ca_help_says_development_only():
    code, printed, _ = await dev_ca("--help")
    assert code == 0
    assert "development" in printed and "only" in printed


async def test_bad_client_spec_exits_2(tmp_path: Path):
    code, _, err = await dev_ca("--out", str(tmp_path / "x"), "--client", "no-roles")
    assert code == 2
    assert "NAME:ROLE" in err
    code, _, err = await dev_ca("--out", str(tmp_path / "x"), "--client", "a:wizard")
    assert code == 2
    assert "unknown role" in err


GRPCURL = shutil.which("grpcurl", path=os.path.dirname(sys.executable))


async def grpcurl(*args: str) -> tuple[int, str]:
    assert GRPCURL, f"grpcurl is not installed next to {sys.executable}"
    process = await asyncio.create_subprocess_exec(
        GRPCURL,
        "-max-time",
        "10",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_grpcurl_speaks_mtls_with_dev_ca_files(start_node, tmp_path: Path):
    # Go's TLS stack is stricter than gRPC core's (it ignores a CN without SANs, for one):
    # the dev CA's files must work with it too, as docs/operations.md uses them.
    out = tmp_path / "dev"
    code, _, err = await dev_ca("--out", str(out), "--client", "ops:operator")
    assert code == 0, err
    node = await start_node(
        tls_cert_file=str(out / "server.pem"),
        tls_key_file=str(out / "server-key.pem"),
        tls_client_ca_file=str(out / "ca.pem"),
    )
    health = "grpc.health.v1.Health/Check"
    code, printed = await grpcurl(
        "-cacert",
        str(out / "ca.pem"),
        "-cert",
        str(out / "client-ops.pem"),
        "-key",
        str(out / "client-ops-key.pem"),
        f"localhost:{node.port}",
        health,
    )
    assert code == 0, printed
    assert '"status": "SERVING"' in printed
    code, printed = await grpcurl("-cacert", str(out / "ca.pem"), f"127.0.0.1:{node.port}", health)
    assert code != 0  # no client certificate
    code, printed = await grpcurl("-plaintext", f"localhost:{node.port}", health)
    assert code != 0
