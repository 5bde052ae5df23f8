"""An agent process for tests/test_fault_injection.py: ``python tests/fault_agent.py AGENT_ID
ADDRESSES MAX_CONCURRENCY``. It runs the Python SDK's ``Agent``; its handler works 50 to 150
ms (or the task's ``work_s`` seconds) and returns a result naming the task and attempt, so that a result given to the wrong
task, or accepted twice, is visible.

Each line it prints is one event with its task and attempt: the handler's ``handler done``
(the agent is about to report), and the SDK's own ``task completed`` (the coordinator took
the completion), ``... refused: CODE`` (it refused a report) and ``task dropped`` (the agent
gave the attempt up without reporting). The test reads these lines.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys

from coordinator.sdk import Agent, TaskContext

log = logging.getLogger("fault_agent")


class _Fields(logging.Filter):
    """Every line shows task_id and attempt ("-" on lines about no task)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name in ("task_id", "attempt"):
            if not hasattr(record, name):
                setattr(record, name, "-")
        return True


async def work(task: TaskContext) -> dict[str, object]:
    await asyncio.sleep(float(task.data.get("work_s") or random.uniform(0.05, 0.15)))
    log.info("handler done", extra={"task_id": task.task_id, "attempt": task.attempt})
    return {"task_id": task.task_id, "attempt": task.attempt, "agent_id": task.agent_id}


def main() -> None:
    agent_id, addresses, slots = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(_Fields())
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(name)s task_id=%(task_id)s attempt=%(attempt)s %(message)s"
        )
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("coordinator.sdk.lease").setLevel(logging.WARNING)
    Agent(
        agent_id,
        work,
        addresses=addresses,
        max_concurrency=slots,
        deregister_on_stop=False,
        shutdown_grace_s=1.0,
    ).run_forever()


if __name__ == "__main__":
    main()
