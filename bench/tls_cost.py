"""What transport security costs (issue 15): the drain and the steady 200/s run, each once
in plaintext and once with TLS on the node and a bearer token (an HS256 JWT) on every call
and stream of the agents and the submitter, in the same run, one after the other.

The node is given the token's secret (COORDINATOR_AUTH_JWT_HS256_SECRET_FILE), so where
token verification is built in, the TLS figures include it (a node that does not read that
variable ignores the token and measures TLS alone). Certificates come from
``coordinator dev-ca``, the token from ``coordinator.tools.tokens``.

Targets: the drain's completion rate at most 15 % lower, the 200/s submit→assigned p99 at
most 0.3 ms higher. The harness (bench/run_benchmarks.py, scenario ``tls``) imports
``scenario_tls``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordinator.auth.principal import Role
from coordinator.tools import dev_ca, tokens

RATE = 200
MAX_THROUGHPUT_DROP_PCT = 15.0
MAX_P99_INCREASE_MS = 0.3
KEPT = ("completed_per_s", "submit_per_s", "coordinator_cpu_us_per_task", "errors")


def title(plan: Any) -> str:
    return f"10. TLS + bearer token vs plaintext: drain, steady {RATE}/s"


def _credentials(workdir: Path) -> tuple[dict[str, str], list[str]]:
    """Node environment and load tool arguments for TLS with a token."""
    folder = workdir / "tls"
    written = dev_ca.make_dev_ca(folder, ["localhost", "127.0.0.1"], [])
    secret = folder / "hs256.secret"
    secret.write_text(secrets.token_hex(32) + "\n")
    grant = tokens.Grant("bench", (Role.AGENT, Role.CLIENT), ("*",))
    token = tokens.mint_jwt(
        grant, key=secret.read_text().strip().encode(), algorithm="HS256", ttl_s=4 * 3600
    )
    token_file = folder / "bench.token"
    token_file.write_text(token + "\n")
    node_env = {
        "COORDINATOR_TLS_CERT_FILE": str(written.server),
        "COORDINATOR_TLS_KEY_FILE": str(written.server_key),
        "COORDINATOR_AUTH_JWT_HS256_SECRET_FILE": str(secret),
        # For the harness's health probe (python -m coordinator health).
        "AITBC_TLS_CA_FILE": str(written.ca),
    }
    return node_env, ["--ca-file", str(written.ca), "--token-file", str(token_file)]


def _kept(result: dict[str, Any]) -> dict[str, Any]:
    kept = {k: result[k] for k in KEPT if k in result}
    kept["submit_to_assigned"] = result.get("submit_to_assigned", {})
    return kept


def scenario_tls(
    bench: Any,
    drain: Callable[[Any, int], dict[str, Any]],
    latency: Callable[[Any, int], dict[str, Any]],
) -> dict[str, Any]:
    """One run: plaintext, then TLS + token, for the drain and for the steady rate."""
    node_env, client_argv = _credentials(bench.workdir)
    modes: dict[str, dict[str, Any]] = {"plaintext": {}, "tls_token": {}}
    for what, run in (
        ("drain", lambda: drain(bench, 1)),
        ("latency", lambda: latency(bench, RATE)),
    ):
        for mode in modes:
            secure = mode == "tls_token"
            bench.node_env = node_env if secure else {}
            bench.client_argv = client_argv if secure else []
            try:
                modes[mode][what] = _kept(run())
            finally:
                bench.node_env, bench.client_argv = {}, []
    plain, secure = modes["plaintext"], modes["tls_token"]
    plain_rate = plain["drain"]["completed_per_s"]
    secure_rate = secure["drain"]["completed_per_s"]
    plain_p99 = plain["latency"]["submit_to_assigned"].get("p99_ms", 0.0)
    secure_p99 = secure["latency"]["submit_to_assigned"].get("p99_ms", 0.0)
    return {
        **modes,
        "drain_throughput_drop_pct": round((1 - secure_rate / plain_rate) * 100, 1),
        "p99_increase_ms": round(secure_p99 - plain_p99, 3),
    }


def table_rows(
    title: str, agg: dict[str, Any], fmt: Callable[..., str]
) -> list[tuple[str, str, str]]:
    rows = []
    for mode, label in (("plaintext", "plaintext"), ("tls_token", "TLS + token")):
        rows.append(
            (
                title,
                f"{label}: drain completion rate, tasks/s",
                fmt(agg, f"{mode}.drain.completed_per_s", 0),
            )
        )
        p99 = f"{mode}.latency.submit_to_assigned.p99_ms"
        rows.append((title, f"{label}: {RATE}/s submit→assigned p99 ms", fmt(agg, p99, 2)))
        cpu = f"{mode}.drain.coordinator_cpu_us_per_task"
        rows.append((title, f"{label}: drain CPU µs per task (nodes)", fmt(agg, cpu, 0)))
    rows.append(
        (title, "drain throughput lost to TLS + token, %", fmt(agg, "drain_throughput_drop_pct"))
    )
    rows.append((title, f"{RATE}/s p99 added by TLS + token, ms", fmt(agg, "p99_increase_ms", 3)))
    return rows


def checks(
    median_of: Callable[[str, str], float | None],
) -> list[tuple[str, str, float | None, float, Callable[[float, float], bool]]]:
    """The issue's two targets, as (name, unit, measured, limit, test) for the summary."""
    return [
        (
            f"TLS + token: drain ≤ {MAX_THROUGHPUT_DROP_PCT:g} % slower",
            "%",
            median_of("tls", "drain_throughput_drop_pct"),
            MAX_THROUGHPUT_DROP_PCT,
            float.__le__,
        ),
        (
            f"TLS + token: {RATE}/s p99 ≤ +{MAX_P99_INCREASE_MS:g} ms",
            "ms",
            median_of("tls", "p99_increase_ms"),
            MAX_P99_INCREASE_MS,
            float.__le__,
        ),
    ]
