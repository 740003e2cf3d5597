"""The daemon's HTTP endpoints: /metrics, /healthz, /readyz and POST /hooks/git, on one address.

Started by the daemon; it answers from what the daemon hands it (callables and the webhook
receiver), and runs nothing of a reconcile in its threads. It is reachable by anyone who can reach
the address, so it is bounded: a connection idle for `TIMEOUT` seconds is closed, at most
`MAX_CONNECTIONS` are served at once (more are closed at once), and a client that goes away is a
debug line, never a traceback.
"""
from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from . import webhook

log = logging.getLogger(__name__)
TIMEOUT = 10.0  # seconds a connection may stay idle, or take to send its request
MAX_CONNECTIONS = 32


@dataclass(frozen=True)
class Endpoints:
    """What the server answers with."""

    registry: CollectorRegistry
    healthy: Callable[[], bool]
    ready: Callable[[], bool]
    hooks: webhook.Receiver | None  # None: POST /hooks/git is off (404)


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
            else:
                self._other()

        def do_POST(self) -> None:  # noqa: N802
            if self.path.split("?")[0] != webhook.PATH or endpoints.hooks is None:
                self._send(404, b"not found\n")
                return
            code, body = endpoints.hooks.handle(self.headers, self.rfile)
            self._send(code, body)

        def _other(self) -> None:
            if self.path.split("?")[0] == webhook.PATH and endpoints.hooks is not None:
                self._send(405, b"use POST\n", allow="POST")
            else:
                self._send(404, b"not found\n")

        do_PUT = do_DELETE = do_PATCH = _other  # noqa: N815

        def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
                  allow: str = "") -> None:
            self.send_response(code)
            if allow:
                self.send_header("Allow", allow)
            if code == 413:  # the body was left unread: this connection cannot carry another request
                self.send_header("Connection", "close")
                self.close_connection = True
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = BoundedServer(address, Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("serving /metrics /healthz /readyz%s on http://%s:%d",
             " " + webhook.PATH if endpoints.hooks is not None else "", *server.server_address[:2])
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
