"""Git decides, at the edges: an environment removed from Git is pruned (behind a guard), a restart keeps the
last verified revision, `run --once` follows a dependsOn chain, and a look changes nothing. Real Git, the
in-memory target (and the local target's records, no Ray)."""
from __future__ import annotations

import copy
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from reconciler.metrics import Metrics
from reconciler.model import Action, LiveObject, ObjectRef, Outcome, RenderedEnvironment
from reconciler.pipeline import planner
from reconciler.pipeline.ledger import Applied, Change, Ledger
from reconciler.pipeline.source import MAX_FILE_BYTES, GitSource
from reconciler.pipeline.target import Observation
from reconciler.service.api import PREFIX, Api
from reconciler.service.commits import Commits
from reconciler.service.config import Settings
from reconciler.service.daemon import Daemon, waves
from reconciler.service.plans import Plans
from reconciler.service.worker import Worker
from tests.conftest import GitRemote, state_files
from tests.eventually import eventually
from tests.memory import MemoryTarget, pipeline

TESTDATA = Path(__file__).parent.parent / "testdata"


def env_yaml(name: str, extra: str = "", depends_on: tuple[str, ...] = ()) -> str:
    text = (TESTDATA / "environment-local.yaml").read_text().replace("name: e2e", f"name: {name}") + extra
    return text + ("  dependsOn:\n" + "".join(f"  - environment: {d}\n" for d in depends_on) if depends_on else "")


def cluster_yaml(name: str = "demo") -> str:
    return (TESTDATA / "raycluster.yaml").read_text().replace("REPLICAS", "1").replace("name: demo", f"name: {name}")


def configmap(name: str) -> str:
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{k: v}}\n"


@pytest.fixture
def setup(remote: GitRemote, tmp_path: Path):
    target = MemoryTarget()
    metrics = Metrics(CollectorRegistry())
    source = GitSource(remote.url, "main", tmp_path / "cache", metrics.git_request)
    return remote, source, target, metrics, pipeline(source, tmp_path / "state", target, metrics)


def two_environments(remote: GitRemote, source: GitSource, reconciler, extra: str = ""):
    for env in ("a", "b"):
        remote.write(f"environments/{env}/environment.yaml", env_yaml(env, extra))
        remote.write(f"environments/{env}/raycluster.yaml", cluster_yaml(f"{env}-demo"))
        remote.write(f"environments/{env}/settings.yaml", configmap(f"{env}-settings"))
    remote.commit("a and b")
    revision = source.fetch()
    for env in ("a", "b"):
        assert reconciler.reconcile(env, revision).sync_status == "Synced"


@pytest.mark.parametrize("known, vanished, fraction, refused", [
    pytest.param({"a", "b"}, {"b"}, 0.5, "", id="one-of-two"),
    pytest.param({"a", "b", "c", "d"}, {"c", "d"}, 0.5, "", id="half"),
    pytest.param({"a", "b", "c", "d"}, {"b", "c", "d"}, 0.5, "3 of 4 environments left Git at once", id="most"),
    pytest.param({"a"}, {"a"}, 0.5, "every environment (1) left Git at once", id="the-only-one"),
    pytest.param({"a", "b"}, {"a", "b"}, 0.9, "every environment (2) left Git at once", id="all"),
    pytest.param({"a"}, {"a"}, 1.0, "", id="guard-off"),
    pytest.param({"a", "b", "c"}, set(), 0.5, "", id="nothing"),
])
def test_the_removal_guard_refuses_most_or_all_environments_at_once(known: set[str], vanished: set[str],
                                                                    fraction: float, refused: str) -> None:
    assert planner.removal_refused(known, vanished, fraction).startswith(refused)
    assert bool(planner.removal_refused(known, vanished, fraction)) == bool(refused)


def test_an_environment_removed_from_git_has_what_it_applied_pruned_and_reports_removed(setup) -> None:
    remote, source, target, metrics, reconciler = setup
    two_environments(remote, source, reconciler)
    remote.write("environments/b/job.yaml", (TESTDATA / "rayjob.yaml").read_text().replace(
        "name: count", "name: b-count").replace("ray.io/cluster: demo", "ray.io/cluster: b-demo"))
    remote.commit("b runs a RayJob")
    assert reconciler.reconcile("b", source.fetch()).sync_status == "Synced"
    target.saved["b"] = target.saved["b"]  # its copy of the ledger exists
    remote.repo.git.rm("-r", "-q", "environments/b")
    gone = remote.commit("b leaves")

    result = reconciler.remove("b", source.fetch())

    assert (result.sync_status, result.message) == (
        "Removed", f"removed from Git at {gone[:12]}: 3 object(s) pruned")
    assert sorted(ref.name for ref in target.objects) == ["a-demo", "a-settings"]
    assert {("delete", name) for name in ("b-demo", "b-settings", "b-count")} <= set(target.calls)
    state = reconciler.ledger.state("b")
    assert (state.sync_status, state.revision) == ("Removed", gone)
    assert reconciler.ledger.history("b")[0][:1] + reconciler.ledger.history("b")[0][3:4] == (gone, "removed")
    assert reconciler.ledger.load("b").inventory == frozenset() and "b" not in target.saved
    samples = [s for family in metrics.registry.collect() for s in family.samples
               if s.labels.get("environment") == "b"]
    assert samples == []  # its series went; a's stay
    assert metrics.registry.get_sample_value("ray_gitops_reconcile_total", {"environment": "a", "result": "success"})
    api = Api(reconciler.ledger, source, Plans(Worker(), reconciler.preview, lambda: None, lambda _: threading.Lock(),
                                               lambda _: 0.0),
              Commits(Worker(), source.revision), lambda: None, list, lambda: True, dict)
    status, document = api.answer(f"{PREFIX}environments", {})
    assert status == 200 and {(row["environment"], row["sync_status"], row["revision"])
                              for row in document["environments"]} >= {("b", "Removed", gone)}


def test_prune_false_at_its_last_revision_keeps_the_objects_and_says_so(setup) -> None:
    remote, source, target, metrics, reconciler = setup
    two_environments(remote, source, reconciler)
    remote.write("environments/b/environment.yaml", env_yaml("b").replace("prune: true", "prune: false"))
    remote.commit("b keeps its objects")
    assert reconciler.reconcile("b", source.fetch()).sync_status == "Synced"
    remote.repo.git.rm("-r", "-q", "environments/b")
    remote.commit("b leaves")

    result = reconciler.remove("b", source.fetch())

    assert result.sync_status == "Removed"
    assert result.message.endswith("no object to prune; 2 kept: not in Git; prune is disabled for this environment")
    assert {ref.name for ref in target.objects} == {"a-demo", "a-settings", "b-demo", "b-settings"}


def test_an_environment_suspended_in_git_at_its_last_revision_is_not_removed(setup) -> None:
    remote, source, target, metrics, reconciler = setup
    two_environments(remote, source, reconciler)
    remote.write("environments/b/environment.yaml", env_yaml("b", "  suspend: true\n"))
    remote.commit("b suspended")
    reconciler.reconcile("b", source.fetch())
    remote.repo.git.rm("-r", "-q", "environments/b")
    remote.commit("b leaves")
    calls = len(target.calls)

    result = reconciler.remove("b", source.fetch())

    assert result.sync_status == "Suspended" and "nothing is pruned" in reconciler.ledger.state("b").message
    assert len(target.calls) == calls


def test_ray_gitops_suspend_holds_a_removal(setup) -> None:
    remote, source, target, metrics, reconciler = setup
    two_environments(remote, source, reconciler)
    reconciler.ledger.suspend("b", "incident")  # what `ray-gitops suspend --environment b` records
    remote.repo.git.rm("-r", "-q", "environments/b")
    remote.commit("b leaves")
    calls = len(target.calls)

    result = reconciler.remove("b", source.fetch())

    assert result.sync_status == "Suspended" and "suspended by `ray-gitops suspend`" in result.message
    assert reconciler.ledger.state("b").sync_status == "Suspended"
    assert len(target.calls) == calls and {"b-demo", "b-settings"} <= {ref.name for ref in target.objects}


def test_a_removal_that_cannot_prune_is_failed_and_tried_again(setup) -> None:
    remote, source, target, metrics, reconciler = setup
    two_environments(remote, source, reconciler)
    remote.repo.git.rm("-r", "-q", "environments/b")
    remote.commit("b leaves")
    target.failing.add("b-demo")

    failed = reconciler.remove("b", source.fetch())
    assert failed.sync_status == "Failed" and "pruning failed" in failed.message
    assert {ref.name for ref in reconciler.ledger.load("b").inventory} == {"b-demo"}
    target.failing.clear()
    assert reconciler.remove("b", source.fetch()).sync_status == "Removed"
    assert {ref.name for ref in target.objects} == {"a-demo", "a-settings"}


def daemon(remote: GitRemote, tmp_path: Path, target: MemoryTarget, **settings) -> Daemon:
    """A daemon whose pipeline applies to `target` (the main loop is not started: run_once or a turn)."""
    made = Daemon(Settings(repo=remote.url, state_dir=tmp_path / "daemon-state", **settings), CollectorRegistry())
    made.pipeline = pipeline(made.source, tmp_path / "daemon-state", target, made.metrics)
    made.ledger = made.pipeline.ledger
    return made


def three_applied(remote: GitRemote, tmp_path: Path, target: MemoryTarget) -> None:
    """Environments a, b and c, each with one ConfigMap, applied by `run --once`."""
    for env in ("a", "b", "c"):
        remote.write(f"environments/{env}/environment.yaml", env_yaml(env))
        remote.write(f"environments/{env}/settings.yaml", configmap(f"{env}-settings"))
    remote.commit("three")
    assert daemon(remote, tmp_path, target).run_once()


def test_run_once_removes_an_environment_that_left_git_and_the_guard_holds_a_mass_removal(
        remote: GitRemote, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = MemoryTarget()
    three_applied(remote, tmp_path, target)
    remote.repo.git.rm("-r", "-q", "environments/b", "environments/c")
    held = remote.commit("b and c leave")

    once = daemon(remote, tmp_path, target)
    assert once.run_once()
    assert {ref.name for ref in target.objects} == {"a-settings", "b-settings", "c-settings"}
    assert once.metrics.registry.get_sample_value("ray_gitops_removals_refused") == 2
    state = once.ledger.state("b")
    assert state.sync_status == "OutOfSync" and state.message.startswith(
        f"removal refused: left Git at {held[:12]}, but 2 of 3 environments left Git at once")
    assert caplog.text.count("removal refused at revision") == 1

    remote.write("environments/c/environment.yaml", env_yaml("c"))
    remote.write("environments/c/settings.yaml", configmap("c-settings"))
    remote.commit("c is back: only b leaves")
    again = daemon(remote, tmp_path, target)
    assert again.run_once()
    assert {ref.name for ref in target.objects} == {"a-settings", "c-settings"}
    assert again.metrics.registry.get_sample_value("ray_gitops_removals_refused") == 0
    assert [s.sync_status.value for s in again.ledger.states()] == ["Synced", "Removed", "Synced"]


def unreadable_environment_yaml(remote: GitRemote, case: str) -> None:
    """Make c's environment.yaml a file the revision holds but cannot read."""
    path = remote.work_path / "environments/c/environment.yaml"
    path.unlink()
    if case == "symlink":
        path.symlink_to("../a/environment.yaml")
    else:  # over MAX_FILE_BYTES
        path.write_text(env_yaml("c") + "#" + "x" * MAX_FILE_BYTES + "\n")


@pytest.mark.parametrize("case, reason", [
    pytest.param("symlink", "symbolic links are not followed", id="symlink"),
    pytest.param("oversized", "file is ", id="oversized"),
])
def test_an_environment_whose_environment_yaml_cannot_be_read_fails_and_nothing_is_pruned(
        remote: GitRemote, tmp_path: Path, case: str, reason: str) -> None:
    """Its directory is still in Git: it is broken, not removed (the daemon's turn and run --once)."""
    target = MemoryTarget()
    three_applied(remote, tmp_path, target)
    unreadable_environment_yaml(remote, case)
    remote.commit("c's environment.yaml cannot be read")
    calls = len(target.calls)

    def failed_and_nothing_pruned(looked: Daemon) -> None:
        state = looked.ledger.state("c")
        assert state.sync_status == "Failed" and f"environments/c/environment.yaml: {reason}" in state.message
        assert looked.metrics.registry.get_sample_value("ray_gitops_removals_refused") == 0
        assert {ref.name for ref in target.objects} == {"a-settings", "b-settings", "c-settings"}
        assert len(target.calls) == calls

    serving = daemon(remote, tmp_path, target)
    with ThreadPoolExecutor(2) as pool:
        serving._submit(pool, serving.source.fetch())
    failed_and_nothing_pruned(serving)
    once = daemon(remote, tmp_path, target)
    assert not once.run_once()  # c failed again
    failed_and_nothing_pruned(once)


def test_a_refused_removal_is_reported_once_until_a_revision_resolves_it(
        remote: GitRemote, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = MemoryTarget()
    three_applied(remote, tmp_path, target)
    remote.repo.git.rm("-r", "-q", "environments/b", "environments/c")
    held = remote.commit("b and c leave")
    serving = daemon(remote, tmp_path, target)

    def turn() -> None:
        with ThreadPoolExecutor(2) as pool:
            serving._submit(pool, serving.source.fetch())

    turn()
    remote.write("NOTES.md", "a commit that resolves nothing\n")
    remote.commit("notes")
    turn()
    assert caplog.text.count("removal refused at revision") == 1
    assert serving.ledger.state("b").message.startswith(f"removal refused: left Git at {held[:12]}")

    remote.write("environments/b/environment.yaml", env_yaml("b"))
    remote.commit("b is back: c alone leaves (b's removal resolved)")
    turn()
    assert {ref.name for ref in target.objects} == {"a-settings", "b-settings"}
    assert serving.metrics.registry.get_sample_value("ray_gitops_removals_refused") == 0


class SlowTarget(MemoryTarget):
    """A RayCluster becomes ready only after it was observed `after` times (Pods take a while)."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.seen = after, 0

    def observe(self, rendered: RenderedEnvironment, refs: set[ObjectRef], pending: frozenset[str]) -> Observation:
        found = super().observe(rendered, refs, pending)
        live = {}
        for ref, obj in found.live.items():
            if ref.kind == "RayCluster":
                self.seen += 1
                ready = self.seen > self.after
                obj = LiveObject(ref, copy.deepcopy(obj.manifest), {"state": "ready" if ready else "provisioning"})
            live[ref] = obj
        return Observation(live, found.runs)


def chain(remote: GitRemote) -> None:
    """dev (a RayCluster) <- staging <- prod (ConfigMaps)."""
    remote.write("environments/dev/environment.yaml", env_yaml("dev"))
    remote.write("environments/dev/raycluster.yaml", cluster_yaml())
    remote.write("environments/staging/environment.yaml", env_yaml("staging", depends_on=("dev",)))
    remote.write("environments/staging/settings.yaml", configmap("staging"))
    remote.write("environments/prod/environment.yaml", env_yaml("prod", depends_on=("staging",)))
    remote.write("environments/prod/settings.yaml", configmap("prod"))
    remote.commit("a chain")


def test_run_once_applies_a_depends_on_chain_in_order(remote: GitRemote, tmp_path: Path) -> None:
    chain(remote)
    target = SlowTarget(after=3)
    once = daemon(remote, tmp_path, target, dependency_timeout=30.0)

    assert once.run_once()
    assert [s.sync_status.value for s in once.ledger.states()] == ["Synced", "Synced", "Synced"]
    creates = [name for action, name in target.calls if action == "create"]
    assert creates == ["demo", "staging", "prod"]


def test_run_once_exits_1_when_a_link_is_still_waiting(remote: GitRemote, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    chain(remote)
    once = daemon(remote, tmp_path, SlowTarget(after=1000), dependency_timeout=3.0)

    assert not once.run_once()
    assert {s.environment: s.sync_status.value for s in once.ledger.states()} == {
        "dev": "Synced", "staging": "Waiting", "prod": "Waiting"}
    assert "staging, prod still waiting for a dependency after 3 s" in caplog.text


def test_a_dependency_that_is_not_selected_is_an_error_not_a_wait(remote: GitRemote, tmp_path: Path) -> None:
    from reconciler.errors import ConfigError
    chain(remote)
    once = daemon(remote, tmp_path, MemoryTarget(), environments=("prod",))
    with pytest.raises(ConfigError, match="environment prod depends on staging, which is not selected"):
        once.run_once()

    serving = daemon(remote, tmp_path, MemoryTarget(), environments=("prod",))
    serving.pipeline.scope = frozenset({"prod"})
    result = serving.pipeline.reconcile("prod", serving.source.fetch())
    assert result.sync_status == "Failed" and "depends on staging, which this daemon does not reconcile" in \
        result.message


def test_a_dependency_that_does_not_exist_is_an_error_that_says_so(remote: GitRemote, tmp_path: Path) -> None:
    from reconciler.errors import ConfigError
    remote.write("environments/prod/environment.yaml", env_yaml("prod", depends_on=("staging",)))
    remote.write("environments/prod/settings.yaml", configmap("prod"))
    remote.commit("prod depends on staging, which is not there")
    once = daemon(remote, tmp_path, MemoryTarget())
    with pytest.raises(ConfigError, match="environment prod depends on staging, which does not exist under "
                                          "environments/ at revision [0-9a-f]{12}$"):
        once.run_once()

    remote.write("environments/staging/environment.yml", env_yaml("staging"))  # not environment.yaml
    remote.commit("staging, misnamed")
    with pytest.raises(ConfigError, match="environment prod depends on staging, which has no readable "
                                          "environments/staging/environment.yaml at revision"):
        daemon(remote, tmp_path, MemoryTarget()).run_once()


def test_waves_put_each_environment_after_its_dependencies() -> None:
    assert waves({"prod": ("staging",), "staging": ("dev",), "dev": (), "other": ()}) == [
        ["dev", "other"], ["staging"], ["prod"]]
    assert waves({"a": ("b",), "b": ("a",)}) == [["a", "b"]]  # a cycle (validation reports it) goes last


def test_a_read_only_ledger_creates_nothing_and_reads_as_empty(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    ledger = Ledger(missing, readonly=True)
    assert ledger.states() == [] and ledger.history("a") == [] and ledger.load("a").inventory == frozenset()
    assert not missing.exists()

    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "ledger.sqlite3").touch()  # a daemon starting: the file is there, its tables not yet
    starting = Ledger(tmp_path / "state", readonly=True)
    assert starting.states() == []
    writer = Ledger(tmp_path / "state")  # kept open: a connection closed by the garbage collector checkpoints
    writer.suspend("a", "incident")
    data = ("ledger.sqlite3", "ledger.sqlite3-wal")  # the database; -shm is SQLite's index of readers
    before = {p.name: p.read_bytes() for p in (tmp_path / "state").iterdir() if p.name in data}
    looked = Ledger(tmp_path / "state", readonly=True)
    assert looked.load("a").suspended == "incident"
    assert starting.load("a").suspended == "incident"  # the empty look was not kept
    with pytest.raises(Exception, match="readonly"):
        looked.suspend("b")
    assert {p.name: p.read_bytes() for p in (tmp_path / "state").iterdir() if p.name in data} == before


def test_a_ledger_from_before_the_changes_table_reads_as_no_changes_until_a_daemon_fills_it(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    with sqlite3.connect(tmp_path / "state" / "ledger.sqlite3") as old:  # the tables a 0.x daemon made
        old.executescript("CREATE TABLE revisions (id INTEGER PRIMARY KEY AUTOINCREMENT, env TEXT, revision TEXT, "
                          "commit_time REAL, applied_at REAL, result TEXT, summary TEXT, signer TEXT);"
                          "CREATE TABLE environments (env TEXT PRIMARY KEY, target TEXT, revision TEXT, sync_status "
                          "TEXT, health_status TEXT, message TEXT, updated_at REAL, detail TEXT);"
                          "INSERT INTO revisions VALUES (1, 'a', 'abc', 1.0, 2.0, 'success', "
                          "'ConfigMap/default/x created', '');")
    old.close()
    looked = Ledger(tmp_path / "state", readonly=True)
    assert looked.last_changes("a") == {} and [row.revision for row in looked.history("a")] == ["abc"]

    writer = Ledger(tmp_path / "state")  # adds the table, filled from the history rows' summaries
    ref = ObjectRef("", "ConfigMap", "default", "x")
    last = looked.last_changes("a")[ref]
    assert (last.change, last.revision, last.applied_at) == (Change(ref, Action.CREATE, Outcome.CREATED), "abc", 2.0)
    writer.commit("a", applied=Applied("def", 3.0, "error", "x failed", changes=(
        Change(ref, Action.UPDATE, Outcome.FAILED, "refused"),)))
    last = looked.last_changes("a")[ref]
    assert (last.change, last.revision) == (Change(ref, Action.UPDATE, Outcome.FAILED, "refused"), "def")
    writer.close()
    looked.close()


def test_two_environments_naming_one_object_both_report_the_conflict_and_nothing_flips(setup) -> None:
    remote, source, target, metrics, reconciler = setup
    for env, replicas in (("a", "1"), ("b", "3")):
        remote.write(f"environments/{env}/environment.yaml", env_yaml(env))
        remote.write(f"environments/{env}/raycluster.yaml", cluster_yaml("shared").replace("replicas: 1",
                                                                                           f"replicas: {replicas}"))
    remote.commit("a and b both name RayCluster shared")
    revision = source.fetch()

    for _ in range(3):
        a, b = reconciler.reconcile("a", revision), reconciler.reconcile("b", revision)
        cluster = target.objects[ObjectRef("ray.io", "RayCluster", "default", "shared")]
        assert cluster.labels["gitops.ray.io/environment"] == "a"
        assert cluster.manifest["spec"]["workerGroupSpecs"][0]["replicas"] == 1
    assert (b.result, b.sync_status) == ("error", "Failed")
    assert "RayCluster/default/shared belongs to environment a (one object, one environment)" in b.message
    assert a.sync_status == "OutOfSync"
    assert a.message == ("RayCluster/default/shared is also in environment b (one object, one environment: b does "
                         "not apply it)")
    assert [c for c in target.calls if c[1] == "shared"] == [("create", "shared")]
    assert reconciler.ledger.load("b").inventory == frozenset()  # b never owns it: its prune can never touch it


def test_a_hand_edit_is_set_back_counted_and_reported_with_who_made_it(setup) -> None:
    remote, source, target, metrics, reconciler = setup
    remote.write("environments/a/environment.yaml", env_yaml("a"))
    remote.write("environments/a/raycluster.yaml", cluster_yaml())
    remote.commit("a")
    revision = source.fetch()
    reconciler.reconcile("a", revision)
    ref = ObjectRef("ray.io", "RayCluster", "default", "demo")
    edited = copy.deepcopy(target.objects[ref].manifest)
    edited["spec"]["workerGroupSpecs"][0]["replicas"] = 4
    edited["metadata"]["managedFields"] = [{"manager": "kubectl-edit", "operation": "Update",
                                            "time": "2026-12-04T10:00:00Z",
                                            "fieldsV1": {"f:spec": {"f:workerGroupSpecs": {}}}}]
    target.objects[ref] = LiveObject(ref, edited, target.objects[ref].status)

    result = reconciler.reconcile("a", revision)

    assert result.sync_status == "Synced"
    assert target.objects[ref].manifest["spec"]["workerGroupSpecs"][0]["replicas"] == 1
    assert metrics.registry.get_sample_value("ray_gitops_drift_corrections_total",
                                             {"environment": "a", "kind": "RayCluster"}) == 1
    assert target.events[-1] == ("demo", "DriftCorrected", "drift corrected: spec.workerGroupSpecs[cpu].replicas set "
                                 "back to Git's value (changed by kubectl-edit)")
    assert reconciler.reconcile("a", revision).result == "noop"  # corrected once, then nothing to do


def test_a_burst_of_changes_seen_by_the_watch_forces_one_drift_check_after_the_debounce(
        remote: GitRemote, tmp_path: Path) -> None:
    from reconciler.service.daemon import DEBOUNCE
    made = daemon(remote, tmp_path, MemoryTarget())
    made._selected = ["a", "b"]
    forced: list[set[str]] = []
    made.schedule.force = lambda names: forced.append(set(names))  # type: ignore[method-assign]

    started = time.monotonic()
    for name in ("a", "a", "b", "a", "not-mine"):
        made.changed(name)
    assert forced == [] and not made.wake.is_set()  # not before DEBOUNCE

    eventually(lambda: forced, 5 * DEBOUNCE, 0.05, "the drift check to be forced")
    assert time.monotonic() - started >= DEBOUNCE and made.wake.is_set()
    time.sleep(DEBOUNCE / 2)
    assert forced == [{"a", "b"}]  # one check for the burst, of this daemon's environments only


@pytest.mark.parametrize("annotations, live_annotations, action, reason", [
    pytest.param({"gitops.ray.io/reconcile": "disabled"}, {}, "skip",
                 "gitops.ray.io/reconcile: disabled on Git: left alone", id="disabled-in-git"),
    pytest.param({}, {"gitops.ray.io/reconcile": "disabled"}, "skip",
                 "gitops.ray.io/reconcile: disabled on the live object: left alone", id="disabled-by-hand"),
    pytest.param({"gitops.ray.io/ssa": "IfNotPresent"}, {}, "noop",
                 "exists; gitops.ray.io/ssa: IfNotPresent: never updated", id="if-not-present"),
    pytest.param({}, {}, "update", "changed in place: spec.workerGroupSpecs[cpu].replicas", id="healed"),
])
def test_opt_outs_leave_an_edited_object_alone(annotations: dict, live_annotations: dict, action: str,
                                               reason: str) -> None:
    import yaml

    from reconciler.model import DesiredObject, EnvironmentSpec, TargetSpec
    from reconciler.targets.local.options import LocalOptions
    doc = yaml.safe_load(cluster_yaml())
    doc["metadata"].update(namespace="default", annotations=annotations,
                           labels={"app.kubernetes.io/managed-by": "ray-gitops", "gitops.ray.io/environment": "a"})
    desired = DesiredObject(ObjectRef.of(doc), doc, "environments/a/c.yaml", 0)
    edited = copy.deepcopy(doc)
    edited["spec"]["workerGroupSpecs"][0]["replicas"] = 4
    edited["metadata"]["annotations"] = {**annotations, **live_annotations}
    rendered = RenderedEnvironment(EnvironmentSpec("a", TargetSpec("local", LocalOptions())), (desired,))
    item, = planner.plan(rendered, {desired.ref: LiveObject(desired.ref, edited)}, frozenset({desired.ref}), {})
    assert (item.action.value, item.reason) == (action, reason)


def test_a_look_at_another_repository_leaves_the_daemons_git_cache_alone(remote: GitRemote, tmp_path: Path) -> None:
    from reconciler.commands.cli import main
    remote.write("environments/a/environment.yaml", env_yaml("a"))
    remote.write("environments/a/settings.yaml", configmap("a"))
    remote.commit("a")
    other = GitRemote(tmp_path / "other")
    other.write("environments/a/environment.yaml", env_yaml("a"))
    other.write("environments/a/settings.yaml", configmap("other"))
    other.commit("other")
    state = tmp_path / "state"
    made = Daemon(Settings(repo=remote.url, state_dir=state), CollectorRegistry())
    made.source.fetch()
    files = state_files(state)

    for command in (["plan"], ["diff"], ["render"]):
        assert main([*command, "--repo", other.url, "--environment", "a", "--state-dir", str(state)]) in (0, 1)
    assert main(["status", "--state-dir", str(state)]) == 0

    after = state_files(state)
    assert after == files
    assert [url.read_text().count(other.url) for url in (state / "git").glob("*/config")] == [0]


@pytest.mark.parametrize("pointer, expected", [
    pytest.param("/spec/suspend", {"spec": {"suspend": True, "groups": [{"n": 1}, {"n": 2}]}}, id="a-field"),
    pytest.param("/spec/groups/*/n", {"spec": {"suspend": False, "groups": [{"n": 5}, {"n": 2}]}}, id="wildcard"),
    pytest.param("/spec/missing", {"spec": {"suspend": False, "groups": [{"n": 1}, {"n": 2}]}}, id="absent"),
])
def test_an_ignored_field_keeps_its_live_value_in_the_apply_body(pointer: str, expected: dict) -> None:
    from reconciler.targets.kubernetes.body import keep_live
    body = {"spec": {"suspend": False, "groups": [{"n": 1}, {"n": 2}]}}
    keep_live(body, {"spec": {"suspend": True, "groups": [{"n": 5}]}}, pointer)
    assert body == expected


def test_who_changed_a_field_comes_from_managed_fields() -> None:
    from reconciler.pipeline.diff import changed_by

    def entry(manager: str, fields: dict[str, Any], **extra: str) -> dict[str, Any]:
        return {"manager": manager, "operation": "Update", "fieldsV1": fields, **extra}
    live = {"metadata": {"managedFields": [
        entry("ray-gitops", {"f:spec": {"f:workerGroupSpecs": {}}}, time="2026-12-04T10:00:00Z"),
        entry("kubectl-edit", {"f:spec": {"f:workerGroupSpecs": {}}}, time="2026-12-04T11:00:00Z"),
        entry("kubectl-label", {"f:metadata": {"f:labels": {"f:app.kubernetes.io/name": {}}}}),
        entry("kuberay-operator", {"f:status": {}}, subresource="status")]}}
    assert changed_by(live, ["spec.workerGroupSpecs[cpu].replicas"]) == ["kubectl-edit"]
    assert changed_by(live, ["metadata.labels.app.kubernetes.io/name"]) == ["kubectl-label"]
    assert changed_by(live, ["status.state", "data.x"]) == [] and changed_by({}, ["spec"]) == []


def test_a_preview_and_every_api_route_write_nothing_and_run_no_cron_slot(
        remote: GitRemote, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real local target (ConfigMaps and a RayCronJob whose slot is due; no Ray): `plan`, `diff`,
    `render`, `status`, `history` and every route of the status page change no file of the state dir, and
    only a reconcile runs the cron controller's step."""
    import json
    import time
    from email.message import Message

    from reconciler.commands.cli import main
    remote.write("environments/a/environment.yaml", env_yaml("a"))
    remote.write("environments/a/settings.yaml", configmap("settings"))
    remote.write("environments/a/secret.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: token}\n"
                 "stringData: {token: s3cret}\n")
    remote.write("environments/a/nightly.yaml", "apiVersion: ray.io/v1\nkind: RayCronJob\nmetadata: {name: nightly}\n"
                 "spec:\n  schedule: '* * * * *'\n  jobTemplate:\n    entrypoint: python -c 'print(1)'\n"
                 "    clusterSelector: {ray.io/cluster: demo}\n")
    remote.commit("a")
    state = tmp_path / "state"
    made = Daemon(Settings(repo=remote.url, state_dir=state, ui=True), CollectorRegistry())
    assert made.run_once()
    cron = state / "local" / "objects" / "a" / "RayCronJob.default.nightly.json"
    record = json.loads(cron.read_text())
    cron.write_text(json.dumps({**record, "last_slot": time.time() - 130}))  # a slot is due now
    files = state_files(state)

    for command in (["plan"], ["diff"], ["render"], ["diff", "-o", "json"]):
        assert main([*command, "--repo", remote.url, "--environment", "a", "--state-dir", str(state)]) in (0, 1)
    assert main(["status", "--state-dir", str(state)]) == main(["history", "--environment", "a", "--state-dir",
                                                                str(state)]) == 0
    made.head = made.source.fetch()
    made._shown = made._selected = ["a"]
    page = made._page()
    made.worker.start()
    try:
        routes = ["/", "/environments/a", "/ui/app.js", "/api/v1/environments", "/api/v1/environments/a",
                  "/api/v1/environments/a/history", "/api/v1/environments/a/runs"]
        assert all(page.get(route, Message()).code == 200 for route in routes)
        eventually(lambda: json.loads(page.get("/api/v1/environments/a/plan", Message()).body)["status"] == "ready",
                   20, 0.1, "the plan to be computed")
    finally:
        made.worker.stop()

    after = state_files(state)
    assert after == files
    assert "scheduled run" not in capsys.readouterr().err  # the commands log to stderr
    made.pipeline.reconcile("a", made.head)
    assert "scheduled run a-nightly-" in capsys.readouterr().err  # a reconcile runs the slot (its cluster is absent)
