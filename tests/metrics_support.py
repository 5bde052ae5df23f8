"""Scraping a node's Prometheus metrics over real HTTP, and reading samples from them."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

TASKS = "aitbc.coordinator.v1.TaskService"
AGENTS = "aitbc.coordinator.v1.AgentService"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_sync(port: int) -> Samples:
    """Every sample of ``GET /metrics``, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(port: int) -> Samples:
    # In a thread: the node serving the scrape runs on this test's event loop.
    return await asyncio.to_thread(scrape_sync, port)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value, or None if the scrape does not hold it."""
    return samples.get((name, tuple(sorted(labels.items()))))


def handled(samples: Samples, service: str, method: str, code: str, rpc_type: str = "unary"):
    return value(
        samples,
        "aitbc_coordinator_rpc_handled_total",
        service=service,
        method=method,
        type=rpc_type,
        code=code,
    )


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except ConnectionRefusedError:
        return False
