"""Overlays as tables: an environment's merge patches (lists merged by groupName / name), JSON patches and
`${VAR}` substitution on a shared base's RayCluster, RayJob or RayService; every error names the field (or the
operation) and never a value."""
from __future__ import annotations

import copy
from typing import Any

import pytest

from reconciler.pipeline.budgets import MAX_STRING_BYTES, Budget
from reconciler.pipeline.overlay import MAX_OPERATIONS, OverlayError, Undefined, json_patch, merge, substitute, written
from reconciler.pipeline.parse import Quoted


def container(name: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "image": "rayproject/ray:2.60.0", **more}


def group(name: str, replicas: int, **more: Any) -> dict[str, Any]:
    return {"groupName": name, "replicas": replicas, "template": {"spec": {"containers": [container("ray-worker")]}},
            **more}


def base() -> dict[str, Any]:
    """A shared base's RayCluster: a head and two worker groups."""
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "train", "labels": {"tier": "base"}},
            "spec": {"enableInTreeAutoscaling": True, "suspend": False,
                     "headGroupSpec": {"rayStartParams": {"num-cpus": "0"},
                                       "template": {"spec": {"containers": [container(
                                           "ray-head", env=[{"name": "RAY_LOG", "value": "info"}],
                                           args=["--block"])]}}},
                     "workerGroupSpecs": [group("cpu", 2), group("gpu", 0)]}}


def changed(change: Any) -> dict[str, Any]:
    """The base with `change(doc)` applied to a copy: the expected result, written as the change it is."""
    doc = base()
    change(doc)
    return doc


def head(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def _set(doc: Any, keys: tuple[Any, ...], value: Any) -> None:
    for key in keys[:-1]:
        doc = doc[key]
    doc[keys[-1]] = value


GROUPS = ("spec", "workerGroupSpecs")


@pytest.mark.parametrize(("patch", "expected"), [
    pytest.param({"spec": {"workerGroupSpecs": [{"groupName": "gpu", "replicas": 3}]}},
                 changed(lambda d: _set(d, (*GROUPS, 1, "replicas"), 3)), id="a worker group by groupName"),
    pytest.param({"spec": {"workerGroupSpecs": [{"groupName": "tpu", "replicas": 1}]}},
                 changed(lambda d: d["spec"]["workerGroupSpecs"].append({"groupName": "tpu", "replicas": 1})),
                 id="a new group is appended"),
    pytest.param({"spec": {"workerGroupSpecs": [{"groupName": "cpu", "$patch": "delete"}]}},
                 changed(lambda d: d["spec"]["workerGroupSpecs"].pop(0)), id="$patch: delete removes a group"),
    pytest.param({"spec": {"suspend": None}}, changed(lambda d: d["spec"].pop("suspend")), id="null deletes a field"),
    pytest.param({"spec": {"nope": None}}, base(), id="null of an absent field: nothing"),
    pytest.param({"metadata": {"labels": {"env": "prod"}}},
                 changed(lambda d: d["metadata"]["labels"].update(env="prod")), id="maps merge"),
    pytest.param({"spec": {"headGroupSpec": {"template": {"spec": {"containers": [
        {"name": "ray-head", "env": [{"name": "RAY_LOG", "value": "debug"}, {"name": "TZ", "value": "UTC"}]}]}}}}},
                 changed(lambda d: head(d).update(env=[{"name": "RAY_LOG", "value": "debug"},
                                                       {"name": "TZ", "value": "UTC"}])),
                 id="containers and env vars merge by name"),
    pytest.param({"spec": {"headGroupSpec": {"template": {"spec": {"containers": [
        {"name": "ray-head", "args": ["--block", "--verbose"]}]}}}}},
                 changed(lambda d: head(d).update(args=["--block", "--verbose"])),
                 id="a list without a key is replaced"),
    pytest.param({"spec": {"headGroupSpec": {"rayStartParams": "not a map"}}},
                 changed(lambda d: d["spec"]["headGroupSpec"].update(rayStartParams="not a map")),
                 id="a map replaced by a scalar"),
    pytest.param({"spec": {"workerGroupSpecs": {"groupName": "cpu"}}},
                 changed(lambda d: d["spec"].update(workerGroupSpecs={"groupName": "cpu"})),
                 id="a keyed list replaced by a map (validation says what is wrong)"),
])
def test_merge(patch: dict[str, Any], expected: dict[str, Any]) -> None:
    doc = base()
    before = copy.deepcopy(patch)
    assert merge(doc, patch, Budget()) == expected
    assert doc == expected  # in place
    assert patch == before  # the patch is copied, never shared


def test_merged_values_are_copies_of_the_patch() -> None:
    patch = {"spec": {"workerGroupSpecs": [{"groupName": "tpu", "rayStartParams": {"num-gpus": "1"}}]}}
    doc = merge(base(), patch, Budget())
    doc["spec"]["workerGroupSpecs"][2]["rayStartParams"]["num-gpus"] = "2"
    assert patch["spec"]["workerGroupSpecs"][0]["rayStartParams"] == {"num-gpus": "1"}


@pytest.mark.parametrize(("patch", "path", "reason"), [
    pytest.param({"spec": {"workerGroupSpecs": [{"replicas": 3}]}}, "spec.workerGroupSpecs[0]",
                 "items of workerGroupSpecs merge by groupName; this one has none", id="a group without groupName"),
    pytest.param({"spec": {"workerGroupSpecs": [{"groupName": "tpu", "$patch": "delete"}]}},
                 "spec.workerGroupSpecs[tpu]", "cannot delete: no such item", id="deleting a group that is not there"),
    pytest.param({"spec": {"headGroupSpec": {"template": {"spec": {"containers": ["ray-head"]}}}}},
                 "spec.headGroupSpec.template.spec.containers[0]",
                 "items of containers merge by name; this one has none", id="a container without name"),
])
def test_merge_errors_name_the_field(patch: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(OverlayError) as raised:
        merge(base(), patch, Budget())
    assert (raised.value.path, raised.value.reason, raised.value.operation) == (path, reason, None)


REPLICAS = "/spec/workerGroupSpecs/0/replicas"


@pytest.mark.parametrize(("operations", "expected"), [
    pytest.param([{"op": "replace", "path": REPLICAS, "value": 5}],
                 changed(lambda d: _set(d, (*GROUPS, 0, "replicas"), 5)), id="replace"),
    pytest.param([{"op": "add", "path": "/metadata/labels/env", "value": "prod"}],
                 changed(lambda d: d["metadata"]["labels"].update(env="prod")), id="add"),
    pytest.param([{"op": "add", "path": "/spec/workerGroupSpecs/-", "value": {"groupName": "tpu", "replicas": 1}}],
                 changed(lambda d: d["spec"]["workerGroupSpecs"].append({"groupName": "tpu", "replicas": 1})),
                 id="add at the end of a list"),
    pytest.param([{"op": "remove", "path": "/spec/enableInTreeAutoscaling"}],
                 changed(lambda d: d["spec"].pop("enableInTreeAutoscaling")), id="remove"),
    pytest.param([{"op": "test", "path": "/spec/workerGroupSpecs/1/groupName", "value": "gpu"},
                  {"op": "replace", "path": "/spec/workerGroupSpecs/1/replicas", "value": 2}],
                 changed(lambda d: _set(d, (*GROUPS, 1, "replicas"), 2)), id="test, then replace"),
    pytest.param([{"op": "copy", "from": "/spec/headGroupSpec/rayStartParams",
                   "path": "/spec/workerGroupSpecs/1/rayStartParams"}],
                 changed(lambda d: _set(d, (*GROUPS, 1, "rayStartParams"), {"num-cpus": "0"})), id="copy"),
    pytest.param([{"op": "move", "from": "/metadata/labels/tier", "path": "/metadata/labels/layer"}],
                 changed(lambda d: d["metadata"].update(labels={"layer": "base"})), id="move"),
    pytest.param([], base(), id="no operations"),
])
def test_json_patch(operations: list[Any], expected: dict[str, Any]) -> None:
    assert json_patch(base(), operations, Budget()) == expected


@pytest.mark.parametrize(("operations", "path", "reason", "operation"), [
    pytest.param([{"op": "patch", "path": REPLICAS}], "",
                 "must be a mapping whose op is one of add, copy, move, remove, replace, test", 0, id="unknown op"),
    pytest.param(["replace"], "", "must be a mapping whose op is one of add, copy, move, remove, replace, test", 0,
                 id="not a mapping"),
    pytest.param([{"op": "replace", "path": "spec/suspend", "value": True}], "replace",
                 "path must be a JSON pointer: empty or starting with /", 0, id="a path without /"),
    pytest.param([{"op": "replace", "path": "/spec/suspend"}], "replace /spec/suspend", "needs a value", 0,
                 id="replace without value"),
    pytest.param([{"op": "copy", "from": "spec", "path": "/spec/x"}], "copy /spec/x",
                 "from must be a JSON pointer: empty or starting with /", 0, id="a from without /"),
    pytest.param([{"op": "replace", "path": REPLICAS, "value": 1}, {"op": "remove", "path": "/spec/nope"}],
                 "remove /spec/nope", "no such location in the object", 1, id="the second operation, on nothing"),
    pytest.param([{"op": "move", "from": "/spec/nope", "path": "/spec/x"}], "move /spec/x",
                 "no such location in the object (from)", 0, id="move from nothing"),
    pytest.param([{"op": "test", "path": "/spec/workerGroupSpecs/0/groupName", "value": "gpu"}],
                 "test /spec/workerGroupSpecs/0/groupName", "value does not match", 0, id="a failed test"),
    pytest.param([{"op": "add", "path": "/spec/workerGroupSpecs/5", "value": {}}], "add /spec/workerGroupSpecs/5",
                 "cannot be applied at this location", 0, id="add past the end of a list"),
    pytest.param([{"op": "replace", "path": "/spec/workerGroupSpecs/\u00b2/replicas", "value": 1}],
                 "replace /spec/workerGroupSpecs/\u00b2/replicas", "no such location in the object", 0,
                 id="a list index that is a digit but not a decimal number"),
    pytest.param([{"op": "replace", "path": "", "value": ["a list"]}], "",
                 "a JSON patch must leave an object (a mapping)", None, id="the whole object replaced by a list"),
    pytest.param([{"op": "test", "path": "/kind", "value": "RayCluster"}] * (MAX_OPERATIONS + 1), "",
                 f"{MAX_OPERATIONS + 1} operations: a JSON patch holds at most {MAX_OPERATIONS} (split it into "
                 "several patches)", None, id="too many operations"),
])
def test_json_patch_errors_name_the_operation(operations: list[Any], path: str, reason: str,
                                              operation: int | None) -> None:
    with pytest.raises(OverlayError) as raised:
        json_patch(base(), operations, Budget())
    assert (raised.value.path, raised.value.reason, raised.value.operation) == (path, reason, operation)


def test_a_json_patch_error_never_shows_a_value() -> None:
    with pytest.raises(OverlayError) as raised:
        json_patch({"kind": "Secret", "stringData": {"token": "hunter2"}},
                   [{"op": "test", "path": "/stringData/token", "value": "s3cret"}], Budget())
    assert "hunter2" not in str(raised.value) and "s3cret" not in str(raised.value)


VARIABLES = {"RAY_VERSION": "2.60.0", "REPLICAS": 3, "DEBUG": True, "EMPTY": ""}


@pytest.mark.parametrize(("node", "variables", "expected"), [
    pytest.param({"image": "rayproject/ray:${RAY_VERSION}"}, VARIABLES, {"image": "rayproject/ray:2.60.0"},
                 id="inside a string"),
    pytest.param({"replicas": "${REPLICAS}"}, VARIABLES, {"replicas": 3}, id="bare: the variable's type"),
    pytest.param({"replicas": Quoted("${REPLICAS}")}, VARIABLES, {"replicas": "3"}, id="quoted: a string"),
    pytest.param({"args": ["--debug=${DEBUG}"]}, VARIABLES, {"args": ["--debug=true"]},
                 id="a boolean inside a string is true/false"),
    pytest.param({"replicas": "${MISSING:=2}"}, VARIABLES, {"replicas": 2}, id=":= default, bare: typed"),
    pytest.param({"replicas": "${EMPTY:-2}"}, VARIABLES, {"replicas": 2}, id=":- default when empty"),
    pytest.param({"replicas": Quoted("${MISSING:-2}")}, VARIABLES, {"replicas": "2"}, id="quoted default: a string"),
    pytest.param({"entrypoint": "python train.py --epochs=${EPOCHS:-10}"}, VARIABLES,
                 {"entrypoint": "python train.py --epochs=10"}, id="a default inside a string"),
    pytest.param({"entrypoint": "echo $${HOME} ${RAY_VERSION}"}, VARIABLES, {"entrypoint": "echo ${HOME} 2.60.0"},
                 id="$${VAR} is a literal ${VAR}"),
    pytest.param({"${RAY_VERSION}": "key"}, VARIABLES, {"${RAY_VERSION}": "key"}, id="keys are left alone"),
    pytest.param({"image": "ray:${RAY_VERSION}", "n": Quoted("${X}")}, None,
                 {"image": "ray:${RAY_VERSION}", "n": "${X}"},
                 id="no spec.substitute: nothing substituted"),
])
def test_substitute(node: dict[str, Any], variables: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    got = substitute(node, variables, Budget())
    assert got == expected
    assert [type(v) for v in got.values()] == [type(v) for v in expected.values()]
    assert not any(isinstance(v, Quoted) for v in got.values())


@pytest.mark.parametrize(("node", "errors"), [
    pytest.param({"spec": {"entrypoint": "python ${SCRIPT}"}},
                 [("spec.entrypoint", "${SCRIPT} is not defined in spec.substitute (write $${SCRIPT} for a literal "
                   "${SCRIPT}, or ${SCRIPT:-default} for a default)")], id="one field"),
    pytest.param({"spec": {"entrypoint": "${A} ${B} ${A}", "workerGroupSpecs": [{"replicas": "${N}"}]}},
                 [("spec.entrypoint", "${A}, ${B} are not defined in spec.substitute (write $${A} for a literal ${A}, "
                   "or ${A:-default} for a default)"),
                  ("spec.workerGroupSpecs[0].replicas", "${N} is not defined in spec.substitute (write $${N} for a "
                   "literal ${N}, or ${N:-default} for a default)")], id="every field, each variable once"),
])
def test_undefined_variables_are_each_named_and_nothing_changes(node: dict[str, Any],
                                                                errors: list[tuple[str, str]]) -> None:
    before = copy.deepcopy(node)
    with pytest.raises(Undefined) as raised:
        substitute(node, {"RAY_VERSION": "2.60.0"}, Budget())
    assert [(e.path, e.reason) for e in raised.value.errors] == errors
    assert node == before


def test_a_string_longer_than_the_limit_after_substitution_is_refused_before_it_is_built() -> None:
    half = "x" * (MAX_STRING_BYTES // 2 + 1)
    with pytest.raises(OverlayError) as raised:
        substitute({"spec": {"entrypoint": "${HALF}${HALF}"}}, {"HALF": half}, Budget())
    assert raised.value.path == "spec.entrypoint"
    assert raised.value.reason.startswith(f"would be {2 * len(half)} characters after substitution")


@pytest.mark.parametrize(("patch", "expected"), [
    pytest.param({"spec": {"workerGroupSpecs": [{"groupName": "gpu", "replicas": 3}]}},
                 [("spec.workerGroupSpecs[1].groupName", None), ("spec.workerGroupSpecs[1].replicas", None)],
                 id="a merge patch: fields by their index in the object"),
    pytest.param({"metadata": {"labels": {"env": "prod"}}, "spec": {"suspend": True}},
                 [("metadata.labels.env", None), ("spec.suspend", None)], id="nested maps"),
    pytest.param([{"op": "replace", "path": REPLICAS, "value": 2}, {"op": "remove", "path": "/spec/suspend"},
                  {"op": "add", "path": "/spec/workerGroupSpecs/-", "value": {}},
                  {"op": "test", "path": "/kind", "value": "RayCluster"}],
                 [("spec.workerGroupSpecs[0].replicas", 0), ("spec.workerGroupSpecs[1]", 2)],
                 id="a JSON patch: what add/replace/copy/move set, with the operation index; - is the last item"),
])
def test_written_names_the_fields_a_patch_set(patch: Any, expected: list[tuple[str, int | None]]) -> None:
    assert list(written(patch, base())) == expected
