"""The status page's JSON API against the daemon as a subprocess: real Git, real HTTP, three environments
on the local target (ConfigMaps and a Secret: no Ray). One is Synced, one suspended with the
`suspend` command while a new Secret value waits, one Failed on an invalid file."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import git
import pytest

from tests.conftest import GitRemote, write_neighbours
from tests.statuspage import StatusDaemon

pytestmark = [pytest.mark.e2e]
FIRST_TOKEN, SECOND_TOKEN = "first-token-value-93", "second-token-value-57"  # must never be served
ENVIRONMENTS = ("alpha", "beta", "gamma")


def secret(value: str) -> str:
    return f"apiVersion: v1\nkind: Secret\nmetadata: {{name: token}}\nstringData: {{token: {value}}}\n"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, timeout=120)


class Site:
    """The daemon and what was committed."""

    def __init__(self, remote: GitRemote, state: Path, daemon: StatusDaemon, first: str, second: str) -> None:
        self.remote, self.state, self.daemon, self.first, self.second = remote, state, daemon, first, second


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("status-api")
    remote = GitRemote(root)
    write_neighbours(remote, ENVIRONMENTS)
    remote.write("environments/beta/secret.yaml", secret(FIRST_TOKEN))
    first = remote.commit("three environments")
    state = root / "state"
    daemon = StatusDaemon(remote.url, state, root / "daemon.log", ["--interval", "1s"])
    try:
        daemon.wait_for("three environments Synced", lambda: all(daemon.at(e, first) for e in ENVIRONMENTS), 60)
        held = cli("suspend", "--environment", "beta", "--state-dir", str(state), "--reason", "INC-7")
        assert held.returncode == 0, held.stderr
        remote.write("environments/alpha/settings.yaml", "apiVersion: v1\nkind: ConfigMap\n"
                     "metadata: {name: settings}\ndata: {owner: alpha-team}\n")
        remote.write("environments/beta/secret.yaml", secret(SECOND_TOKEN))
        remote.write("environments/gamma/pod.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: stray}\n")
        second = remote.commit("rotate the token, hand alpha over, add a pod")
        daemon.wait_for("alpha at the new commit, beta suspended, gamma failed", lambda: (
            daemon.at("alpha", second) and daemon.at("beta", first, "Suspended")
            and daemon.at("gamma", first, "Failed")), 60)
        yield Site(remote, state, daemon, first, second)
    finally:
        daemon.stop()


def test_environments_shows_each_with_its_commit_sync_reason_and_health(site: Site) -> None:
    doc = site.daemon.api("/environments")
    rows = {row["environment"]: row for row in doc["environments"]}
    alpha, beta, gamma = (rows[e] for e in ENVIRONMENTS)

    assert sorted(rows) == list(ENVIRONMENTS) and doc["leading"] is True  # no leader election: it leads
    assert doc["source"]["head"]["sha"] == site.second and doc["source"]["branch"] == "main"
    assert doc["source"]["fetch_failure"] is None and doc["source"]["unverified"] is None
    assert (alpha["sync_status"], alpha["reason"], alpha["health_status"], alpha["target"]) == (
        "Synced", "", "Healthy", "local")
    assert alpha["commit"] == {"sha": site.second, "short": site.second[:12], "author": "Test",
                               "subject": "rotate the token, hand alpha over, add a pod",
                               "commit_time": alpha["commit"]["commit_time"]}
    assert abs(alpha["commit"]["commit_time"] - time.time()) < 120
    assert time.time() - alpha["updated_at"] < 10
    assert (beta["sync_status"], beta["reason"], beta["revision"]) == (
        "Suspended", f"suspended by `ray-gitops suspend`: INC-7 (head {site.second[:12]})", site.first)
    assert gamma["sync_status"] == "Failed" and gamma["commit"]["subject"] == "three environments"
    assert gamma["reason"].startswith(f"revision {site.second[:12]}: invalid environment: "
                                      "environments/gamma/pod.yaml#0: Pod/stray: kind: unsupported object v1/Pod")

    status = json.loads(cli("status", "--state-dir", str(site.state), "-o", "json").stdout)
    same = ("environment", "target", "revision", "sync_status", "health_status")
    assert [{k: s[k] for k in same} for s in status] == [{k: rows[s["environment"]][k] for k in same} for s in status]
    assert set(status[0]) < set(alpha)  # the `status -o json` row, and more


def test_an_environment_lists_its_objects_with_health_last_action_and_pending_action(site: Site) -> None:
    site.daemon.plan("beta")
    doc = site.daemon.api("/environments/beta")
    objects = {o["object"]: o for o in doc["objects"]}

    assert doc["sync_status"] == "Suspended" and doc["environment"] == "beta"
    assert doc["leading"] is True and doc["source"]["head"]["sha"] == site.second  # the page's header
    assert list(objects) == ["ConfigMap/default/settings", "Secret/default/token"]
    for name, pending in (("ConfigMap/default/settings", "noop"), ("Secret/default/token", "update")):
        assert (objects[name]["health"], objects[name]["health_message"]) == (  # suspended: not looked at
            "Unknown", "no health reported by the last reconcile")
        assert objects[name]["last_action"]["outcome"] == "created"
        assert objects[name]["last_action"]["revision"] == site.first
        assert objects[name]["pending"] == pending


def test_objects_carry_the_health_the_last_reconcile_saw(site: Site) -> None:
    site.daemon.plan("alpha")
    objects = {o["object"]: o for o in site.daemon.api("/environments/alpha")["objects"]}

    assert objects and all((o["health"], o["health_message"], o["pending"]) == ("Healthy", "exists", "noop")
                           for o in objects.values()), objects
    assert objects["ConfigMap/default/settings"]["last_action"]["revision"] == site.second


def test_the_plan_is_what_diff_prints_and_hides_secret_values(site: Site) -> None:
    plan = site.daemon.plan("beta")
    for _ in range(3):  # `diff` fetches into the daemon's Git cache: a fetch at that moment may clash
        diff = cli("diff", "--repo", site.remote.url, "--environment", "beta", "--state-dir", str(site.state),
                   "-o", "json")
        if diff.returncode == 1:
            break
        time.sleep(1)
    assert diff.returncode == 1, diff.stderr

    assert plan["revision"] == site.second and plan["error"] == ""
    assert plan["items"] == json.loads(diff.stdout)["items"]
    [item] = plan["items"]
    assert (item["object"], item["action"], item["changes"]) == ("Secret/default/token", "update", ["stringData.token"])
    assert "-  token: hmac-sha256:" in item["diff"] and "+  token: hmac-sha256:" in item["diff"]
    served = b"".join(site.daemon.get(path)[2] for path in (
        "/", "/api/v1/environments", *(f"/api/v1/environments/{e}{view}" for e in ENVIRONMENTS
                                       for view in ("", "/plan", "/history", "/runs"))))
    assert FIRST_TOKEN.encode() not in served and SECOND_TOKEN.encode() not in served


def test_a_plan_is_computed_once_and_then_served_from_the_cache(site: Site) -> None:
    plan = site.daemon.plan("alpha")
    time.sleep(1.5)  # alpha reconciles every second meanwhile: a plan is kept for 10 s at least

    again = site.daemon.api("/environments/alpha/plan")

    assert (again["status"], again["computed_at"]) == ("ready", plan["computed_at"])
    assert plan["items"] == []  # nothing to do: the no-op items are left out, as `diff -o json` does


def test_a_failed_environment_plan_says_why(site: Site) -> None:
    plan = site.daemon.plan("gamma")

    assert plan["items"] == [] and plan["revision"] == site.second
    assert plan["error"].startswith("environment gamma: 1 validation error(s)\n  environments/gamma/pod.yaml#0")


def test_history_rows_carry_their_commit_and_a_rollback_command(site: Site) -> None:
    history = site.daemon.api("/environments/alpha/history")
    newest, older = history["items"][0], history["items"][-1]

    assert history["applied"] == site.second
    assert (newest["revision"], newest["result"], newest["rollback"]) == (site.second, "success", None)
    assert newest["commit"]["subject"] == "rotate the token, hand alpha over, add a pod"
    assert older["revision"] == site.first and older["summary"] == "ConfigMap/default/settings created"
    assert older["rollback"] == f"ray-gitops rollback --repo . --environment alpha --to {site.first}"
    assert set(json.loads(cli("history", "--environment", "alpha", "--state-dir", str(site.state), "-o",
                              "json").stdout)[0]) < set(newest)
    assert site.daemon.api("/environments/alpha/history?limit=1")["items"] == [newest]
    assert site.daemon.api("/environments/alpha/runs") == {"environment": "alpha", "items": []}


@pytest.mark.parametrize("method,path,status", [
    pytest.param("GET", "/api/v1/environments/nope", 404, id="unknown-environment"),
    pytest.param("GET", "/api/v1/environments/Bad..Name/plan", 404, id="not-a-name"),
    pytest.param("GET", "/api/v1/environments/alpha/history?limit=0", 400, id="limit-too-small"),
    pytest.param("GET", "/api/v1/environments/alpha/runs?limit=x", 400, id="limit-not-a-number"),
    pytest.param("GET", "/api/v1/nothing", 404, id="unknown-api-path"),
    pytest.param("GET", "/ui/../api/v1/environments", 404, id="dot-dot"),
    pytest.param("GET", "/environments/alpha/extra", 404, id="page-below-an-environment"),
    pytest.param("POST", "/api/v1/environments", 405, id="post"),
    pytest.param("DELETE", "/api/v1/environments/alpha", 405, id="delete"),
    pytest.param("PUT", "/", 405, id="put-page"),
])
def test_the_api_is_read_only_and_answers_bad_requests_plainly(site: Site, method: str, path: str,
                                                               status: int) -> None:
    code, headers, body = site.daemon.get(path, method=method)

    assert code == status, body
    if code == 405:
        assert headers["allow"] == "GET"
    elif path.startswith("/api/v1/") and "/.." not in path:
        assert set(json.loads(body)) == {"error"}


def test_the_page_is_served_from_the_package_with_its_own_headers(site: Site) -> None:
    for path in ("/", "/environments/beta"):
        code, headers, body = site.daemon.get(path)
        assert code == 200 and headers["content-type"] == "text/html; charset=utf-8" and b"/ui/app.js" in body
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    code, headers, body = site.daemon.get("/ui/app.js")
    assert (code, headers["content-type"]) == (200, "text/javascript; charset=utf-8")
    assert body == (Path(__file__).parents[2] / "reconciler/service/ui/app.js").read_bytes()

    tag = headers["etag"]
    assert site.daemon.get("/ui/app.js", {"If-None-Match": tag})[:3:2] == (304, b"")
    code, headers, _ = site.daemon.get("/api/v1/environments/alpha/runs")
    assert site.daemon.get("/api/v1/environments/alpha/runs", {"If-None-Match": headers["etag"]})[0] == 304
    assert site.daemon.get("/metrics")[0] == 200  # the server's own routes are unchanged


def test_a_rollback_command_from_the_history_rolls_the_environment_back(remote: GitRemote, tmp_path: Path) -> None:
    write_neighbours(remote, ("alpha", "beta", "gamma"))
    first = remote.commit("three environments")
    daemon = StatusDaemon(remote.url, tmp_path / "state", tmp_path / "daemon.log", ["--interval", "1s"])
    try:
        daemon.wait_for("alpha at the first commit", lambda: daemon.at("alpha", first), 60)
        remote.write("environments/alpha/settings.yaml", "apiVersion: v1\nkind: ConfigMap\n"
                     "metadata: {name: settings}\ndata: {owner: somebody}\n")
        second = remote.commit("alpha: a new owner")
        daemon.wait_for("alpha at the second commit", lambda: daemon.at("alpha", second), 30)
        [command] = [row["rollback"] for row in daemon.api("/environments/alpha/history")["items"]
                     if row["revision"] == first]
        clone = git.Repo.clone_from(remote.url, tmp_path / "clone")
        with clone.config_writer() as cfg:
            cfg.set_value("user", "name", "On Call").set_value("user", "email", "oncall@example.invalid")
        words = shlex.split(command)
        assert words[:2] == ["ray-gitops", "rollback"]
        done = subprocess.run([sys.executable, "-m", "reconciler", *words[1:], "--push"], cwd=clone.working_dir,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        reverted = clone.head.commit.hexsha

        daemon.wait_for("alpha at the revert", lambda: daemon.at("alpha", reverted), 30)
        row = daemon.environment("alpha")
        assert row is not None and row["commit"]["subject"] == 'Revert "alpha: a new owner"'
        assert row["commit"]["author"] == "On Call"
        history = daemon.api("/environments/alpha/history")["items"]
        assert history[0]["revision"] == reverted and history[0]["summary"] == "ConfigMap/default/settings configured"
        assert history[1]["rollback"] == f"ray-gitops rollback --repo . --environment alpha --to {second}"
    finally:
        daemon.stop()


def test_ui_false_turns_the_page_and_its_api_off(remote: GitRemote, tmp_path: Path) -> None:
    write_neighbours(remote, ("alpha", "beta", "gamma"))
    first = remote.commit("three environments")
    daemon = StatusDaemon(remote.url, tmp_path / "state", tmp_path / "daemon.log", ["--interval", "1s", "--ui=false"])
    try:
        daemon.wait_for("alpha reconciled", lambda: daemon.metric(
            "ray_gitops_environment_info", environment="alpha", target="local", revision=first[:12],
            sync_status="Synced", health_status="Healthy") == 1, 60)
        answers: dict[str, Any] = {path: daemon.get(path)[0] for path in (
            "/", "/environments/alpha", "/ui/app.js", "/api/v1/environments", "/api/v1/environments/alpha/plan")}
        assert answers == dict.fromkeys(answers, 404)
        assert daemon.get("/healthz")[0] == 200
    finally:
        daemon.stop()
