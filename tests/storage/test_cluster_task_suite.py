"""The task, dispatch and delivery tests again, in Redis Cluster mode: a pytest of their
modules with ``COORDINATOR_TEST_REDIS_CLUSTER_TAG`` set (tests/conftest.py), so that their
nodes run on a real Redis Cluster of three primaries, every key tagged, and their own reads
of Redis go to the owner of the tag's slot.

Left out: modules that spell key names as literals (the archive's, the record codec's), run
their own single redis-server to stop it (outages, replicas), or build Settings by hand
without the tag (liveness)."""

from __future__ import annotations

import os
import subprocess
import sys

from support import REPO

MODULES = (
    "tests/tasks/test_task_flow.py",
    "tests/tasks/test_task_lifecycle.py",
    "tests/tasks/test_task_operations.py",
    "tests/tasks/test_task_failures.py",
    "tests/tasks/test_task_multinode.py",
    "tests/tasks/test_reaper.py",
    "tests/tasks/test_task_scripts.py",
    "tests/dispatch",
    "tests/delivery/test_streams.py",
    "tests/sdk/test_sdk_agent.py",
    "tests/test_multinode.py",
)


def test_the_task_tests_pass_on_a_redis_cluster():
    env = {**os.environ, "COORDINATOR_TEST_REDIS_CLUSTER_TAG": "suite"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *MODULES],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary
    print(f"\nin Redis Cluster mode: {summary}")
