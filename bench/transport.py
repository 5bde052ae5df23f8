"""TLS and a bearer token for the bench's load tools (load_agent.py, load_submitter.py):
``--ca-file`` makes their channels TLS, ``--token-file`` sends the token on every call and
stream, the way the SDK does (coordinator.sdk.credentials: call metadata, not gRPC call
credentials, whose plugin costs a thread per call)."""

from __future__ import annotations

import argparse
from typing import Any, TypeVar

import grpc

from coordinator.sdk.credentials import BearerToken, TlsOptions, WithToken

T = TypeVar("T")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ca-file", help="TLS: the CA the node's certificate chains to")
    parser.add_argument("--token-file", help="send this file's bearer token on every call")


def tls_options(args: argparse.Namespace) -> TlsOptions | None:
    return TlsOptions(ca_file=args.ca_file) if args.ca_file else None


def channel(args: argparse.Namespace, address: str, **kwargs: Any) -> grpc.aio.Channel:
    """A TLS channel with ``--ca-file``, else a plaintext one."""
    tls = tls_options(args)
    if tls is None:
        return grpc.aio.insecure_channel(address, **kwargs)
    return grpc.aio.secure_channel(address, tls.channel_credentials(), **kwargs)


_tokens: dict[str, BearerToken] = {}


def stub(stub_class: type[T], chan: grpc.aio.Channel, args: argparse.Namespace) -> T:
    """``stub_class(chan)``, whose calls carry the token with ``--token-file``."""
    made = stub_class(chan)  # type: ignore[call-arg]
    if not args.token_file:
        return made
    token = _tokens.setdefault(args.token_file, BearerToken(token_file=args.token_file))
    return WithToken(made, token)  # type: ignore[return-value]
