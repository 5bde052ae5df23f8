"""Command line: ``python -m coordinator serve`` runs a node; ``health`` probes one; ``agent``
runs a demo agent and ``submit`` submits a task (the newcomer's round trip); ``token`` mints
a bearer token and ``dev-ca`` makes development certificates."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from coordinator import logs
from coordinator.config import ConfigError, Settings, load_settings
from coordinator.node import workers
from coordinator.sdk import demo
from coordinator.sdk.credentials import TlsOptions
from coordinator.server import serve
from coordinator.storage.private_redis import PrivateRedis, redis_answers
from coordinator.tools import dev_ca, healthcheck, tokens

log = logging.getLogger("coordinator")


# Connection flags of the client commands, and the environment variables they default to.
_CONNECTION_FLAGS = (
    ("--ca-file", "AITBC_TLS_CA_FILE", "PEM CA bundle the node's certificate must chain to"),
    ("--cert-file", "AITBC_TLS_CERT_FILE", "PEM client certificate, for mutual TLS"),
    ("--key-file", "AITBC_TLS_KEY_FILE", "PEM key of the client certificate"),
    ("--token-file", "AITBC_TOKEN_FILE", "file holding the bearer token sent with every call"),
)


def _add_connection_flags(parser: argparse.ArgumentParser) -> None:
    for flag, env, meaning in _CONNECTION_FLAGS:
        parser.add_argument(flag, help=f"{meaning} (default: ${env})")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="use TLS even without the flags above (trusting the system's CA roots)",
    )
    parser.add_argument(
        "--server-name", help="name the node's certificate must carry, if not the address's host"
    )


def _connection(args: argparse.Namespace) -> tuple[TlsOptions | None, str | None]:
    """TLS options (TLS is on when any TLS file or --tls is given) and the token file."""
    values = {}
    for flag, env, _ in _CONNECTION_FLAGS:
        attribute = flag[2:].replace("-", "_")
        values[attribute] = getattr(args, attribute) or os.environ.get(env) or None
    tls = None
    if args.tls or values["ca_file"] or values["cert_file"] or values["key_file"]:
        tls = TlsOptions(
            ca_file=values["ca_file"],
            cert_file=values["cert_file"],
            key_file=values["key_file"],
            server_name=args.server_name,
        )
    return tls, values["token_file"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m coordinator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_add_serve, _add_health, _add_agent, _add_submit, _add_token, _add_dev_ca):
        add(commands)
    return parser


def _add_serve(commands: Any) -> None:
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
    # Internal: how the parent of a multi-process node (node/workers.py) starts a worker.
    run.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    run.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    run.add_argument("--supervisor-pid", type=int, help=argparse.SUPPRESS)


def _add_health(commands: Any) -> None:
    probe = commands.add_parser("health", help="exit 0 if a node reports SERVING")
    probe.add_argument("--address", default="localhost:9001", help="host:port of the node")
    probe.add_argument("--service", default="", help="service name; empty for the whole server")
    probe.add_argument("--timeout", type=float, default=3.0, help="seconds to wait")
    _add_connection_flags(probe)


def _add_agent(commands: Any) -> None:
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
    _add_connection_flags(agent)


def _add_submit(commands: Any) -> None:
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
    _add_connection_flags(submit)


def _add_token(commands: Any) -> None:
    token = commands.add_parser(
        "token",
        help="mint a bearer token: a signed JWT, or with --static a random token and its "
        "static token file line",
        description=tokens.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    token.add_argument("--subject", required=True, help="the principal's name (JWT sub)")
    token.add_argument(
        "--role",
        action="append",
        required=True,
        help="agent, client, reader or operator; repeat (or separate with commas) for more",
    )
    token.add_argument(
        "--agent",
        action="append",
        default=[],
        help="an agent id or pattern (gpu-*) the principal may act as; repeat for more "
        "(required with role agent)",
    )
    token.add_argument(
        "--static",
        action="store_true",
        help="a random token for COORDINATOR_AUTH_TOKEN_FILE: token on stdout, the file's "
        "line on stderr",
    )
    token.add_argument(
        "--ttl", default="24h", help="JWT lifetime: 3600, 15m, 24h, 7d (default 24h)"
    )
    token.add_argument("--secret-file", help="HS256: file holding the shared secret (>= 32 bytes)")
    token.add_argument("--private-key", help="RS256/ES256: PEM private key file")
    token.add_argument(
        "--algorithm",
        choices=("RS256", "ES256"),
        help="with --private-key (default: from the key, RS256 for RSA, ES256 for EC)",
    )
    token.add_argument(
        "--audience", default=tokens.DEFAULT_AUDIENCE, help="JWT aud (default: %(default)s)"
    )
    token.add_argument("--issuer", help="JWT iss (the node's COORDINATOR_AUTH_JWT_ISSUER)")


def _add_dev_ca(commands: Any) -> None:
    ca = commands.add_parser(
        "dev-ca",
        help="write a development CA, a server certificate and client certificates "
        "(for development only)",
        description=dev_ca.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ca.add_argument("--out", required=True, help="folder for the PEM files")
    ca.add_argument(
        "--server-name",
        action="append",
        help="DNS name or IP address of the server certificate; repeat for more "
        "(default: localhost and 127.0.0.1)",
    )
    ca.add_argument(
        "--client",
        action="append",
        default=[],
        help="NAME:ROLE[,ROLE]: a client certificate with CN=NAME and O=ROLE; repeat for more",
    )


def _serve(args: argparse.Namespace) -> int:
    if args.worker is not None:
        workers.die_with_parent(args.supervisor_pid)
    try:
        settings = load_settings(os.environ, args.env_file)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.worker is not None:
        settings = workers.worker_settings(settings, args.worker)
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
        if settings.workers > 1:
            return _supervise(settings, args, private)
        ready_fd = args.ready_fd
        on_serving = None if ready_fd is None else (lambda: workers.report_ready(ready_fd))
        return _run_node(serve(settings, on_serving), settings.uvloop)
    except ConfigError as exc:  # a credential file named by the settings is missing or bad
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        log.error("cannot serve on %s: %s", settings.address, exc)
        return 1
    finally:
        if private is not None:
            private.stop()


def _supervise(settings: Settings, args: argparse.Namespace, private: PrivateRedis | None) -> int:
    """Run the node as ``settings.workers`` worker processes (node/workers.py)."""
    command = [sys.executable, "-m", "coordinator", "serve"]
    if args.env_file:
        command += ["--env-file", args.env_file]
    env = dict(os.environ)
    if private is not None:  # the workers use the parent's private Redis
        env["REDIS_URL"] = settings.redis_url
    return asyncio.run(workers.supervise(settings, command, env))


def _run_node(main: Coroutine[Any, Any, int], use_uvloop: bool) -> int:
    """Run a node's coroutine on uvloop (COORDINATOR_UVLOOP) or asyncio's own loop."""
    loop_factory = None
    if use_uvloop:
        try:
            import uvloop
        except ImportError:  # a platform without uvloop (Windows): asyncio's loop
            log.warning("uvloop is not installed: using asyncio's event loop")
        else:
            loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)


def _health(args: argparse.Namespace) -> int:
    try:
        tls, _ = _connection(args)  # health is open: no token needed
        credentials = tls.channel_credentials() if tls else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    options = tls.channel_options() if tls else ()
    result = healthcheck.probe(args.address, args.service, args.timeout, credentials, options)
    print(result.status)
    return 0 if result.serving else 1


def _agent(args: argparse.Namespace) -> int:
    try:
        tls, token_file = _connection(args)
        return demo.run_demo_agent(
            args.address or ["localhost:9001"],
            args.id,
            agent_type=args.type,
            capabilities=args.capability,
            max_concurrency=args.max_concurrency,
            deregister_on_stop=not args.keep_registered,
            tls=tls,
            token_file=token_file,
        )
    except ValueError as exc:  # a bad TLS file or token, or a token in the clear
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _submit(args: argparse.Namespace) -> int:
    try:
        tls, token_file = _connection(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return demo.submit_command(
        args.address or ["localhost:9001"],
        args.type,
        args.data,
        priority=args.priority,
        wait=args.wait,
        timeout_s=args.timeout,
        lease_s=args.lease,
        tls=tls,
        token_file=token_file,
    )


def _token(args: argparse.Namespace) -> int:
    try:
        grant = tokens.grant_from(args.subject, args.role, args.agent)
        if args.static:
            if args.secret_file or args.private_key:
                raise ValueError(
                    "--static: a static token is random; drop --secret-file/--private-key"
                )
            token = tokens.static_token()
            print(token)
            print(tokens.token_file_line(token, grant), file=sys.stderr)
            return 0
        if bool(args.secret_file) == bool(args.private_key):
            raise ValueError(
                "give --secret-file (HS256) or --private-key (RS256/ES256), or --static"
            )
        key_path = Path(args.secret_file or args.private_key)
        flag = "--secret-file" if args.secret_file else "--private-key"
        try:
            # The secret is the file's text without surrounding whitespace, as the node
            # reads COORDINATOR_AUTH_JWT_HS256_SECRET_FILE.
            key = key_path.read_text().strip().encode()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ValueError(f"{flag}: cannot read {key_path}: {reason}") from None
        if args.secret_file:
            algorithm = "HS256"
        else:
            algorithm = args.algorithm or tokens.algorithm_of(key)
        print(
            tokens.mint_jwt(
                grant,
                key=key,
                algorithm=algorithm,
                ttl_s=tokens.parse_ttl(args.ttl),
                audience=args.audience,
                issuer=args.issuer,
            )
        )
        return 0
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _dev_ca(args: argparse.Namespace) -> int:
    try:
        clients = [dev_ca.ClientSpec.parse(text) for text in args.client]
        written = dev_ca.make_dev_ca(
            Path(args.out), args.server_name or ["localhost", "127.0.0.1"], clients
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"CA (for development only): {written.ca}")
    print(f"server: {written.server} {written.server_key}")
    for name, (cert, key) in written.clients.items():
        print(f"client {name}: {cert} {key}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m coordinator`` and the ``aitbc-coordinator`` script."""
    args = _parser().parse_args(argv)
    commands = {
        "serve": _serve,
        "health": _health,
        "agent": _agent,
        "submit": _submit,
        "token": _token,
        "dev-ca": _dev_ca,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
