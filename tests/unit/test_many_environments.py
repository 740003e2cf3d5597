"""Many environments at once, on real Git and the real local target (ConfigMaps: no Ray processes):
concurrent reconciles read one immutable snapshot, odd tree entries fail only their environment,
fetch failures are visible once, and a steady state is quiet."""
from __future__ import annotations

import binascii
import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from reconciler.errors import InvalidEnvironment
from reconciler.kubeapi import RateLimiter
from reconciler.metrics import Metrics
from reconciler.pipeline.render import list_environments, render
from reconciler.pipeline.source import GitSource
from reconciler.service.config import Settings
from reconciler.service.daemon import Daemon
from tests.conftest import GitRemote
from tests.memory import MemoryTarget, pipeline
from tests.unit.test_reconcile import cluster_yaml, commit_job_environment, env_yaml

ENVIRONMENTS = [f"team-{i:02d}" for i in range(20)]


def settings_file(env: str, value: str) -> str:
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{owner: {env}, value: '{value}'}}\n"


def stored_settings(state: Path, env: str) -> dict:
    path = state / "local" / "objects" / env / "ConfigMap.default.settings.json"
    return json.loads(path.read_text())["manifest"]


def test_twenty_environments_reconciled_concurrently_each_get_only_their_own_objects(
        remote: GitRemote, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    daemon = Daemon(Settings(repo=remote.url, state_dir=state, concurrency=8), CollectorRegistry())
    for env in ENVIRONMENTS:
        remote.write(f"environments/{env}/environment.yaml", env_yaml(env))
    for round_ in range(5):
        for env in ENVIRONMENTS:
            remote.write(f"environments/{env}/settings.yaml", settings_file(env, f"{env}-round-{round_}"))
        sha = remote.commit(f"round {round_}")
        with caplog.at_level(logging.ERROR):
            assert daemon.run_once(), caplog.text

        for env in ENVIRONMENTS:
            manifest = stored_settings(state, env)
            assert manifest["data"] == {"owner": env, "value": f"{env}-round-{round_}"}, env
            assert manifest["metadata"]["labels"]["gitops.ray.io/environment"] == env
            assert manifest["metadata"]["annotations"]["gitops.ray.io/revision"] == sha
        assert sorted(p.name for p in (state / "local" / "objects").iterdir()) == ENVIRONMENTS
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert {s.environment: s.sync_status for s in daemon.ledger.states()} == dict.fromkeys(ENVIRONMENTS, "Synced")


def _git(repo: Path, *args: str, data: bytes | None = None) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], input=data, capture_output=True, check=True)
    return done.stdout.decode().strip()


def _tree(repo: Path, entries: list[tuple[str, bytes, str]]) -> str:
    """A tree object written as raw bytes, so Git's own checks cannot refuse odd names (as a push can carry)."""
    data = b"".join(mode.encode() + b" " + name + b"\0" + binascii.unhexlify(sha) for mode, name, sha in entries)
    return _git(repo, "hash-object", "-w", "-t", "tree", "--literally", "--stdin", data=data)


def commit_odd_entries(remote: GitRemote) -> str:
    """Environment `good` (a ConfigMap), and `bad` whose directory also holds a `..` entry, a directory named
    `.g<ZERO WIDTH NON-JOINER>it`, a symlink and a submodule; pushed like any commit."""
    repo = remote.work_path
    remote.write("environments/good/environment.yaml", env_yaml("good"))
    remote.write("environments/good/settings.yaml", settings_file("good", "v"))
    remote.write("environments/bad/environment.yaml", env_yaml("bad"))
    remote.write("environments/bad/settings.yaml", settings_file("bad", "v"))
    remote.commit("two environments")
    blob = _git(repo, "rev-parse", "HEAD:environments/bad/settings.yaml")
    inner = _tree(repo, [("100644", b"x.yaml", blob)])
    link = _git(repo, "hash-object", "-w", "--stdin", data=b"../good/settings.yaml")
    bad = _tree(repo, [("40000", b"..", inner), ("40000", ".g\u200cit".encode(), inner),
                       ("100644", b"environment.yaml",
                        _git(repo, "rev-parse", "HEAD:environments/bad/environment.yaml")),
                       ("120000", b"link.yaml", link), ("100644", b"settings.yaml", blob),
                       ("160000", b"vendor", _git(repo, "rev-parse", "HEAD"))])
    envs = _tree(repo, [("40000", b"bad", bad), ("40000", b"good", _git(repo, "rev-parse", "HEAD:environments/good"))])
    root = _tree(repo, [("40000", b"environments", envs)])
    commit = _git(repo, "commit-tree", root, "-p", "HEAD", "-m", "odd entries")
    _git(repo, "push", "-q", "origin", f"{commit}:refs/heads/main")
    return commit


def test_unusual_tree_entries_are_errors_of_their_environment_and_the_others_go_on(
        remote: GitRemote, tmp_path: Path) -> None:
    sha = commit_odd_entries(remote)
    daemon = Daemon(Settings(repo=remote.url, state_dir=tmp_path / "state"), CollectorRegistry())

    assert daemon.run_once() is False  # `bad` failed; the daemon itself goes on

    revision = daemon.source.fetch()
    assert revision.sha == sha and list_environments(revision.tree) == ["bad", "good"]
    with pytest.raises(InvalidEnvironment) as err:
        render(revision.tree, "bad", sha, daemon.targets)
    assert sorted(str(e) for e in err.value.errors) == [
        "environments/bad/../x.yaml: entry name '..' is not allowed",
        "environments/bad/.g\\u200cit/x.yaml: entry name '.g\\u200cit' holds invisible, control or backslash "
        "characters",
        "environments/bad/link.yaml: symbolic links are not followed",
        "environments/bad/vendor: submodules are not supported",
    ]
    states = {s.environment: s for s in daemon.ledger.states()}
    assert states["good"].sync_status == "Synced" and states["bad"].sync_status == "Failed"
    assert "symbolic links are not followed" in states["bad"].message
    assert stored_settings(tmp_path / "state", "good")["data"]["owner"] == "good"
    assert not (tmp_path / "state" / "local" / "objects" / "bad").exists()


def test_a_failing_fetch_is_logged_once_shows_stale_and_recovers(
        remote: GitRemote, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics(CollectorRegistry())
    source = GitSource(remote.url, "main", tmp_path / "cache", metrics.git_request)
    reconciler = pipeline(source, tmp_path / "state", MemoryTarget(), metrics)
    ledger = reconciler.ledger
    remote.write("environments/a/environment.yaml", env_yaml("a"))
    remote.write("environments/a/raycluster.yaml", cluster_yaml())
    sha = remote.commit("a")
    assert reconciler.reconcile("a", source.fetch()).sync_status == "Synced"
    last_success = metrics.registry.get_sample_value("ray_gitops_git_last_fetch_success_timestamp_seconds")
    assert last_success is not None and last_success > 0
    shutil.move(remote.bare_path, tmp_path / "away.git")  # the remote is unreachable

    with caplog.at_level(logging.INFO, logger="reconciler.pipeline.source"):
        revisions = [source.fetch() for _ in range(3)]
        result = reconciler.reconcile("a", revisions[-1])
        failing = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        shutil.move(tmp_path / "away.git", remote.bare_path)
        assert source.fetch().sha == sha
    recovered = reconciler.reconcile("a", source.fetch())

    assert {r.sha for r in revisions} == {sha}  # the last good revision stays
    assert len(failing) == 1 and "failed" in failing[0] and f"{sha[:12]} stays applied" in failing[0]
    assert result.sync_status == "Stale" and result.message.startswith("Stale: fetch failing since ")
    assert ledger.states()[0].sync_status == "Synced" == recovered.sync_status
    assert any("works again" in r.getMessage() for r in caplog.records)
    assert metrics.registry.get_sample_value("ray_gitops_environment_info", {
        "environment": "a", "target": "local", "revision": sha[:12], "sync_status": "Synced",
        "health_status": "Healthy"}) == 1
    assert metrics.registry.get_sample_value("ray_gitops_git_requests_total",
                                             {"request_type": "fetch", "result": "error"}) == 3


def test_a_steady_state_logs_nothing_at_info(setup_job, caplog: pytest.LogCaptureFixture) -> None:
    reconciler, revision = setup_job
    with caplog.at_level(logging.INFO):
        reconciler.reconcile("a", revision)
        first = [r.getMessage() for r in caplog.records]
        caplog.clear()
        for _ in range(3):
            reconciler.reconcile("a", revision)

    assert any("RayJob/default/count created (new run" in m for m in first)
    assert [r.getMessage() for r in caplog.records] == []


def test_a_stopping_daemon_applies_nothing_more_yet_owns_what_it_planned(setup_job) -> None:
    reconciler, revision = setup_job
    reconciler.stopping.set()

    result = reconciler.reconcile("a", revision)

    target = reconciler.targets.get(render(revision.tree, "a", revision.sha, reconciler.targets).spec)
    assert result.result == "error" and result.message == "stopping: 2 change(s) left for the next start"
    assert target.calls == []
    assert {r.name for r in reconciler.ledger.load("a").inventory} == {"demo", "count"}


@pytest.fixture
def setup_job(remote: GitRemote, tmp_path: Path):
    metrics = Metrics(CollectorRegistry())
    source = GitSource(remote.url, "main", tmp_path / "cache", metrics.git_request)
    reconciler = pipeline(source, tmp_path / "state", MemoryTarget(), metrics)
    return reconciler, commit_job_environment(remote, source)


def test_rate_limiter_allows_a_burst_then_paces_requests_at_qps() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)

    limiter = RateLimiter(qps=10, burst=3, clock=lambda: now[0], sleep=sleep)
    waits = [limiter.wait() for _ in range(5)]
    now[0] = 10.0  # a long pause refills the bucket to the burst, not beyond
    later = [limiter.wait() for _ in range(4)]

    assert waits == pytest.approx([0, 0, 0, 0.1, 0.2])
    assert later == pytest.approx([0, 0, 0, 0.1])
    assert RateLimiter(qps=0, burst=1).wait() == 0.0


def test_an_answer_that_says_when_to_come_back_is_retried_after_it_and_others_are_not(tmp_path: Path) -> None:
    import http.server
    import threading
    import time as clock

    import yaml

    from reconciler.kubeapi import RETRIES, ApiError, Kube, connect
    answers: list[tuple[int, dict[str, str]]] = []
    seen: list[float] = []

    class Server(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            seen.append(clock.monotonic())
            status, headers = answers.pop(0) if answers else (200, {})
            body = b'{"kind": "ConfigMap"}' if status == 200 else b'{"reason": "TooManyRequests", "message": "slow"}'
            self.send_response(status)
            for key, value in {**headers, "Content-Type": "application/json",
                               "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "kubeconfig").write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "here",
            "clusters": [{"name": "here", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
            "users": [{"name": "me", "user": {"token": "t"}}],
            "contexts": [{"name": "here", "context": {"cluster": "here", "user": "me"}}]}))
        kube = Kube(connect(str(tmp_path / "kubeconfig")), lambda verb: None)
        answers[:] = [(429, {"Retry-After": "1"}), (503, {"Retry-After": "0"})]
        assert kube.request("get", "GET", "/api/v1/x") == {"kind": "ConfigMap"}
        assert len(seen) == 3 and seen[1] - seen[0] >= 1
        seen.clear()
        answers[:] = [(503, {})]  # no Retry-After: final
        with pytest.raises(ApiError, match="503"):
            kube.request("get", "GET", "/api/v1/x")
        assert len(seen) == 1
        seen.clear()
        answers[:] = [(429, {"Retry-After": "0"})] * (RETRIES + 1)
        with pytest.raises(ApiError, match="429 TooManyRequests"):
            kube.request("get", "GET", "/api/v1/x")
        assert len(seen) == RETRIES + 1
    finally:
        server.shutdown()
        server.server_close()
