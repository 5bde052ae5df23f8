#!/usr/bin/env python3
"""The gRPC floor of the steady-rate benchmark: the coordinator's task RPCs, in memory.

A grpc.aio server with the same servicers' shape and nothing behind them: no Redis, no
validation, no strategy. RegisterAgent answers at once; StreamAssignments sends
``ready``, then each task handed to the stream (several in one ``assignments`` message
when the agent asked for them and they are waiting); SubmitTask, SubmitTasks and each
message of StreamSubmitTasks give each task a new id and hand it to the next stream in
turn; CompleteTask, ReportTasks and each message of StreamReportTasks answer at once
(one response message per request message, in order). The same agent and submitter
processes as against a node measure it, so the difference between the two is what the
coordinator itself costs on this machine.

Writes ``--ready-file`` once serving, and ``READY_FILE.done`` once ``--expect`` tasks have
been reported complete; runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from standalone_server import mark, serve_until_signalled

from aitbc.coordinator.v1 import agent_pb2, agent_pb2_grpc, task_pb2, task_pb2_grpc


class Relay(agent_pb2_grpc.AgentServiceServicer, task_pb2_grpc.TaskServiceServicer):
    """Hands every submitted task to the open streams in turn, and counts completions."""

    def __init__(self, expect: int, on_done: Any) -> None:
        self._streams: list[asyncio.Queue[agent_pb2.Assignment]] = []
        self._turn = itertools.count()
        self._expect = expect
        self._completed = 0
        self._on_done = on_done

    def _hand_over(self) -> str:
        task_id = uuid.uuid4().hex
        stream = self._streams[next(self._turn) % len(self._streams)]
        stream.put_nowait(agent_pb2.Assignment(task_id=task_id, attempt=1, fencing_token="1:x"))
        return task_id

    def _completed_one(self) -> None:
        self._completed += 1
        if self._completed == self._expect:
            self._on_done()

    async def RegisterAgent(self, request: Any, context: Any) -> Any:
        return agent_pb2.RegisterAgentResponse()

    async def StreamAssignments(
        self, request: Any, context: Any
    ) -> AsyncIterator[agent_pb2.StreamAssignmentsResponse]:
        queue: asyncio.Queue[agent_pb2.Assignment] = asyncio.Queue()
        self._streams.append(queue)
        most = max(1, request.max_assignments_per_message)
        yield agent_pb2.StreamAssignmentsResponse(ready=agent_pb2.StreamReady(node_id="relay"))
        while True:
            batch = [await queue.get()]
            while len(batch) < most and not queue.empty():
                batch.append(queue.get_nowait())
            if request.max_assignments_per_message:
                yield agent_pb2.StreamAssignmentsResponse(
                    assignments=agent_pb2.AssignmentBatch(assignments=batch)
                )
            else:
                yield agent_pb2.StreamAssignmentsResponse(assignment=batch[0])

    async def SubmitTask(self, request: Any, context: Any) -> Any:
        return task_pb2.SubmitTaskResponse(task=task_pb2.Task(task_id=self._hand_over()))

    async def SubmitTasks(self, request: Any, context: Any) -> Any:
        return task_pb2.SubmitTasksResponse(
            results=[task_pb2.SubmitTasksResult(task_id=self._hand_over()) for _ in request.tasks]
        )

    async def StreamSubmitTasks(
        self, requests: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[task_pb2.StreamSubmitTasksResponse]:
        async for request in requests:
            yield task_pb2.StreamSubmitTasksResponse(
                results=[
                    task_pb2.SubmitTasksResult(task_id=self._hand_over()) for _ in request.tasks
                ]
            )

    async def CompleteTask(self, request: Any, context: Any) -> Any:
        self._completed_one()
        return task_pb2.CompleteTaskResponse(task=task_pb2.Task(task_id=request.task_id))

    async def ReportTasks(self, request: Any, context: Any) -> Any:
        for _ in request.reports:
            self._completed_one()
        return task_pb2.ReportTasksResponse(
            results=[task_pb2.TaskReportResult() for _ in request.reports]
        )

    async def StreamReportTasks(
        self, requests: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[task_pb2.StreamReportTasksResponse]:
        async for request in requests:
            for _ in request.reports:
                self._completed_one()
            yield task_pb2.StreamReportTasksResponse(
                results=[task_pb2.TaskReportResult() for _ in request.reports]
            )


async def main_async(args: argparse.Namespace) -> None:
    relay = Relay(args.expect, lambda: mark(f"{args.ready_file}.done"))
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(relay, server)
    task_pb2_grpc.add_TaskServiceServicer_to_server(relay, server)
    await serve_until_signalled(server, args.port, args.ready_file)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--expect", type=int, required=True, help="completions to wait for")
    asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
