"""Command line: ``python -m coordinator serve`` runs a node; ``health`` probes one."""

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
    return parser


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(os.environ, args.env_file)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.node_id)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m coordinator`` and the ``aitbc-coordinator`` script."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return _health(args)


if __name__ == "__main__":
    sys.exit(main())
