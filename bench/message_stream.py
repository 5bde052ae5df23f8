"""One bidirectional stream of the benchmark's clients with one message in flight.

The submitter (StreamSubmitTasks) and the agents (StreamReportTasks) use it alike:
``exchange`` writes one request message and returns its response; after an error the
stream is opened again for the next message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc


class MessageStream:
    """Opened by ``open_call`` (a stub's stream method, called with no arguments)."""

    def __init__(self, open_call: Callable[[], Any]) -> None:
        self._open_call = open_call
        self._call: Any = None

    async def open(self) -> None:
        self._call = self._open_call()
        await self._call.wait_for_connection()

    async def exchange(self, request: Any) -> Any:
        """Send one message; its response (AioRpcError if the stream failed or ended)."""
        if self._call is None:
            await self.open()
        call = self._call
        try:
            await call.write(request)
            reply = await call.read()
        except asyncio.InvalidStateError:  # written after the node ended the stream with OK
            reply = grpc.aio.EOF
        except BaseException:
            call.cancel()
            self._call = None
            raise
        if reply is grpc.aio.EOF:  # the node ended the stream early: count it as its status
            self._call = None
            code = await call.code()
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNKNOWN if code == grpc.StatusCode.OK else code,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                "the stream ended",
            )
        return reply

    async def close(self) -> None:
        """Half-close the stream (the node ends it with OK)."""
        call, self._call = self._call, None
        if call is None or call.done():
            return
        try:
            await call.done_writing()
            await asyncio.wait_for(call.code(), 5)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError):
            call.cancel()
