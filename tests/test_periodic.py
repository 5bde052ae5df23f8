"""Background loops tick on their interval and always stop, even when a tick swallows the
cancellation (as redis-py can mid-command)."""

from __future__ import annotations

import asyncio

from coordinator.periodic import Periodic


async def test_ticks_repeatedly_and_survives_a_failing_tick(caplog):
    ticks = 0

    async def tick():
        nonlocal ticks
        ticks += 1
        if ticks == 2:
            raise RuntimeError("one bad round")

    loop = Periodic("test-loop", 0.01, tick)
    loop.start()
    await asyncio.sleep(0.2)
    await loop.stop()
    assert ticks >= 4
    assert any("test-loop failed" in r.message for r in caplog.records)
    after_stop = ticks
    await asyncio.sleep(0.05)
    assert ticks == after_stop
    await loop.stop()  # idempotent


async def test_stop_ends_a_loop_whose_tick_swallows_the_cancellation():
    in_tick = asyncio.Event()

    async def swallowing_tick():
        in_tick.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ConnectionError("connection reset") from None  # what a client library did

    loop = Periodic("swallowing", 0.01, swallowing_tick)
    loop.start()
    await asyncio.wait_for(in_tick.wait(), 5)
    await asyncio.wait_for(loop.stop(), 5)  # hung for ever before the stop flag existed
