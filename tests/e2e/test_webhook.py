"""POST /hooks/git against the daemon as a subprocess: real Git, real HTTP, no Ray (no objects)."""
from __future__ import annotations

import hashlib
import hmac
import http.client
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GitRemote, free_port

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


class Daemon:
    """`ray-gitops run --interval 1h` in a subprocess: only a webhook makes it fetch again."""

    def __init__(self, repo: str, state_dir: Path, log: Path, environ: dict[str, str]) -> None:
        self.port, self.log = free_port(), log
        cmd = [sys.executable, "-m", "reconciler", "run", "--repo", repo, "--state-dir", str(state_dir),
               "--interval", "1h", "--metrics-address", f"127.0.0.1:{self.port}", "--log-level", "info"]
        self.proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                     env={**{k: v for k, v in os.environ.items() if not k.startswith("RAY_GITOPS_")},
                                          **environ})

    def metric(self, name: str, **labels: str) -> float | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        samples = {(s.name, frozenset(s.labels.items())): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        return samples.get((name, frozenset(labels.items())))

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"daemon exited: {self.log.read_text()[-3000:]}"
            if check():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; daemon log:\n{self.log.read_text()[-4000:]}")

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

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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


def info(daemon: Daemon, revision: str) -> float | None:
    return daemon.metric("ray_gitops_environment_info", environment=ENV, target="local", revision=revision[:12],
                         sync_status="Synced", health_status="Healthy")


def test_signed_push_fetches_at_once_and_a_bad_signature_changes_nothing(remote: GitRemote, tmp_path: Path,
                                                                       start: Callable[..., Daemon]) -> None:
    remote.write(f"environments/{ENV}/environment.yaml", ENVIRONMENT)
    first = remote.commit("an environment with no objects")
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
    daemon.wait_for("the pushed revision", lambda: info(daemon, second) == 1, timeout=10)
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
