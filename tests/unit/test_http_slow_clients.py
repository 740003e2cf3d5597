"""The daemon's HTTP server on a real socket against real slow clients: a request head has a deadline, slow
heads never keep /healthz and /metrics out, and the status page answers only the names it serves."""
from __future__ import annotations

import hashlib
import hmac
import http.client
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from email.message import Message

import pytest
from prometheus_client import CollectorRegistry

from reconciler.errors import ConfigError
from reconciler.metrics import Metrics
from reconciler.service import http as server_http, webhook
from reconciler.service.config import load
from reconciler.service.http import Endpoints, Response

HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class Page:
    """A status page of one route, `/`."""

    def owns(self, path: str) -> bool:
        return path == "/"

    def get(self, target: str, headers: Message) -> Response:
        return Response(200, b"page\n")


@pytest.fixture
def serve() -> Iterator[Callable[..., int]]:
    """Start the server on a free 127.0.0.1 port (with more allowed host names, if given); stopped at the end."""
    servers: list[server_http.BoundedServer] = []

    def start(allowed_hosts: tuple[str, ...] = ()) -> int:
        endpoints = Endpoints(CollectorRegistry(), lambda: True, lambda: True, None, Page(), allowed_hosts)
        servers.append(server_http.serve(("127.0.0.1", 0), endpoints))
        return servers[-1].server_address[1]
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def get(port: int, path: str, host: str | None = None, timeout: float = 1.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest("GET", path, skip_host=host is not None)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def trickle(port: int, every: float, stop: threading.Event, lasted: list[float]) -> None:
    """One byte of a request head every `every` seconds, on a new connection 0.1 s after the server closes one
    (a round trip away), until `stop`; how long each connection lasted goes to `lasted`."""
    while not stop.wait(0.1 if lasted else 0):
        started = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                for byte in HEAD:
                    sock.sendall(bytes([byte]))
                    readable, _, _ = select.select([sock], [], [], every)
                    if readable and sock.recv(1) == b"" or stop.is_set():
                        break
        except OSError:  # reset by the server
            pass
        lasted.append(time.monotonic() - started)


@pytest.mark.parametrize("clients, most", [
    pytest.param(40, server_http.MAX_HEADS, id="40-slow-heads"),
    pytest.param(40, 16, id="more-slow-heads-than-may-wait"),
])
def test_slow_heads_never_keep_healthz_and_metrics_out(serve, monkeypatch: pytest.MonkeyPatch, clients: int,
                                                       most: int) -> None:
    monkeypatch.setattr(server_http, "MAX_HEADS", most)
    port = serve()
    stop = threading.Event()
    lasted: list[float] = []
    slow = [threading.Thread(target=trickle, args=(port, 2.0, stop, lasted)) for _ in range(clients)]
    for client in slow:
        client.start()
    answers: list[tuple[int, float]] = []
    try:
        time.sleep(1.0)  # every slot taken by a slow head
        for _ in range(12):
            for path in ("/healthz", "/metrics"):
                started = time.monotonic()
                answers.append((get(port, path), time.monotonic() - started))
            time.sleep(0.5)
    finally:
        stop.set()
        for client in slow:
            client.join(10)

    assert [code for code, _ in answers] == [200] * 24
    assert max(seconds for _, seconds in answers) < 1.0, answers
    assert lasted and max(lasted) < server_http.HEAD_DEADLINE + 2.5, sorted(lasted)[-3:]  # 2 s: the client's wait


def test_a_head_that_trickles_is_closed_at_its_deadline_and_a_quick_one_is_answered(serve) -> None:
    port = serve()
    stop = threading.Event()
    lasted: list[float] = []
    slow = threading.Thread(target=trickle, args=(port, 0.25, stop, lasted))
    slow.start()
    try:
        while not lasted:
            assert get(port, "/healthz") == 200
            time.sleep(0.5)
    finally:
        stop.set()
        slow.join(10)

    assert server_http.HEAD_DEADLINE <= lasted[0] < server_http.HEAD_DEADLINE + 1.0, lasted


@pytest.mark.parametrize("path, host, allowed, code", [
    pytest.param("/", "127.0.0.1:{port}", (), 200, id="page-at-127.0.0.1"),
    pytest.param("/", "localhost:{port}", (), 200, id="page-at-localhost"),
    pytest.param("/", "LocalHost", (), 200, id="page-at-localhost-without-port"),
    pytest.param("/", "[::1]:{port}", (), 200, id="page-at-ipv6-loopback"),
    pytest.param("/", "evil.example:{port}", (), 421, id="page-at-a-rebound-name"),
    pytest.param("/", "", (), 421, id="page-without-a-host"),
    pytest.param("/", "gitops.example.com", ("gitops.example.com",), 200, id="page-at-an-allowed-name"),
    pytest.param("/", "other.example.com", ("gitops.example.com",), 421, id="page-at-a-name-not-allowed"),
    pytest.param("/metrics", "prometheus.monitoring.svc:9464", (), 200, id="metrics-at-any-name"),
    pytest.param("/healthz", "10.0.0.7:9464", (), 200, id="healthz-at-any-name"),
    pytest.param("/readyz", "evil.example", (), 200, id="readyz-at-any-name"),
])
def test_the_status_page_answers_only_the_names_it_serves(serve, path: str, host: str, allowed: tuple[str, ...],
                                                           code: int) -> None:
    port = serve(allowed)

    assert get(port, path, host.format(port=port)) == code


def test_a_signed_body_larger_than_what_the_head_reader_reads_ahead_reaches_the_webhook_whole() -> None:
    pushed = threading.Event()
    receiver = webhook.Receiver("s3cret", 1024 * 1024, Metrics(CollectorRegistry()), pushed.set)
    server = server_http.serve(("127.0.0.1", 0), Endpoints(CollectorRegistry(), lambda: True, lambda: True, receiver))
    body = b'{"ref": "refs/heads/main", "pad": "' + b"x" * 300_000 + b'"}'
    signature = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
    try:
        conn.request("POST", "/hooks/git", body=body, headers={"X-Signature-256": signature, "Host": "git.example"})
        assert (conn.getresponse().status, pushed.is_set()) == (202, True)
    finally:
        conn.close()
        server.shutdown()
        server.server_close()


def test_the_webhook_does_not_check_the_host(serve) -> None:
    port = serve()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("POST", "/hooks/git", body=b"{}", headers={"Host": "github-hookshot.example"})
        assert conn.getresponse().status == 404  # no secret configured: off, as without a Host check
    finally:
        conn.close()


def test_allowed_hosts_come_comma_separated_and_a_url_is_refused() -> None:
    assert load({}, {"RAY_GITOPS_ALLOWED_HOSTS": "gitops.example.com, ray.example.com"}).allowed_hosts == (
        "gitops.example.com", "ray.example.com")
    assert load({"allowed_hosts": "proxy.local"}, {}).allowed_hosts == ("proxy.local",)
    with pytest.raises(ConfigError, match="setting allowed_hosts: 'https://gitops.example.com' is not a host name"):
        load({}, {"RAY_GITOPS_ALLOWED_HOSTS": "https://gitops.example.com"})
