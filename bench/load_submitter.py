#!/usr/bin/env python3
"""The submitter process of the task benchmarks: no-op tasks through SubmitTask(s).

Either as fast as possible (``--count N``, ``--in-flight C`` calls at once over
``--channels`` connections) or paced (``--rate R --duration S``: task i is sent at
start + i/R, without waiting for earlier replies). Starts at ``--start-at-ns`` (epoch ns) so
that several submitters begin together. Each task's submit time is taken just before its
call (``time.time_ns``, comparable across processes on one machine).

``--batch N`` (N > 1) sends SubmitTasks calls of N tasks instead of one SubmitTask per task:
``--in-flight`` is then the number of such calls at once, and a paced run sends a call every
N/R seconds. Every task of a call has the call's submit and reply times.

``--coalesce`` (with ``--rate``) batches the way a busy client would: task i falls due at
start + i/R, and at most ``--in-flight`` SubmitTasks calls are out at once, each taking every
task that fell due and was not sent yet. A task's submit time is when it fell due, so the
wait for a call counts in its latency.

``--stream`` (with ``--coalesce``, or with ``--batch N`` and no ``--rate``) sends each of
those batches as one message of a StreamSubmitTasks stream instead of a SubmitTasks call:
``--in-flight`` streams (spread over the channels, opened before the start), each with one
message in flight; the next message on a stream is written once the previous one's
response has arrived, and takes every task that fell due meanwhile (``--coalesce``) or the
next N tasks. A task's reply time is when its message's response arrived.

Writes ``--out`` (JSON: records ``[task_id, submitted_ns, replied_ns]``, errors counted per
task, the number of calls made, messages counted as calls) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

import grpc
import transport
from message_stream import MessageStream

from aitbc.coordinator.v1 import task_pb2, task_pb2_grpc

CAPABILITY = "bench"
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
"""Status code names by google.rpc.Code number (a refused entry of SubmitTasks)."""


async def main_async(args: argparse.Namespace) -> None:
    channels = [transport.channel(args, args.address) for _ in range(args.channels)]
    stubs = [transport.stub(task_pb2_grpc.TaskServiceStub, c, args) for c in channels]
    requirements = task_pb2.TaskRequirements(capabilities=[CAPABILITY])
    records: list[tuple[str, int, int]] = []
    errors: dict[str, int] = {}
    calls = 0
    """Calls made, or messages sent on the streams (--stream)."""
    # --stream: --in-flight streams, over the channels in turn, opened before the start.
    streams = (
        [MessageStream(stubs[k % len(stubs)].StreamSubmitTasks) for k in range(args.in_flight)]
        if args.stream
        else []
    )

    async def submit(i: int) -> None:
        nonlocal calls
        calls += 1
        # Like the SDK's Client: a fresh request_id, so that a retry could not duplicate.
        request = new_request()
        submitted = time.time_ns()
        try:
            reply = await stubs[i % len(stubs)].SubmitTask(request, timeout=60)
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
            return
        records.append((reply.task.task_id, submitted, time.time_ns()))

    def new_request() -> task_pb2.SubmitTaskRequest:
        request_id = uuid.uuid4().hex
        return task_pb2.SubmitTaskRequest(
            task_type="noop",
            requirements=requirements,
            request_id=request_id,
            routing_key=request_id if args.routing_keys else "",
        )

    def new_requests(size: int) -> list[task_pb2.SubmitTaskRequest]:
        return [new_request() for _ in range(size)]

    async def submit_many(sender: int, due: list[int] | None, size: int) -> None:
        """One SubmitTasks call, or one message on stream ``sender`` (--stream), of
        ``size`` tasks. Their submit time is ``due`` (when each fell due: the wait for the
        call counts) or else the time just before the call; their reply time the reply's."""
        nonlocal calls
        calls += 1
        requests = new_requests(size)
        submitted = time.time_ns()
        try:
            if args.stream:
                request = task_pb2.StreamSubmitTasksRequest(tasks=requests)
                results = (await streams[sender].exchange(request)).results
            else:
                stub = stubs[sender % len(stubs)]
                reply = await stub.SubmitTasks(
                    task_pb2.SubmitTasksRequest(tasks=requests), timeout=60
                )
                results = reply.results
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] = errors.get(exc.code().name, 0) + size
            return
        replied = time.time_ns()
        for result, due_ns in zip(results, due or [submitted] * size, strict=True):
            if result.HasField("error"):
                name = CODE_NAMES.get(result.error.code, str(result.error.code))
                errors[name] = errors.get(name, 0) + 1
            else:
                records.append((result.task_id, due_ns, replied))

    async def paced_coalesced(count: int, period_ns: int) -> None:
        """Task i falls due at start + i/rate; at most --in-flight SubmitTasks calls (or
        messages, one on each of --in-flight streams) at once, each taking every task due
        and not yet sent (at most 1000)."""
        due: list[int] = []
        produced = asyncio.Event()
        more = asyncio.Condition()

        async def produce() -> None:
            for i in range(count):
                wait_ns = started + i * period_ns - time.time_ns()
                if wait_ns > 0:
                    await asyncio.sleep(wait_ns / 1e9)
                async with more:
                    due.append(time.time_ns())
                    more.notify()
            async with more:
                produced.set()
                more.notify_all()

        async def sender(number: int) -> None:
            while True:
                async with more:
                    await more.wait_for(lambda: bool(due) or produced.is_set())
                    if not due:
                        return
                    batch = due[:1000]
                    del due[:1000]
                # Calls all go through the first channel; streams are spread over them.
                await submit_many(number if args.stream else 0, batch, len(batch))

        await asyncio.gather(produce(), *(sender(n) for n in range(args.in_flight)))

    async def send(first: int, count: int, sender: int = 0) -> None:
        """The tasks numbered from ``first``: one task, or one batch of up to --batch
        (on stream ``sender`` with --stream)."""
        if args.batch > 1:
            size = min(args.batch, count - first)
            await submit_many(sender if args.stream else first // args.batch, None, size)
        else:
            await submit(first)

    for channel in channels:
        await channel.channel_ready()
    if args.stream:
        await asyncio.gather(*(stream.open() for stream in streams))
    delay_s = (args.start_at_ns - time.time_ns()) / 1e9
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    started = time.time_ns()
    step = max(1, args.batch)
    if args.rate > 0 and args.coalesce:
        count = int(args.rate * args.duration)
        await paced_coalesced(count, int(1e9 / args.rate))
    elif args.rate > 0:
        count = int(args.rate * args.duration)
        period_ns = int(1e9 / args.rate)
        pending: set[asyncio.Task[None]] = set()
        for i in range(0, count, step):
            wait_ns = started + i * period_ns - time.time_ns()
            if wait_ns > 0:
                await asyncio.sleep(wait_ns / 1e9)
            task = asyncio.create_task(send(i, count))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
    else:
        count = args.count
        numbers = iter(range(0, count, step))

        async def worker(number: int) -> None:
            for i in numbers:
                await send(i, count, number)

        await asyncio.gather(*(worker(n) for n in range(args.in_flight)))
    finished = time.time_ns()
    await asyncio.gather(*(stream.close() for stream in streams))
    for channel in channels:
        await channel.close()
    out = Path(args.out)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "requested": count,
                "started_ns": started,
                "finished_ns": finished,
                "records": records,
                "errors": errors,
                "calls": calls,
            }
        )
    )
    tmp.rename(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=128, help="calls at once")
    parser.add_argument(
        "--coalesce",
        action="store_true",
        help="with --rate: SubmitTasks with every task due meanwhile, --in-flight calls at once",
    )
    parser.add_argument(
        "--batch", type=int, default=1, help="tasks per call; >1 uses SubmitTasks (at most 1000)"
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="with --coalesce or --batch N (no --rate): StreamSubmitTasks messages instead of "
        "SubmitTasks calls, --in-flight streams each with one message in flight",
    )
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--rate", type=float, default=0.0, help="tasks/s; 0 = as fast as possible")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--start-at-ns", type=int, default=0)
    parser.add_argument(
        "--routing-keys",
        action="store_true",
        help="each task its own routing key (consistent_hash)",
    )
    parser.add_argument("--out", required=True)
    transport.add_arguments(parser)
    args = parser.parse_args()
    if args.stream and not (
        (args.rate > 0 and args.coalesce) or (args.rate <= 0 and args.batch > 1)
    ):
        parser.error("--stream needs --rate R --coalesce, or --batch N (N > 1) without --rate")
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
