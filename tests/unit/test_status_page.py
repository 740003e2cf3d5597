"""The status page's parts on real Git and a real pipeline (in-memory target): plans computed on the
worker and cached, last outcomes read from real history rows, the `ui` setting, the shipped files."""
from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from reconciler.commands.cli import parser
from reconciler.errors import ConfigError
from reconciler.metrics import Metrics
from reconciler.pipeline.ledger import Ledger
from reconciler.pipeline.reconcile import Pipeline, Preview
from reconciler.pipeline.source import GitSource, Revision
from reconciler.service.api import PREFIX, Api, last_outcomes
from reconciler.service.commits import Commits
from reconciler.service.config import load
from reconciler.service.plans import MIN_AGE, Plans
from reconciler.service.worker import Worker
from tests.conftest import GitRemote, write_neighbours
from tests.eventually import eventually
from tests.memory import MemoryTarget, pipeline
from tests.unit.test_local_limits import GROUP, WHY, small_cluster
from tests.unit.test_render import dump

ROOT = Path(__file__).resolve().parents[2]
UI = ROOT / "reconciler" / "service" / "ui"


class Setup:
    """Environment `a` (one ConfigMap) on real Git, its pipeline, and Plans around a counting preview."""

    def __init__(self, remote: GitRemote, tmp_path: Path, preview: Callable[[str, Revision], Preview] | None = None):
        write_neighbours(remote, ("a",))
        remote.commit("environment a")
        self.remote, self.target = remote, MemoryTarget()
        self.source = GitSource(remote.url, "main", tmp_path / "cache")
        self.pipeline: Pipeline = pipeline(self.source, tmp_path / "state", self.target, Metrics(CollectorRegistry()))
        self.head = self.source.fetch()
        self.now = 1000.0
        self.previewed: list[str] = []
        self.guard = threading.Lock()
        self.worker = Worker()
        self._preview = preview or self.pipeline.preview
        self.plans = Plans(self.worker, self.preview, lambda: self.head, lambda name: self.guard,
                           self.reconciled_at, clock=lambda: self.now)
        self.worker.start()

    def preview(self, name: str, revision: Revision) -> Preview:
        self.previewed.append(revision.sha)
        return self._preview(name, revision)

    def reconciled_at(self, name: str) -> float:
        state = self.pipeline.ledger.state(name)
        return state.updated_at if state else 0.0

    def current(self, timeout: float = 10.0):
        """Ask until the plan is current (as the page does), then return it."""
        def current() -> Any:
            plan, current = self.plans.get("a", self.reconciled_at("a"))
            return plan if current else None
        return eventually(current, timeout, 0.05, "a current plan")


@pytest.fixture
def setup(remote: GitRemote, tmp_path: Path):
    made: list[Setup] = []

    def make(preview: Callable[[str, Revision], Preview] | None = None) -> Setup:
        made.append(Setup(remote, tmp_path, preview))
        return made[-1]
    yield make
    for each in made:
        each.worker.stop()


def test_a_plan_is_computed_once_per_revision_and_again_only_after_a_reconcile(setup) -> None:
    s = setup()
    s.pipeline.reconcile("a", s.head)
    first = s.current()
    assert [i["action"] for i in first.items] == ["noop"] and s.previewed == [s.head.sha]

    for _ in range(5):  # the page asks every few seconds: the cached plan answers
        assert s.plans.get("a", s.reconciled_at("a")) == (first, True)
    s.pipeline.reconcile("a", s.head)  # a reconcile reported since, but the plan is not MIN_AGE old
    assert s.plans.get("a", s.reconciled_at("a")) == (first, True)
    time.sleep(1.5)
    assert s.previewed == [s.head.sha]

    s.now += MIN_AGE
    assert s.current().computed_at == s.now and s.previewed == [s.head.sha] * 2

    s.remote.write("environments/a/settings.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\n"
                   "data: {owner: someone-else}\n")
    s.remote.commit("a new owner")
    s.head = s.source.fetch()
    plan = s.current()
    assert plan.revision == s.head.sha and s.previewed[-1] == s.head.sha
    assert [(i["action"], i["changes"]) for i in plan.items] == [("update", ["data.owner"])]
    assert "+  owner: someone-else" in plan.items[0]["diff"]


def test_asking_for_a_plan_never_waits_for_the_preview(setup) -> None:
    release = threading.Event()
    holder: list[Setup] = []

    def slow(name: str, revision: Revision) -> Preview:
        release.wait(30)
        return holder[0].pipeline.preview(name, revision)
    s = setup(slow)
    holder.append(s)
    s.pipeline.reconcile("a", s.head)
    started = time.monotonic()
    for _ in range(20):
        assert s.plans.get("a", s.reconciled_at("a")) == (None, False)
    assert time.monotonic() - started < 0.5
    release.set()
    assert s.current().revision == s.head.sha
    assert s.previewed == [s.head.sha]  # asked 20 times while it ran: previewed once


def test_no_preview_runs_while_its_environment_reconciles(setup) -> None:
    s = setup()
    s.pipeline.reconcile("a", s.head)
    with s.guard:  # the daemon holds it around the reconcile
        s.plans.get("a", s.reconciled_at("a"))
        time.sleep(2.5)
        assert s.previewed == []
    assert s.current().revision == s.head.sha


def test_last_outcomes_name_each_object_from_the_newest_history_row(setup) -> None:
    s = setup()
    s.remote.write("environments/a/other.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\n"
                   "data: {k: v}\n")
    s.remote.commit("another ConfigMap")
    first = s.head = s.source.fetch()
    s.pipeline.reconcile("a", first)
    s.remote.write("environments/a/other.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\n"
                   "data: {k: changed}\n")
    s.remote.commit("change other")
    second = s.source.fetch()
    s.target.failing.add("other")
    s.pipeline.reconcile("a", second)

    last = last_outcomes(s.pipeline.ledger.last_changes("a"))

    assert last == {
        "ConfigMap/default/settings": {"outcome": "created", "revision": first.sha,
                                       "applied_at": pytest.approx(last["ConfigMap/default/settings"]["applied_at"])},
        "ConfigMap/default/other": {"outcome": "failed", "revision": second.sha,
                                    "applied_at": pytest.approx(last["ConfigMap/default/other"]["applied_at"])},
    }
    assert last["ConfigMap/default/other"]["applied_at"] > last["ConfigMap/default/settings"]["applied_at"]
    with sqlite3.connect(s.pipeline.ledger.path) as db:  # as a ledger from before the changes table
        db.execute("DROP TABLE changes")
    db.close()
    assert last_outcomes(Ledger(s.pipeline.ledger.path.parent).last_changes("a")) == last  # filled from history


@pytest.mark.parametrize("value,expected", [
    pytest.param("false", False, id="false"), pytest.param("0", False, id="zero"),
    pytest.param("true", True, id="true"), pytest.param("yes", True, id="yes")])
def test_the_ui_setting_comes_from_the_environment(value: str, expected: bool) -> None:
    assert load({}, {"RAY_GITOPS_UI": value}).ui is expected


def test_the_ui_is_on_by_default_and_off_with_the_flag() -> None:
    assert load({}, {}).ui is True
    assert load(vars(parser().parse_args(["run", "--ui=false"])), {"RAY_GITOPS_UI": "true"}).ui is False
    assert load(vars(parser().parse_args(["run", "--ui"])), {"RAY_GITOPS_UI": "false"}).ui is True


def test_a_boolean_setting_that_is_neither_true_nor_false_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"setting ui: expected true or false, got 'of'"):
        load({}, {"RAY_GITOPS_UI": "of"})


def test_the_page_loads_nothing_from_anywhere_else() -> None:
    texts = {p.name: p.read_text() for p in UI.iterdir()}
    assert set(texts) == {"index.html", "app.js", "style.css", "favicon.svg"}
    for name, text in texts.items():
        if name == "favicon.svg":  # its xmlns is a name, not a fetch
            text = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}|@import", text, re.I), name
    links = re.findall(r'(?:src|href)="([^"]+)"', texts["index.html"])
    assert {"/ui/favicon.svg", "/ui/style.css", "/ui/app.js"} <= set(links)
    assert all(link.startswith(("/", "#")) and not link.startswith("//") for link in links), links
    assert "innerHTML" not in texts["app.js"] and "<script>" not in texts["index.html"]  # CSP: no inline script


def test_the_page_files_and_the_workers_preload_ship_in_the_wheel(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path),
                    str(ROOT)], check=True, timeout=300, capture_output=True)
    wheel = next(tmp_path.glob("ray_gitops-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"reconciler/service/ui/{n}" for n in ("index.html", "app.js", "style.css", "favicon.svg")} <= names
    assert "reconciler/targets/local/preload/ray_gitops_loopback.py" in names  # package data, not a package


def test_a_partly_failed_reconcile_shows_what_it_applied_and_what_failed(setup) -> None:
    s = setup()
    s.remote.write("environments/a/other.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\n"
                   "data: {k: v}\n")
    s.remote.commit("another ConfigMap")
    first = s.head = s.source.fetch()
    s.pipeline.reconcile("a", first)
    s.remote.write("environments/a/settings.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\n"
                   "data: {owner: someone-else}\n")
    s.remote.write("environments/a/other.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\n"
                   "data: {k: changed}\n")
    s.remote.commit("change both")
    second = s.head = s.source.fetch()
    s.target.failing.add("other")
    assert s.pipeline.reconcile("a", second).result == "error"
    api = Api(s.pipeline.ledger, s.source, s.plans, Commits(s.worker, s.source.revision), lambda: s.head,
              list, lambda: True, dict)

    status, document = api.answer(f"{PREFIX}environments/a", {})

    assert status == 200
    last = {row["object"]: row["last_action"] for row in document["objects"]}
    assert {key: (action["outcome"], action["revision"]) for key, action in last.items()} == {
        "ConfigMap/default/settings": ("created", second.sha), "ConfigMap/default/other": ("failed", second.sha)}
    changes = s.pipeline.ledger.last_changes("a")
    assert {str(ref): (c.change.action.value, c.change.error) for ref, c in changes.items()} == {
        "ConfigMap/default/settings": ("update", ""),
        "ConfigMap/default/other": ("update", "ConfigMap/default/other update failed: refused by the target")}


def test_the_environment_api_carries_each_objects_warnings(setup) -> None:
    """A RayCluster whose `maxReplicas` the local target clamps: the page's API shows the warning on the object."""
    s = setup()
    s.remote.write("environments/a/c.yaml", dump(small_cluster(**{"spec.workerGroupSpecs.0.maxReplicas": 10**6})))
    s.remote.commit("a cluster with an autoscaler bound above the cap")
    s.head = s.source.fetch()
    assert s.pipeline.reconcile("a", s.head).result == "success"
    api = Api(s.pipeline.ledger, s.source, s.plans, Commits(s.worker, s.source.revision), lambda: s.head,
              list, lambda: True, dict)

    status, document = api.answer(f"{PREFIX}environments/a", {})

    assert status == 200
    assert {row["object"]: row["warnings"] for row in document["objects"]} == {
        "ConfigMap/default/settings": [],
        "RayCluster/default/demo": [f"spec.workerGroupSpecs[0].maxReplicas: 1000000 is above the local target's limit "
                                    f"of {GROUP} workers per group {WHY}: clamped to {GROUP} (maxReplicas only bounds "
                                    f"the autoscaler)"]}
