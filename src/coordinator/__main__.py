"""Command line: ``python -m coordinator serve`` runs a node; ``health`` probes one; ``agent``
runs a demo agent and ``submit`` submits a task (the newcomer's round trip)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from coordinator import healthcheck, logs
from coordinator.config import ConfigError, load_settings
from coordinator.private_redis import PrivateRedis, redis_answers
from coordinator.sdk import demo
from coordinator.server import serve

log = logging.getLogger("coordinator")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m coordinator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("serve", help="run a coordinator node")
    run.add_argument("--env-file", help="read configuration from this file (environment wins)")
    run.add_argument(
        "--private-redis",
        action="store_true",
        help="if REDIS_URL is not set and nothing answers on the default address, start and "
        "manage a private redis-server (used by make run)",
    )
    run.add_argument(
        "--state-dir",
        default=".state",
        help="folder for the private Redis's data (default: .state)",
    )

    probe = commands.add_parser("health", help="exit 0 if a node reports SERVING")
    probe.add_argument("--address", default="localhost:9001", help="host:port of the node")
    probe.add_argument("--service", default="", help="service name; empty for the whole server")
    probe.add_argument("--timeout", type=float, default=3.0, help="seconds to wait")

    agent = commands.add_parser(
        "agent", help="run a demo agent: echo, sleep, fail and any other task type"
    )
    agent.add_argument(
        "--address",
        action="append",
        help="host:port of a coordinator node; repeat (or separate with commas) to fail over "
        "(default: localhost:9001)",
    )
    agent.add_argument("--id", default="demo-agent", help="agent id (default: demo-agent)")
    agent.add_argument("--type", default="worker", help="agent type (default: worker)")
    agent.add_argument(
        "--capability", action="append", default=[], help="a capability; repeat for more"
    )
    agent.add_argument(
        "--max-concurrency", type=int, default=4, help="tasks run at once (default: 4)"
    )
    agent.add_argument(
        "--keep-registered",
        action="store_true",
        help="do not deregister when stopped (SIGTERM, Ctrl-C)",
    )

    submit = commands.add_parser("submit", help="submit a task, optionally wait for its result")
    submit.add_argument(
        "--address", action="append", help="host:port of a node (default: localhost:9001)"
    )
    submit.add_argument("--type", required=True, help="task type, e.g. echo")
    submit.add_argument(
        "--data", default="{}", help="task data as a JSON object, e.g. '{\"x\": 1}'"
    )
    submit.add_argument(
        "--priority", default="normal", help="low, normal, high, critical or urgent"
    )
    submit.add_argument(
        "--lease",
        type=float,
        help="start-to-close timeout in seconds, the lease the agent extends (default: 300)",
    )
    submit.add_argument("--wait", action="store_true", help="wait for the result and print it")
    submit.add_argument(
        "--timeout", type=float, default=60.0, help="seconds --wait waits (default: 60)"
    )
    return parser


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(os.environ, args.env_file)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.node_id, settings.log_format)
    private: PrivateRedis | None = None
    if args.private_redis and not settings.redis_url_explicit:
        if not redis_answers(settings.redis_url):
            private = PrivateRedis(Path(args.state_dir) / "redis")
            try:
                url = private.start()
            except RuntimeError as exc:
                log.error("%s", exc)
                return 1
            settings = dataclasses.replace(settings, redis_url=url)
    try:
        return asyncio.run(serve(settings))
    except ConfigError as exc:  # a credential file named by the settings is missing or bad
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        log.error("cannot serve on %s: %s", settings.address, exc)
        return 1
    finally:
        if private is not None:
            private.stop()


def _health(args: argparse.Namespace) -> int:
    result = healthcheck.probe(args.address, args.service, args.timeout)
    print(result.status)
    return 0 if result.serving else 1


def _agent(args: argparse.Namespace) -> int:
    return demo.run_demo_agent(
        args.address or ["localhost:9001"],
        args.id,
        agent_type=args.type,
        capabilities=args.capability,
        max_concurrency=args.max_concurrency,
        deregister_on_stop=not args.keep_registered,
    )


def _submit(args: argparse.Namespace) -> int:
    return demo.submit_command(
        args.address or ["localhost:9001"],
        args.type,
        args.data,
        priority=args.priority,
        wait=args.wait,
        timeout_s=args.timeout,
        lease_s=args.lease,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m coordinator`` and the ``aitbc-coordinator`` script."""
    args = _parser().parse_args(argv)
    commands = {"serve": _serve, "health": _health, "agent": _agent, "submit": _submit}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
