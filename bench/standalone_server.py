"""What the bench's stand-alone gRPC servers (the echo, the relay of the gRPC floor) share: how
they tell the harness they are ready, and serving until it signals them to stop."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc


def mark(path: str) -> None:
    """Tell the harness something happened: it waits for the file."""
    Path(path).write_text("yes\n")


async def serve_until_signalled(server: grpc.aio.Server, port: int, ready_file: str) -> None:
    """Serve on 127.0.0.1:``port``, mark ``ready_file``, and stop on SIGTERM or SIGINT."""
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    mark(ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await server.stop(0)
