#!/usr/bin/env python3
"""A bare grpc.aio unary echo: the yardstick of what one unary call costs a Python gRPC
server on this machine (issue 17: node CPU per unary task against the server CPU of one
echo call, measured in the same run).

    grpc_echo.py server --port P --ready-file F
        one grpc.aio server, one unary method that answers its request (a BytesValue of
        ``--payload-bytes``) as it came; no interceptors, no logging; runs until SIGTERM.
    grpc_echo.py client --address A --calls N --in-flight C --out FILE
        N calls on one channel, C at once, after ``--warmup`` calls; writes FILE with the
        measured calls' count, wall time and round-trip percentiles.

The harness reads the server's CPU time (/proc, user + system) just before and after the
client's measured calls (the client writes ``FILE.warm`` and waits for ``FILE.go``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.wrappers_pb2 import BytesValue
from standalone_server import mark, serve_until_signalled

METHOD = "/bench.Echo/Echo"


async def echo(request: BytesValue, context: Any) -> BytesValue:
    """The echo: the request is the reply."""
    return request


async def serve(args: argparse.Namespace) -> None:
    """Serve the echo until SIGTERM; the ready file once serving."""
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo,
                request_deserializer=BytesValue.FromString,
                response_serializer=BytesValue.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    await serve_until_signalled(server, args.port, args.ready_file)


async def calls(stub: Any, count: int, in_flight: int, payload: bytes) -> list[int]:
    """``count`` calls, ``in_flight`` at once: each round trip in ns."""
    numbers = iter(range(count))
    round_trips: list[int] = []

    async def caller() -> None:
        for _ in numbers:
            started = time.perf_counter_ns()
            await stub(BytesValue(value=payload))
            round_trips.append(time.perf_counter_ns() - started)

    await asyncio.gather(*(caller() for _ in range(in_flight)))
    return round_trips


def write_json(path: str, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` at once (the harness waits for the file to exist)."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.rename(path)


def wait_for(path: str) -> None:
    """Block until the harness creates ``path`` (nothing else runs meanwhile: the calls
    have not started)."""
    while not Path(path).exists():
        time.sleep(0.01)


async def run_client(args: argparse.Namespace) -> None:
    """Warm up, tell the harness, wait for its go, make the measured calls, write FILE."""
    out = args.out
    payload = b"x" * args.payload_bytes
    async with grpc.aio.insecure_channel(args.address) as channel:
        stub = channel.unary_unary(
            METHOD,
            request_serializer=BytesValue.SerializeToString,
            response_deserializer=BytesValue.FromString,
        )
        await calls(stub, args.warmup, args.in_flight, payload)
        mark(f"{out}.warm")
        wait_for(f"{out}.go")
        started = time.perf_counter_ns()
        round_trips = sorted(await calls(stub, args.calls, args.in_flight, payload))
        elapsed_ns = time.perf_counter_ns() - started
        mark(f"{out}.calls_done")

    def ms(q: float) -> float:
        return round(round_trips[max(0, int(q * len(round_trips)) - 1)] / 1e6, 3)

    result = {
        "calls": len(round_trips),
        "in_flight": args.in_flight,
        "calls_per_s": round(len(round_trips) / (elapsed_ns / 1e9), 1),
        "round_trip": {"p50_ms": ms(0.5), "p99_ms": ms(0.99)},
    }
    write_json(out, result)


def main() -> int:
    """Run the server or the client."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=("server", "client"))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file")
    parser.add_argument("--address")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=1)
    parser.add_argument("--payload-bytes", type=int, default=64)
    parser.add_argument("--out")
    args = parser.parse_args()
    asyncio.run(serve(args) if args.role == "server" else run_client(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
