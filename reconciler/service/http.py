"""The daemon's HTTP endpoints: /metrics, /healthz, /readyz, POST /hooks/git and the status page's
GET routes (/, /api/v1/...: answered by `Endpoints.page`), on one address.

Started by the daemon; it answers from what the daemon hands it (callables, the webhook receiver
and the page's router), and runs nothing of a reconcile in its threads. It is reachable by anyone who can reach
the address, so it is bounded: a connection idle for `TIMEOUT` seconds is closed, at most
`MAX_CONNECTIONS` are served at once (more are closed at once), and a client that goes away is a
debug line, never a traceback.
"""
from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from email.message import Message
from typing import Any, Callable, Mapping, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from . import webhook

log = logging.getLogger(__name__)
TIMEOUT = 10.0  # seconds a connection may stay idle, or take to send its request
MAX_CONNECTIONS = 32


@dataclass(frozen=True)
class Response:
    """One answer of a GET route that is not the server's own (the status page and its API)."""

    code: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


class Page(Protocol):
    """GET routes served beside the server's own (the status page and its API)."""

    def owns(self, path: str) -> bool:
        """`path` (without the query) is one of its routes."""

    def get(self, target: str, headers: Message) -> Response:
        """The answer to `GET target` (a path with its query) for one of its routes."""


@dataclass(frozen=True)
class Endpoints:
    """What the server answers with."""

    registry: CollectorRegistry
    healthy: Callable[[], bool]
    ready: Callable[[], bool]
    hooks: webhook.Receiver | None  # None: POST /hooks/git is off (404)
    page: Page | None = None  # None: the status page is off (404)


def serve(address: tuple[str, int], endpoints: Endpoints) -> ThreadingHTTPServer:
    """Listen on `address` and serve in a daemon thread; `shutdown()` and `server_close()` stop it."""

    class Handler(BaseHTTPRequestHandler):
        timeout = TIMEOUT

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/metrics":
                self._send(200, generate_latest(endpoints.registry), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                ok = endpoints.healthy()
                self._send(200 if ok else 503, b"ok\n" if ok else b"loop stalled\n")
            elif self.path == "/readyz":
                ok = endpoints.ready()
                self._send(200 if ok else 503, b"ok\n" if ok else b"first reconcile not done\n")
            elif endpoints.page is not None and self._paged():
                answer = endpoints.page.get(self.path, self.headers)
                self._send(answer.code, answer.body, answer.content_type, headers=answer.headers)
            else:
                self._other()

        def do_POST(self) -> None:  # noqa: N802
            if self.path.split("?")[0] != webhook.PATH or endpoints.hooks is None:
                self._other()
                return
            code, body = endpoints.hooks.handle(self.headers, self.rfile)
            self._send(code, body)

        def _paged(self) -> bool:
            return endpoints.page is not None and endpoints.page.owns(self.path.split("?")[0])

        def _other(self) -> None:
            if self.path.split("?")[0] == webhook.PATH and endpoints.hooks is not None:
                self._send(405, b"use POST\n", allow="POST")
            elif self.command != "GET" and self._paged():
                self._send(405, b"read-only: use GET\n", allow="GET")
            else:
                self._send(404, b"not found\n")

        do_PUT = do_DELETE = do_PATCH = _other  # noqa: N815

        def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
                  allow: str = "", headers: Mapping[str, str] | None = None) -> None:
            self.send_response(code)
            if allow:
                self.send_header("Allow", allow)
            if code == 413:  # the body was left unread: this connection cannot carry another request
                self.send_header("Connection", "close")
                self.close_connection = True
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if code != 304:  # "not modified" carries no body
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if code != 304:
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = BoundedServer(address, Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("serving /metrics /healthz /readyz%s%s on http://%s:%d",
             " " + webhook.PATH if endpoints.hooks is not None else "",
             " and the status page /" if endpoints.page is not None else "", *server.server_address[:2])
    return server


class BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS at once; broken connections logged at debug."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.debug("http: %d connections open; closing one from %s", MAX_CONNECTIONS, client_address[0])
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("http: connection from %s ended: %s", client_address[0], sys.exc_info()[1])
