"""POST /hooks/git against the daemon as a subprocess: real Git, real HTTP, no Ray (no objects)."""
from __future__ import annotations

import hashlib
import hmac
import http.client
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import NEIGHBOURS, GitRemote, write_neighbours
from tests.daemon import DaemonProcess

pytestmark = [pytest.mark.e2e]
ENV = "hooked"
SECRET = "webhook-test-secret"
ENVIRONMENT = f"""apiVersion: gitops.ray.io/v1alpha1
kind: Environment
metadata: {{name: {ENV}}}
spec:
  target: {{local: {{}}}}
  interval: 1h
"""


class Daemon(DaemonProcess):
    """`ray-gitops run --interval 1h`: only a webhook makes it fetch again."""

    def __init__(self, repo: str, state_dir: Path, log: Path, environ: dict[str, str]) -> None:
        super().__init__(repo, state_dir, log, ["--interval", "1h", "--log-level", "info"], environ)

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 30, poll: float = 0.2) -> None:
        super().wait_for(what, check, timeout, poll)

    def request(self, method: str, headers: dict[str, str], body: bytes = b"",
                length: int | None = None) -> int:
        """Status of one request; `length` may claim more than `body` (the rest is never sent)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.putrequest(method, "/hooks/git")
            for key, value in {**headers, "Content-Length": str(len(body) if length is None else length)}.items():
                conn.putheader(key, value)
            conn.endheaders(body)
            return conn.getresponse().status
        finally:
            conn.close()


@pytest.fixture
def start(remote: GitRemote, tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Daemon]]:
    started: list[Daemon] = []

    def run(environ: dict[str, str]) -> Daemon:
        daemon = Daemon(remote.url, tmp_path / f"state{len(started)}", tmp_path / "daemon.log", environ)
        started.append(daemon)
        return daemon
    yield run
    for daemon in started:  # by PID, whatever the test did
        daemon.stop()


def github(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"X-GitHub-Event": "push", "Content-Type": "application/json",
            "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


def info(daemon: Daemon, revision: str, env: str = ENV) -> float | None:
    return daemon.metric("ray_gitops_environment_info", environment=env, target="local", revision=revision[:12],
                         sync_status="Synced", health_status="Healthy")


def test_signed_push_fetches_at_once_and_a_bad_signature_changes_nothing(remote: GitRemote, tmp_path: Path,
                                                                       start: Callable[..., Daemon]) -> None:
    remote.write(f"environments/{ENV}/environment.yaml", ENVIRONMENT)
    write_neighbours(remote, interval="1h")
    first = remote.commit("an environment with no objects, and two neighbours")
    (tmp_path / "secret").write_text(SECRET + "\n")
    daemon = start({"RAY_GITOPS_WEBHOOK_SECRET_FILE": str(tmp_path / "secret")})
    daemon.wait_for("the first reconcile", lambda: info(daemon, first) == 1)
    reconciles = daemon.metric("ray_gitops_reconcile_total", environment=ENV, result="success")
    remote.write("NOTES.txt", "a commit the daemon can only learn of by webhook\n")
    second = remote.commit("second")
    body = b'{"ref": "refs/heads/main"}'

    assert daemon.request("POST", github(body, secret="wrong"), body) == 401
    assert daemon.request("POST", {"Content-Type": "application/json"}, body) == 401
    time.sleep(2)
    assert daemon.metric("ray_gitops_reconcile_total", environment=ENV, result="success") == reconciles
    assert info(daemon, first) == 1
    assert daemon.metric("ray_gitops_webhook_requests_total", provider="github", result="unauthorized") == 1

    started = time.monotonic()
    assert daemon.request("POST", github(body), body) == 202
    daemon.wait_for("the pushed revision", lambda: all(info(daemon, second, env) == 1 for env in (ENV, *NEIGHBOURS)),
                    timeout=10)
    print(f"webhook to applied revision: {time.monotonic() - started:.2f}s")
    assert daemon.metric("ray_gitops_webhook_requests_total", provider="github", result="accepted") == 1

    assert daemon.request("POST", github(body), body[:10], length=2 * 1024 * 1024) == 413
    assert daemon.request("GET", {}) == 405
    assert daemon.metric("ray_gitops_webhook_requests_total", provider="github", result="too_large") == 1
    assert SECRET not in daemon.log.read_text()


def test_without_a_secret_the_endpoint_does_not_exist(remote: GitRemote, start: Callable[..., Daemon]) -> None:
    remote.write(f"environments/{ENV}/environment.yaml", ENVIRONMENT)
    first = remote.commit("an environment with no objects")
    daemon = start({})
    daemon.wait_for("the first reconcile", lambda: info(daemon, first) == 1)
    body = b"{}"

    assert daemon.request("POST", github(body, secret=""), body) == 404
    assert daemon.request("POST", {"X-Gitlab-Token": ""}, body) == 404


def test_idle_connections_are_bounded_timed_out_and_disconnects_leave_no_traceback(
        remote: GitRemote, start: Callable[..., Daemon]) -> None:
    import socket

    from reconciler.service.http import MAX_CONNECTIONS, TIMEOUT
    remote.write(f"environments/{ENV}/environment.yaml", ENVIRONMENT)
    first = remote.commit("an environment with no objects")
    daemon = start({})
    daemon.wait_for("the first reconcile", lambda: info(daemon, first) == 1)
    threads = lambda: int(dict(line.split(":", 1) for line in  # noqa: E731
                               open(f"/proc/{daemon.proc.pid}/status").read().splitlines())["Threads"])
    before = threads()

    idle = [socket.create_connection(("127.0.0.1", daemon.port), timeout=30) for _ in range(150)]
    try:
        time.sleep(1)
        held = threads()
        assert held <= before + MAX_CONNECTIONS, (before, held)
        started = time.monotonic()
        for sock in idle[:MAX_CONNECTIONS]:  # the ones being served: closed by the server after TIMEOUT
            assert sock.recv(1) == b""
        assert time.monotonic() - started < TIMEOUT + 5
    finally:
        for sock in idle:
            sock.close()
    daemon.wait_for("/metrics answering again", lambda: daemon.metric("ray_gitops_environment_info", environment=ENV,
                    target="local", revision=first[:12], sync_status="Synced", health_status="Healthy") == 1)
    for _ in range(20):  # clients that leave before the answer
        sock = socket.create_connection(("127.0.0.1", daemon.port))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    time.sleep(1)
    assert daemon.proc.poll() is None and "Traceback" not in daemon.log.read_text()
    print(f"threads: {before} before, {held} with 150 idle connections (bound {MAX_CONNECTIONS})")
