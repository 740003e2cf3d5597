"""The daemon's HTTP endpoints: /metrics, /healthz, /readyz, POST /hooks/git and the status page's
GET routes (/, /api/v1/...: answered by `Endpoints.page`), on one address.

Started by the daemon; it answers from what the daemon hands it (callables, the webhook receiver
and the page's router), and runs nothing of a reconcile in its threads. It is reachable by anyone who can reach
the address, so it is bounded: a request head (request line and headers) must be in within `HEAD_DEADLINE`
seconds of the accept, however it trickles, and is read without a thread (`heads.HeadReader`, at most
`MAX_HEADS` connections at once, one more closes the oldest); only a connection whose head is in gets one of
`MAX_CONNECTIONS` threads, so slow clients never keep /healthz or /metrics out. A read or write that stalls
for `TIMEOUT` seconds ends its connection; a client that goes away is a debug line, never a traceback. The
status page answers only requests whose `Host` names this server (DNS rebinding: a page elsewhere whose name
now points here would read it).
"""
from __future__ import annotations

import io
import logging
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from . import webhook
from .heads import HeadReader

log = logging.getLogger(__name__)
TIMEOUT = 10.0  # seconds a read or a write may stall
HEAD_DEADLINE = 5.0  # seconds from a connection's accept to the end of its request head
MAX_CONNECTIONS = 32  # requests served at once (a thread each)
MAX_HEADS = 128  # connections sending their request head at once (no thread; a socket each)
LOOPBACK = ("127.0.0.1", "localhost", "::1")  # names the status page always answers to


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
    allowed_hosts: tuple[str, ...] = ()  # more names the page answers to (behind a proxy), beside LOOPBACK


def serve(address: tuple[str, int], endpoints: Endpoints) -> BoundedServer:
    """Listen on `address` and serve in a daemon thread; `shutdown()` and `server_close()` stop it."""

    class Handler(BaseHTTPRequestHandler):
        timeout = TIMEOUT
        server: BoundedServer

        def setup(self) -> None:
            super().setup()
            self.rfile = io.BufferedReader(_Replay(self.server.head_of(self.connection), self.rfile))

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
                if _host(self.headers.get("Host", "")) not in hosts:
                    self._send(421, b"this server answers the status page at 127.0.0.1, localhost or its own "
                               b"address; behind a proxy, add the name to allowed_hosts\n")
                    return
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
    hosts = {*LOOPBACK, *(_host(h) for h in (address[0], *endpoints.allowed_hosts))} - {"0.0.0.0", "::", ""}
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("serving /metrics /healthz /readyz%s%s on http://%s:%d",
             " " + webhook.PATH if endpoints.hooks is not None else "",
             " and the status page /" if endpoints.page is not None else "", *server.server_address[:2])
    return server


def _host(value: str) -> str:
    """The name in a `Host` header or an address, without its port or IPv6 brackets, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    name, colon, port = value.rpartition(":")
    return name if colon and port.isdigit() and ":" not in name else value


class _Replay(io.RawIOBase):
    """What the head reader read ahead, then the rest of the connection."""

    def __init__(self, head: bytes, rest: io.BufferedIOBase) -> None:
        self._head, self._rest = memoryview(head), rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            size = min(len(buffer), len(self._head))
            buffer[:size], self._head = self._head[:size], self._head[size:]
            return size
        return self._rest.readinto1(buffer)

    def close(self) -> None:
        self._rest.close()
        super().close()


class BoundedServer(ThreadingHTTPServer):
    """Heads read by one thread within HEAD_DEADLINE; then a thread per request, at most MAX_CONNECTIONS at
    once (more are closed at once); broken connections logged at debug."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._heads: dict[socket.socket, bytes] = {}  # read ahead, until the handler takes them
        self._lock = threading.Lock()
        self._reader = HeadReader(self._serve, HEAD_DEADLINE, MAX_HEADS)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Just accepted: the reader watches it until its head is in."""
        self._reader.add(request, client_address)

    def _serve(self, request: socket.socket, client_address: Any, head: bytes) -> None:
        """Its head is in: a thread serves it, if one of MAX_CONNECTIONS is free."""
        if not self._slots.acquire(blocking=False):
            log.debug("http: %d requests being served; closing one from %s", MAX_CONNECTIONS, client_address[0])
            self.shutdown_request(request)
            return
        with self._lock:
            self._heads[request] = head
        super().process_request(request, client_address)

    def head_of(self, request: socket.socket) -> bytes:
        with self._lock:
            return self._heads.pop(request, b"")

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def server_close(self) -> None:
        self._reader.stop()
        super().server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("http: connection from %s ended: %s", client_address[0], sys.exc_info()[1])
