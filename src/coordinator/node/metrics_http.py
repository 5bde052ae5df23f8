"""The metrics endpoint's HTTP side: prometheus_client's WSGI server, served on a host of
our choosing, optionally behind a bearer token (COORDINATOR_METRICS_TOKEN_FILE)."""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

from prometheus_client.exposition import (  # the parts start_http_server is made of
    ThreadingWSGIServer,
    _get_best_family,
    _SilentHandler,
)

from coordinator.auth.files import WatchedFile

METRICS_TOKEN_VARIABLE = "COORDINATOR_METRICS_TOKEN_FILE"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Any]


def read_token(text: str) -> str:
    """The token of a metrics token file (ValueError when it holds none)."""
    token = text.strip()
    if not token:
        raise ValueError("the file is empty")
    return token


def bearer_protected(app: WsgiApp, token: WatchedFile[str]) -> WsgiApp:
    """``app`` behind ``Authorization: Bearer <token>`` (401 otherwise); the token file is
    read again when it changes."""

    def protected(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
        expected = f"Bearer {token.current()}".encode("latin-1", "replace")
        if not hmac.compare_digest(given, expected):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Bearer realm="metrics"')],
            )
            return [b"send Authorization: Bearer <the token of COORDINATOR_METRICS_TOKEN_FILE>\n"]
        return app(environ, start_response)

    return protected


def serve_wsgi(app: WsgiApp, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """prometheus_client's start_http_server, serving ``app`` (the registry, maybe behind a
    token) instead of always the bare registry."""

    class Server(ThreadingWSGIServer):
        """A copy, so that the address family is set for this server only."""

    Server.address_family, address = _get_best_family(host, port)
    httpd = make_server(address, port, app, Server, handler_class=_SilentHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    return httpd, thread
