"""The local target's RayService parts that need no Ray: a RayService's address (`endpoints`: a relay on
127.0.0.1 to whichever Serve proxy is active, bounded) and `serveConfigV2` as the local target deploys it (`serve`).
The whole on real Ray is tests/integration/test_local_serve.py."""
from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from reconciler.targets.local import endpoints, serve
from reconciler.targets.local.endpoints import Endpoint
from tests.eventually import eventually


def answering(text: str) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1 that answers `text` to every GET (keep-alive)."""
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def upstreams() -> Iterator[tuple[int, int]]:
    old, new = answering("old"), answering("new")
    yield old.server_address[1], new.server_address[1]
    for server in (old, new):
        server.shutdown()
        server.server_close()


def get(connection: http.client.HTTPConnection) -> str:
    connection.request("GET", "/")
    return connection.getresponse().read().decode()


def test_the_address_relays_to_the_active_proxy_and_a_switch_moves_only_new_connections(
        upstreams: tuple[int, int]) -> None:
    old, new = upstreams
    endpoint = Endpoint()
    try:
        assert endpoint.port > 0
        endpoint.route(old)
        before = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=5)
        assert get(before) == "old"
        endpoint.route(new)
        after = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=5)
        assert (get(after), get(before)) == ("new", "old")  # a connection opened before the switch stays
        before.close()
        after.close()
    finally:
        endpoint.close()


def test_the_address_refuses_before_it_has_a_route_and_is_bounded(upstreams: tuple[int, int],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(endpoints, "MAX_CONNECTIONS", 2)
    endpoint = Endpoint()
    try:
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=5) as unrouted:
            assert unrouted.recv(1) == b""  # closed at once: no cluster to send it to
        endpoint.route(upstreams[0])
        held = [http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=5) for _ in range(2)]
        assert [get(c) for c in held] == ["old", "old"]
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=5) as third:
            assert third.recv(1) == b""  # beyond MAX_CONNECTIONS
        held[0].close()
        def served() -> bool:  # a slot comes free once the relay of the closed connection ends
            fresh = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=5)
            try:
                return get(fresh) == "old"
            except (ConnectionError, http.client.HTTPException):
                return False
            finally:
                fresh.close()
        eventually(served, 5, 0.1, "a free connection slot")
        held[1].close()
    finally:
        endpoint.close()


def test_a_recorded_port_is_taken_again_or_another_is_opened() -> None:
    opened = endpoints.Endpoints()
    first = opened.open(("e", "svc"), None)
    assert opened.open(("e", "svc"), 1) is first  # one per RayService
    port = first.port
    opened.close(("e", "svc"))
    again = opened.open(("e", "svc"), port)
    assert again.port == port
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        other = opened.open(("e", "other"), squatter.getsockname()[1])
        assert other.port != squatter.getsockname()[1]
    opened.close_all()


def test_the_serve_config_is_the_local_targets_own_where_it_must_be(tmp_path: Path) -> None:
    """Serve's HTTP proxy on 127.0.0.1 on the cluster's port and on the head only; a relative working_dir is the
    directory exported from the revision; the rest is Git's."""
    text = """\
proxy_location: EveryNode
http_options: {host: 0.0.0.0, port: 8000, request_timeout_s: 30}
applications:
- {name: a, import_path: "a:app", runtime_env: {working_dir: services/a, pip: [x]}}
- {name: b, import_path: "b:app", runtime_env: {working_dir: "https://example.invalid/b.zip"}}
- {name: c, import_path: "c:app"}
"""
    config = serve.config(text, 23456, lambda path: tmp_path / "checkout" / path)
    assert config == {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": 23456, "request_timeout_s": 30},
        "applications": [
            {"name": "a", "import_path": "a:app",
             "runtime_env": {"working_dir": f"local://{tmp_path}/checkout/services/a", "pip": ["x"]}},
            {"name": "b", "import_path": "b:app", "runtime_env": {"working_dir": "https://example.invalid/b.zip"}},
            {"name": "c", "import_path": "c:app"}]}


def test_serves_statuses_become_kuberays_shape_and_readiness() -> None:
    assert serve.ready({"applicationStatuses": {"a": {"status": "RUNNING"}, "b": {"status": "RUNNING"}}})
    assert not serve.ready({"applicationStatuses": {"a": {"status": "RUNNING"}, "b": {"status": "DEPLOYING"}}})
    assert not serve.ready({"applicationStatuses": {}})  # no application: nothing to switch to (as KubeRay)
    assert serve.clusters_of({"active": {"cluster": "a"}, "pending": {"cluster": "b"},
                              "retiring": [{"cluster": "c", "at": 1.0}]}) == ["a", "b", "c"]
