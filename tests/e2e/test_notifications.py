"""Notifications from the daemon as a subprocess to a local HTTP receiver on 127.0.0.1: the generic payload and
Slack's, retries of a receiver that fails once, a dead receiver given up after bounded attempts, and URL secrets
kept out of the log. Real Git; ConfigMaps on the local target (no Ray)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import NEIGHBOURS, GitRemote, free_port, write_neighbours
from tests.daemon import DaemonProcess
from tests.receiver import Receiver

pytestmark = [pytest.mark.e2e]
ENV = "told"
SECRET = "s3cr3t-in-the-url"


def reconcile(state: Path) -> int:
    return subprocess.run([sys.executable, "-m", "reconciler", "reconcile", "--state-dir", str(state),
                           "--environment", ENV], capture_output=True, timeout=120).returncode


def test_state_changes_reach_a_generic_and_a_slack_receiver_with_retries_and_no_secret_logged(
        remote: GitRemote, tmp_path: Path, receiver: Receiver) -> None:
    remote.write(f"environments/{ENV}/environment.yaml", "apiVersion: gitops.ray.io/v1alpha1\nkind: Environment\n"
                 f"metadata: {{name: {ENV}}}\nspec: {{target: {{local: {{}}}}, interval: 1h}}\n")
    remote.write(f"environments/{ENV}/settings.yaml",
                 "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {v: '1'}\n")
    write_neighbours(remote, interval="1h")
    first = remote.commit("version 1")
    base = f"http://127.0.0.1:{receiver.port}"
    dead = free_port()  # nothing listens: refused at once, given up after the bounded attempts
    (tmp_path / "urls").write_text(f"# Slack's format by prefix (hooks.slack.com would pick it too)\n"
                                   f"slack+{base}/services/T0/B0/{SECRET}\n")
    state = tmp_path / "state"
    daemon = DaemonProcess(remote.url, state, tmp_path / "daemon.log", [
        "--interval", "1h", "--notify-url", f"{base}/flaky?token={SECRET}", "--notify-url",
        f"http://127.0.0.1:{dead}/hook/{SECRET}", "--notify-urls-file", str(tmp_path / "urls")])
    try:
        daemon.wait_for("version 1 promoted", lambda: len(receiver.events("/flaky", None)) >= 4, timeout=60)
        everyone = receiver.events("/flaky", None)
        assert everyone[0] == everyone[1]  # the first answer, a 500, was retried with the same message
        assert sorted(e["environment"] for e in everyone[1:]) == sorted([ENV, *NEIGHBOURS])
        promoted = receiver.events("/flaky", ENV)[-1]
        assert {k: promoted[k] for k in ("event", "environment", "sync_status", "revision", "branch")} == {
            "event": "promoted", "environment": ENV, "sync_status": "Synced", "revision": first, "branch": "main"}

        remote.write(f"environments/{ENV}/broken.yaml", "kind: [\n")
        broken = remote.commit("a file that does not parse")
        assert reconcile(state) == 1
        daemon.wait_for("failed", lambda: [e["event"] for e in receiver.events("/flaky", ENV)][-1:] == ["failed"],
                        timeout=30)
        failed = receiver.events("/flaky", ENV)[-1]
        assert failed["sync_status"] == "Failed" and failed["revision"] == first  # still on the last applied one
        assert failed["attempted"] == broken and "broken.yaml: invalid YAML" in failed["message"]

        remote.remove(f"environments/{ENV}/broken.yaml")
        fixed = remote.commit("fixed")
        assert reconcile(state) == 0
        daemon.wait_for("recovered", lambda: [e["event"] for e in receiver.events("/flaky", ENV)][-1:] == ["recovered"],
                        timeout=30)
        assert receiver.events("/flaky", ENV)[-1]["revision"] == fixed
        assert [e["event"] for e in receiver.events("/flaky", ENV)][-3:] == ["promoted", "failed", "recovered"]
        assert any(f"*{ENV}* failed at {first[:12]} (head {broken[:12]} not applied)" in text
                   for text in receiver.slack()), receiver.slack()
        assert any(f"*{ENV}* recovered at {fixed[:12]}" in text for text in receiver.slack())
        daemon.wait_for("the dead receiver given up", lambda: (daemon.metric(
            "ray_gitops_notifications_total", result="failed") or 0) >= 3, timeout=60)
        sent = daemon.metric("ray_gitops_notifications_total", result="sent")
        assert sent is not None and sent >= 2 * 5  # 3 environments promoted + failed + recovered, on two receivers
    finally:
        daemon.stop()
    log = daemon.log.read_text()
    assert SECRET not in log
    assert f"to http://127.0.0.1:{dead} failed after 3 attempt(s): ConnectionRefusedError" in log
