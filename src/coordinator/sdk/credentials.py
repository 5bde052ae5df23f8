"""What an SDK object presents to the coordinator: TLS settings and a bearer token.

The token goes as ``authorization: Bearer <token>`` metadata on every call, streams
included. It is added by the stubs ``Endpoints`` hands out (``with_token``), not by gRPC
call credentials: gRPC Python runs a call-credentials plugin on a new thread for every
call, which costs about half a millisecond a call (measured with grpcio 1.85), while
metadata costs nothing measurable. The same path works on TLS and on plaintext channels;
over plaintext the token is sent only to loopback addresses (tests, a node on the same
host), never across a network in the clear.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

T = TypeVar("T")

TOKEN_RECHECK_S = 1.0
"""A token file is looked at (stat) at most this often, so a rotated token is used within
about a second without a read on every call."""


@dataclass(frozen=True)
class TlsOptions:
    """TLS to the coordinator. ``ca_file``: PEM CA bundle the server certificate must chain
    to (None: the system's roots). ``cert_file`` and ``key_file``: this side's client
    certificate and key, for mutual TLS (both or neither). ``server_name``: the name the
    server certificate must carry when it differs from the address's host."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("tls: cert_file and key_file go together; give both or neither")

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Read the files (now: a rotated client certificate is used by the next channel)."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "ca_file") if self.ca_file else None,
            private_key=_read(self.key_file, "key_file") if self.key_file else None,
            certificate_chain=_read(self.cert_file, "cert_file") if self.cert_file else None,
        )

    def channel_options(self) -> tuple[tuple[str, Any], ...]:
        if self.server_name:
            return (("grpc.ssl_target_name_override", self.server_name),)
        return ()


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ValueError(f"tls: {what}: cannot read {path}: {exc.strerror or exc}") from None


class BearerToken:
    """A bearer token given as a string, or read from a file (re-read when it changes)."""

    def __init__(self, token: str | None = None, token_file: str | None = None) -> None:
        if (token is None) == (token_file is None):
            raise ValueError("token: give token or token_file, not both")
        self._file = token_file
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at = 0.0
        self._metadata: tuple[tuple[str, str], ...] = ()
        if token is not None:
            self._metadata = (("authorization", f"Bearer {_checked(token, 'token')}"),)
        else:
            self._reload()

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The ``authorization`` metadata to send with a call."""
        if self._file is not None and time.monotonic() - self._checked_at >= TOKEN_RECHECK_S:
            with self._lock:
                self._reload()
        return self._metadata

    def _reload(self) -> None:
        assert self._file is not None
        self._checked_at = time.monotonic()
        try:
            status = os.stat(self._file)
        except OSError as exc:
            if not self._metadata:
                raise ValueError(
                    f"token_file: cannot read {self._file}: {exc.strerror or exc}"
                ) from None
            return  # being replaced: keep the token we have
        stamp = (status.st_ino, status.st_size, status.st_mtime_ns)
        if stamp == self._stamp:
            return
        try:
            with open(self._file, encoding="utf-8") as file:
                token = _checked(file.read().strip(), f"token_file {self._file}")
        except (OSError, ValueError):
            if not self._metadata:
                raise
            return  # half-written: keep the token we have, look again next time
        self._stamp = stamp
        self._metadata = (("authorization", f"Bearer {token}"),)


def _checked(token: str, what: str) -> str:
    token = token.strip()
    if not token:
        raise ValueError(f"{what}: the token is empty")
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in token):
        raise ValueError(f"{what}: a token is printable ASCII without spaces")
    return token


def bearer_token(token: str | None, token_file: str | None) -> BearerToken | None:
    """The token an SDK object was given, if any."""
    if token is None and token_file is None:
        return None
    return BearerToken(token, token_file)


def check_token_transport(
    addresses: Sequence[str], tls: TlsOptions | None, token: BearerToken | None
) -> None:
    """ValueError when a token would cross a network in the clear."""
    if token is None or tls is not None:
        return
    for address in addresses:
        if not is_loopback(address):
            raise ValueError(
                f"token: refusing to send a bearer token in the clear to {address}; give "
                "tls=TlsOptions(...) (a plaintext channel carries a token only to a loopback "
                "address)"
            )


def is_loopback(address: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 addresses (``host:port``, ``[::1]:port``)."""
    host = address.rsplit(":", 1)[0] if not address.startswith("[") else address[1:].split("]")[0]
    host = host.removeprefix("ipv4:").removeprefix("ipv6:")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WithToken:
    """A stub whose every method sends the token's metadata."""

    def __init__(self, stub: object, token: BearerToken) -> None:
        self._stub = stub
        self._token = token

    def __getattr__(self, name: str) -> Any:
        return functools.partial(getattr(self._stub, name), metadata=self._token.metadata())
