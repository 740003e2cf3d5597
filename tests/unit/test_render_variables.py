"""Variables and patches through `ray-gitops render` on real Git repositories: Flux's default syntax, quoted
values that stay strings, every undefined variable reported, errors named on the patch that set the field,
and ConfigMap/Secret values that must be strings."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.commands.cli import main
from tests.conftest import GitRemote

TESTDATA = Path(__file__).resolve().parents[1] / "testdata"


def environment(**spec: Any) -> str:
    return yaml.safe_dump({"apiVersion": "gitops.ray.io/v1alpha1", "kind": "Environment", "metadata": {"name": "e"},
                           "spec": {"target": {"local": {}}, **spec}})


def render(remote: GitRemote, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[Any], str]:
    """Exit code, the rendered documents and stderr of `render` at the branch head."""
    code = main(["render", "--repo", remote.url, "--environment", "e"])
    out, err = capsys.readouterr()
    return code, list(yaml.safe_load_all(out)), err


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # render's Git cache, not the user's


def test_defaults_fill_undefined_or_empty_variables_and_a_quoted_value_stays_a_string(
        remote: GitRemote, capsys: pytest.CaptureFixture[str]) -> None:
    remote.write("environments/e/environment.yaml", environment(substitute={"N": 3, "EMPTY": "", "ON": True}) + """\
  patches:
  - target: {kind: ConfigMap, name: settings}
    patch: {data: {merged: "${N}"}}
  - target: {kind: ConfigMap, name: settings}
    patch: [{op: add, path: /data/added, value: '${N}'}]
""")
    remote.write("environments/e/c.yaml",
                 (TESTDATA / "raycluster.yaml").read_text().replace("REPLICAS", "${WORKERS:=2}"))
    remote.write("environments/e/m.yaml", """apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data:
  mode: ${MODE:-slow}
  filled: ${EMPTY:=filled}
  n: "${N}"
  enabled: '${ON}'
  tagged: !!str ${N:-0}
  inline: w-${N:-9}-${EMPTY:-e}
  literal: $${N:-x}
""")
    remote.commit("defaults")

    code, docs, err = render(remote, capsys)

    assert code == 0, err
    cluster, settings = docs
    assert cluster["spec"]["workerGroupSpecs"][0]["replicas"] == 2  # a bare default is read as YAML reads it
    assert settings["data"] == {"mode": "slow", "filled": "filled", "n": "3", "enabled": "true", "tagged": "3",
                                "inline": "w-3-e", "literal": "${N:-x}", "merged": "3", "added": "3"}


def test_defaults_without_a_colon_fill_only_undefined_variables(remote: GitRemote,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    remote.write("environments/e/environment.yaml", environment(substitute={"N": 3, "EMPTY": ""}))
    remote.write("environments/e/c.yaml",
                 (TESTDATA / "raycluster.yaml").read_text().replace("REPLICAS", "${WORKERS=2}"))
    remote.write("environments/e/m.yaml", """apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data:
  mode: ${MODE-slow}
  speed: ${SPEED=fast}
  empty: ${EMPTY-unused}
  assigned: ${EMPTY=unused}
  n: '${N-0}'
  inline: w-${EMPTY-e}-${EMPTY:-f}-${NONE-g}
  literal: $${N-x}
""")
    remote.commit("colon-less defaults")

    code, docs, err = render(remote, capsys)

    assert code == 0, err
    cluster, settings = docs
    assert cluster["spec"]["workerGroupSpecs"][0]["replicas"] == 2
    assert settings["data"] == {"mode": "slow", "speed": "fast", "empty": "", "assigned": "", "n": "3",
                                "inline": "w--f-g", "literal": "${N-x}"}


def test_a_variable_in_a_default_is_an_error_naming_the_file_object_and_field(
        remote: GitRemote, capsys: pytest.CaptureFixture[str]) -> None:
    remote.write("environments/e/environment.yaml", environment(substitute={"N": 3, "X": "x"}))
    remote.write("environments/e/m.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\n"
                 "data: {defined: '${N:-${X}}', undefined: 'a-${M=${X}}', fine: '${N}'}\n")
    remote.commit("nested")

    code, docs, err = render(remote, capsys)

    assert (code, docs) == (1, [])
    assert err.splitlines()[1:] == [
        "  environments/e/m.yaml#0: ConfigMap/default/settings: data.defined: ${N:-${...}}: a default cannot name a "
        "variable (it is literal text up to the first }); write its value",
        "  environments/e/m.yaml#0: ConfigMap/default/settings: data.undefined: ${M=${...}}: a default cannot name a "
        "variable (it is literal text up to the first }); write its value"]


def test_a_bare_whole_variable_still_takes_the_variables_type(remote: GitRemote,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    remote.write("environments/e/environment.yaml", environment(substitute={"WORKERS": 3, "AUTO": True}))
    remote.write("environments/e/c.yaml", (TESTDATA / "raycluster.yaml").read_text().replace(
        "REPLICAS", "${WORKERS}").replace("spec:\n  headGroupSpec", "spec:\n  enableInTreeAutoscaling: ${AUTO}\n"
                                          "  headGroupSpec", 1))
    remote.commit("typed")

    code, [cluster], err = render(remote, capsys)

    assert code == 0, err
    assert cluster["spec"]["workerGroupSpecs"][0]["replicas"] == 3
    assert cluster["spec"]["enableInTreeAutoscaling"] is True


def test_every_undefined_variable_of_an_object_is_reported(remote: GitRemote,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    remote.write("environments/e/environment.yaml", environment(substitute={"N": "1"}))
    remote.write("environments/e/m.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\n"
                 "data: {a: '${A}-${B}-${A}', b: '${N}', c: '${C}', d: '${D:-ok}'}\n")
    remote.commit("undefined")

    code, docs, err = render(remote, capsys)

    assert (code, docs) == (1, [])
    assert err.splitlines()[1:] == [
        "  environments/e/m.yaml#0: ConfigMap/default/settings: data.a: ${A}, ${B} are not defined in "
        "spec.substitute (write $${A} for a literal ${A}, or ${A:-default} for a default)",
        "  environments/e/m.yaml#0: ConfigMap/default/settings: data.c: ${C} is not defined in spec.substitute "
        "(write $${C} for a literal ${C}, or ${C:-default} for a default)"]


def test_an_error_in_a_field_a_patch_set_is_named_on_the_patch(remote: GitRemote,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    remote.write("bases/app/c.yaml", (TESTDATA / "raycluster.yaml").read_text().replace("REPLICAS", "1"))
    remote.write("bases/app/m.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\n"
                 "data: {mode: '${MODE}', base: 7}\n")
    remote.write("environments/e/environment.yaml", environment(base="bases/app", substitute={"MODE": "fast"}, patches=[
        {"target": {"kind": "ConfigMap", "name": "settings"}, "patch": {"data": {"extra": "${NOPE}"}}},
        {"target": {"kind": "ConfigMap", "name": "settings"}, "patch": [
            {"op": "add", "path": "/data/fine", "value": "ok"}, {"op": "add", "path": "/data/plain", "value": 3}]},
        {"target": {"kind": "RayCluster", "name": "demo"}, "patch": {"spec": {"workerGroupSpecs": [
            {"groupName": "cpu", "maxReplicas": "${MAX}"}]}}}]))
    remote.commit("patches")

    code, _, err = render(remote, capsys)

    assert code == 1
    assert err.splitlines()[1:] == [
        "  environments/e/environment.yaml: RayCluster/default/demo: spec.patches[2].patch "
        "(spec.workerGroupSpecs[0].maxReplicas): ${MAX} is not defined in spec.substitute (write $${MAX} for a "
        "literal ${MAX}, or ${MAX:-default} for a default)",
        "  environments/e/environment.yaml: ConfigMap/default/settings: spec.patches[0].patch (data.extra): "
        "${NOPE} is not defined in spec.substitute (write $${NOPE} for a literal ${NOPE}, or ${NOPE:-default} for "
        "a default)"]

    remote.write("environments/e/environment.yaml", environment(base="bases/app", substitute={
        "MODE": "fast", "NOPE": "x", "MAX": "many"}, patches=yaml.safe_load(
        (remote.work_path / "environments/e/environment.yaml").read_text())["spec"]["patches"]))
    remote.commit("defined")

    code, _, err = render(remote, capsys)

    assert code == 1
    assert err.splitlines()[1:] == [
        "  environments/e/environment.yaml: RayCluster/demo: spec.patches[2].patch "
        "(spec.workerGroupSpecs[0].maxReplicas): must be an integer >= 0, got 'many'",
        "  environments/e/environment.yaml: ConfigMap/settings: spec.patches[1].patch[1] (data.plain): must be a "
        "string (Kubernetes' type is map[string]string), got 3; quote it",
        "  bases/app/m.yaml#0: ConfigMap/settings: data.base: must be a string (Kubernetes' type is "
        "map[string]string), got 7; quote it"]


def test_configmap_and_secret_values_must_be_strings(remote: GitRemote, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    remote.write("environments/e/environment.yaml", environment())
    remote.write("environments/e/m.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\n"
                 "data: {plain: 3, fine: '3', flag: true}\n---\n"
                 "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData: {pin: 918273}\n")
    remote.commit("numbers")

    code, docs, err = render(remote, capsys)
    assert main(["validate", str(remote.work_path)]) == 1
    validated = capsys.readouterr().err

    assert (code, docs) == (1, [])
    expected = [
        "  environments/e/m.yaml#0: ConfigMap/settings: data.plain: must be a string (Kubernetes' type is "
        "map[string]string), got 3; quote it",
        "  environments/e/m.yaml#0: ConfigMap/settings: data.flag: must be a string (Kubernetes' type is "
        "map[string]string), got True; quote it",
        "  environments/e/m.yaml#1: Secret/db: stringData.pin: must be a string (Kubernetes' type is "
        "map[string]string), got int; quote it"]
    assert err.splitlines()[1:] == expected and validated.splitlines()[1:] == expected
    assert "918273" not in err + validated  # a Secret's value is never shown


def test_many_bad_fields_of_one_object_are_named_up_to_a_limit_then_counted(
        remote: GitRemote, capsys: pytest.CaptureFixture[str]) -> None:
    undefined = ", ".join(f"u{i}: '${{U{i}}}'" for i in range(60))
    numbers = ", ".join(f"n{i}: {i}" for i in range(55))
    remote.write("environments/e/environment.yaml", environment(substitute={"N": "1"}))
    remote.write("environments/e/m.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"
                 f"data: {{{undefined}}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: b}}\n"
                 f"data: {{{numbers}}}\n")
    remote.commit("many")

    code, _, err = render(remote, capsys)

    lines = err.splitlines()[1:]
    assert code == 1 and len(lines) == 102
    assert lines[49].endswith("ConfigMap/default/a: data.u49: ${U49} is not defined in spec.substitute (write "
                              "$${U49} for a literal ${U49}, or ${U49:-default} for a default)")
    assert lines[50] == "  environments/e/m.yaml#0: ConfigMap/default/a: 10 more fields name undefined variables"
    assert lines[100].endswith("ConfigMap/b: data.n49: must be a string (Kubernetes' type is map[string]string), "
                               "got 49; quote it")
    assert lines[101] == "  environments/e/m.yaml#1: ConfigMap/b: data: 5 more values are not strings"
