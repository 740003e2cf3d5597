"""Promotion gates (spec.dependsOn) on real Git and the real local target (ConfigMaps: no Ray): a change to
a shared base rolls dev -> staging -> prod, each step only once the previous is Healthy at that revision."""
from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import InvalidEnvironment
from reconciler.pipeline.render import render
from reconciler.pipeline.source import GitSource
from reconciler.targets.local.target import LocalTarget
from tests.conftest import GitRemote
from tests.memory import TARGETS, pipeline


def environment(name: str, *depends_on: str) -> str:
    deps = "".join(f"\n  - environment: {d}" for d in depends_on)
    return (f"apiVersion: gitops.ray.io/v1alpha1\nkind: Environment\nmetadata: {{name: {name}}}\nspec:\n"
            f"  target: {{local: {{}}}}\n  base: bases/app\n  dependsOn:{deps or ' []'}\n")


def settings(version: str) -> str:
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{version: '{version}'}}\n"


@pytest.fixture
def stage(remote: GitRemote, tmp_path: Path):
    state = tmp_path / "state"
    source = GitSource(remote.url, "main", tmp_path / "cache")
    remote.write("bases/app/settings.yaml", settings("1"))
    remote.write("environments/dev/environment.yaml", environment("dev"))
    remote.write("environments/staging/environment.yaml", environment("staging", "dev"))
    remote.write("environments/prod/environment.yaml", environment("prod", "staging"))
    return remote, source, pipeline(source, state, LocalTarget(state)), state


def version(state: Path, env: str) -> str:
    import json
    path = state / "local" / "objects" / env / "ConfigMap.default.settings.json"
    return json.loads(path.read_text())["manifest"]["data"]["version"] if path.exists() else ""


def test_a_base_change_rolls_dev_then_staging_then_prod_each_after_the_previous_is_healthy(stage) -> None:
    remote, source, reconciler, state = stage
    first = remote.commit("version 1")
    for env in ("dev", "staging", "prod"):  # the first revision climbs the chain the same way
        reconciler.reconcile(env, source.fetch())
    assert [version(state, e) for e in ("dev", "staging", "prod")] == ["1", "1", "1"]

    remote.write("bases/app/settings.yaml", settings("2"))
    second = remote.commit("version 2, in the shared base")
    revision = source.fetch()

    prod = reconciler.reconcile("prod", revision)
    staging = reconciler.reconcile("staging", revision)
    assert (prod.sync_status, prod.message) == ("Waiting", f"Waiting: staging not yet Healthy at {second[:12]}")
    assert (staging.sync_status, staging.message) == ("Waiting", f"Waiting: dev not yet Healthy at {second[:12]}")
    assert [version(state, e) for e in ("dev", "staging", "prod")] == ["1", "1", "1"]
    assert prod.revision == staging.revision == first  # each stays on the revision it had applied
    waiting = reconciler.metrics.registry.get_sample_value
    assert waiting("ray_gitops_promotion_waiting", {"environment": "prod", "dependency": "staging"}) == 1

    assert reconciler.reconcile("dev", revision).sync_status == "Synced"
    assert reconciler.reconcile("prod", revision).sync_status == "Waiting"  # staging is not there yet
    assert reconciler.reconcile("staging", revision).sync_status == "Synced"
    assert reconciler.reconcile("prod", revision).sync_status == "Synced"

    assert [version(state, e) for e in ("dev", "staging", "prod")] == ["2", "2", "2"]
    assert waiting("ray_gitops_promotion_waiting", {"environment": "prod", "dependency": "staging"}) == 0
    history = {env: [row[0] for row in reconciler.ledger.history(env)] for env in ("dev", "staging", "prod")}
    assert history == {env: [second, first] for env in ("dev", "staging", "prod")}


def test_a_commit_that_does_not_change_what_an_environment_renders_is_not_held(stage) -> None:
    remote, source, reconciler, state = stage
    remote.commit("version 1")
    for env in ("dev", "staging", "prod"):
        reconciler.reconcile(env, source.fetch())
    remote.write("environments/dev/notes.yaml", settings("dev only").replace("settings", "notes"))
    notes = remote.commit("a dev-only object")

    prod = reconciler.reconcile("prod", source.fetch())

    assert (prod.sync_status, prod.revision) == ("Synced", notes)


def test_a_dependency_cycle_or_an_unknown_dependency_is_an_error(stage) -> None:
    remote, source, reconciler, state = stage
    remote.write("environments/dev/environment.yaml", environment("dev", "prod"))
    remote.write("environments/qa/environment.yaml", environment("qa", "nightly"))
    remote.commit("a cycle, and a missing environment")
    revision = source.fetch()

    with pytest.raises(InvalidEnvironment) as cycle:
        render(revision.tree, "staging", revision.sha, TARGETS)
    with pytest.raises(InvalidEnvironment) as missing:
        render(revision.tree, "qa", revision.sha, TARGETS)

    assert [str(e) for e in cycle.value.errors] == [
        "environments/staging/environment.yaml: Environment/staging: spec.dependsOn: dependsOn makes a cycle: "
        "staging -> dev -> prod -> staging"]
    assert [str(e) for e in missing.value.errors] == [
        "environments/qa/environment.yaml: Environment/qa: spec.dependsOn[0].environment: no environment nightly "
        "in this revision"]
