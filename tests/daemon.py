"""`ray-gitops run` as a subprocess for end-to-end tests: its metrics, waiting, stopping by PID."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.eventually import eventually


class DaemonProcess:
    """One daemon on a free loopback port; `args` follow `ray-gitops run --repo ... --state-dir ...`."""

    def __init__(self, repo: str, state_dir: Path, log: Path, args: list[str],
                 environ: dict[str, str] | None = None, address_space: int | None = None) -> None:
        """`address_space`: a cap on the daemon's virtual memory in bytes (RLIMIT_AS), as a container limit."""
        self.port, self.log = free_port(), log
        cmd = [sys.executable, "-m", "reconciler", "run", "--repo", repo, "--state-dir", str(state_dir),
               "--metrics-address", f"127.0.0.1:{self.port}", *args]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_GITOPS_")}, **(environ or {})}
        limit = (lambda: resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))) \
            if address_space else None
        self.proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=limit)

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample's value, None when absent or when the daemon does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        samples = {(s.name, frozenset(s.labels.items())): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        return samples.get((name, frozenset(labels.items())))

    def fetches(self, result: str) -> float:
        """Git fetches it made with this result (`success` or `error`; 0 when it does not answer): one per poll, a
        positive sign that time passed for a test that checks nothing happened meanwhile."""
        return self.metric("ray_gitops_git_requests_total", request_type="fetch", result=result) or 0.0

    def ready(self) -> bool:
        """`/readyz` answers 200."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5) as resp:
                return resp.status == 200
        except OSError:
            return False

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 180, poll: float = 0.5) -> None:
        """`eventually(check)`, failing at once if the daemon exits, with its log's tail on timeout."""
        def alive_and_check() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited: {self.log.read_text()[-3000:]}")
            return check()
        eventually(alive_and_check, timeout, poll, lambda: f"{what}; daemon log:\n{self.log.read_text()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> None:
        """Signal the daemon and wait; SIGKILL if it does not end in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
