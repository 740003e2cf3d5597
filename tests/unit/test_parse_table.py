"""The one YAML parser, as tables: KubeRay objects in, JSON-typed documents out; and every refusal naming the
file, the document, the field and the line."""
from __future__ import annotations

from typing import Any

import pytest

from reconciler.errors import ValidationError
from reconciler.pipeline import parse
from reconciler.pipeline.budgets import Budget

FILE = "environments/dev/raycluster.yaml"
CLUSTER = """\
apiVersion: ray.io/v1
kind: RayCluster
metadata: {name: demo}
spec:
  headGroupSpec:
    rayStartParams: {num-cpus: "0"}
    template: {spec: {containers: [{name: ray-head, image: "rayproject/ray:2.60.0"}]}}
  workerGroupSpecs:
  - groupName: cpu
    replicas: 2
    maxReplicas: 4
    template: {spec: {containers: [{name: ray-worker, resources: {limits: {cpu: "1", memory: 1Gi}}}]}}
"""
WORKER = {"groupName": "cpu", "replicas": 2, "maxReplicas": 4,
          "template": {"spec": {"containers": [{"name": "ray-worker",
                                                "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}}}
HEAD = {"rayStartParams": {"num-cpus": "0"},
        "template": {"spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.60.0"}]}}}


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param(CLUSTER, [{"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "demo"},
                            "spec": {"headGroupSpec": HEAD, "workerGroupSpecs": [WORKER]}}], id="a RayCluster"),
    pytest.param("kind: ConfigMap\n---\nkind: Secret\n", [{"kind": "ConfigMap"}, {"kind": "Secret"}],
                 id="two documents"),
    pytest.param("", [], id="no document"),
    pytest.param("---\n", [None], id="an empty document"),
    pytest.param("spec: {suspend: true, entrypointNumCpus: 0.5, ttlSecondsAfterFinished: 60, x: null}\n",
                 [{"spec": {"suspend": True, "entrypointNumCpus": 0.5, "ttlSecondsAfterFinished": 60, "x": None}}],
                 id="JSON scalars"),
    pytest.param("metadata: {annotations: {since: 2026-12-01}}\n",
                 [{"metadata": {"annotations": {"since": "2026-12-01"}}}],
                 id="an unquoted date stays text"),
    pytest.param("x: &img {image: 'rayproject/ray:2.60.0'}\nhead: *img\nworker: *img\n",
                 [{"x": {"image": "rayproject/ray:2.60.0"}, "head": {"image": "rayproject/ray:2.60.0"},
                   "worker": {"image": "rayproject/ray:2.60.0"}}], id="anchors and aliases"),
    pytest.param("base: &b {cpu: '1', memory: 1Gi}\nlimits: {<<: *b, cpu: '4'}\n",
                 [{"base": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "4", "memory": "1Gi"}}],
                 id="a << merge: the mapping's own keys win"),
    pytest.param("a: &a {x: 1}\nb: &b {x: 2, y: 2}\nc: {<<: [*a, *b]}\n",
                 [{"a": {"x": 1}, "b": {"x": 2, "y": 2}, "c": {"x": 1, "y": 2}}], id="<< of a list: the first wins"),
])
def test_documents(text: str, expected: list[Any]) -> None:
    assert parse.documents(text, FILE) == (expected, [])


def test_an_alias_is_a_copy_so_a_patch_of_one_place_changes_no_other() -> None:
    [doc], _ = parse.documents("head: &c {image: a}\nworker: *c\n", FILE)
    doc["worker"]["image"] = "b"
    assert doc["head"] == {"image": "a"}


@pytest.mark.parametrize(("text", "quoted"), [
    pytest.param("image: ${IMAGE}\n", False, id="bare: takes the variable's type"),
    pytest.param("image: '${IMAGE}'\n", True, id="single-quoted: stays a string"),
    pytest.param('image: "${IMAGE}"\n', True, id="double-quoted"),
    pytest.param("image: !!str ${IMAGE}\n", True, id="tagged !!str"),
    pytest.param("image: 'repo/${IMAGE}'\n", False, id="not a whole ${VAR}: an ordinary string"),
])
def test_a_quoted_whole_variable_comes_out_quoted(text: str, quoted: bool) -> None:
    [doc], errors = parse.documents(text, FILE)
    assert errors == [] and isinstance(doc["image"], parse.Quoted) is quoted


NOT_JSON = "is not allowed: only strings, numbers, booleans, null, lists and maps"


@pytest.mark.parametrize(("text", "error"), [
    pytest.param("metadata:\n  name: a\n  name: b\n",
                 ValidationError(FILE, "duplicate key (a second value would silently replace the first) (line 3)", 0,
                                 "", "metadata.name"), id="a key twice"),
    pytest.param("kind: Secret\ndata: {token: !!binary aGk=}\n",
                 ValidationError(FILE, f"!!binary {NOT_JSON} (line 2)", 0, "", "data.token"), id="!!binary"),
    pytest.param("kind: ConfigMap\n---\nspec: {groups: !!set {a, b}}\n",
                 ValidationError(FILE, f"!!set {NOT_JSON} (line 3)", 1, "", "spec.groups"),
                 id="!!set, in the second document"),
    pytest.param("spec: {entrypoint: !python/name:os.system x}\n",
                 ValidationError(FILE, f"!python/name:os.system {NOT_JSON} (line 1)", 0, "",
                                 "spec.entrypoint"), id="a Python tag"),
    pytest.param("spec:\n  entrypointNumCpus: .inf\n",
                 ValidationError(FILE, ".inf is not a JSON number (line 2)", 0, "", "spec.entrypointNumCpus"),
                 id=".inf"),
    pytest.param("spec: {workerGroupSpecs: [{replicas: .nan}]}\n",
                 ValidationError(FILE, ".nan is not a JSON number (line 1)", 0, "",
                                 "spec.workerGroupSpecs[0].replicas"),
                 id=".nan in a list item"),
    pytest.param("data:\n  1: one\n",
                 ValidationError(FILE, "key '1' is not a string (quote it) (line 2)", 0, "", "data"),
                 id="a number as key"),
    pytest.param("spec: {replicas: *missing}\n",
                 ValidationError(FILE, "alias *missing has no anchor before it (line 1)", 0, "", "spec.replicas"),
                 id="an alias without anchor"),
    pytest.param("a: &loop [*loop]\n",
                 ValidationError(FILE, "alias *loop is inside its own anchor (it would never end) (line 1)", 0, "",
                                 "a[0]"), id="an alias inside its own anchor"),
    pytest.param("a: &x 1\nb: &x 2\n",
                 ValidationError(FILE, "anchor &x is defined twice (line 2)", 0, "", "b"), id="an anchor twice"),
    pytest.param("limits: {<<: [cpu]}\n",
                 ValidationError(FILE, "<< merges only maps (line 1)", 0, "", "limits"), id="<< of a string"),
    pytest.param("x: " + "[" * 70 + "]" * 70 + "\n",
                 ValidationError(FILE, f"nested deeper than {parse.MAX_DEPTH} levels (line 1)", 0, "",
                                 "x" + "[0]" * parse.MAX_DEPTH), id="too deep"),
    pytest.param("spec: {workerGroupSpecs: [\n", None, id="invalid YAML"),
])
def test_refused_documents_name_file_document_field_and_line(text: str, error: ValidationError | None) -> None:
    docs, errors = parse.documents(text, FILE)
    assert docs == []
    if error is None:  # the parser's own message, with where it stopped; no document or field to name
        [only] = errors
        assert (only.file, only.document, only.path) == (FILE, None, "")
        assert only.reason.startswith("invalid YAML (line 2, column 1): ")
    else:
        assert errors == [error]


def test_a_non_scalar_key_is_refused_naming_the_mapping() -> None:
    _, [error] = parse.documents("data:\n  ? [a, b]\n  : x\n", FILE)
    assert (error.document, error.path) == (0, "data")
    assert "is not a string" in error.reason


def test_a_non_scalar_key_is_described_not_quoted() -> None:
    _, [error] = parse.documents("data:\n  ? [a, b]\n  : x\n", FILE)
    assert "'a list, map or alias'" not in error.reason


@pytest.mark.parametrize(("text", "limit", "docs", "errors"), [
    pytest.param("a: 1\n---\nb: 2\n", 2, [{"a": 1}, {"b": 2}], [], id="at the limit"),
    pytest.param("a: 1\n---\nb: 2\n---\n", 2, [],
                 [ValidationError(FILE, "more than 2 YAML document(s) (an empty one counts too)", 2)],
                 id="an empty third document counts"),
])
def test_a_file_holds_at_most_limit_documents(text: str, limit: int, docs: list[Any],
                                              errors: list[ValidationError]) -> None:
    assert parse.documents(text, FILE, limit=limit) == (docs, errors)


def test_an_alias_bomb_is_refused_before_it_is_built() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]  # 10^7 values
    docs, [error] = parse.documents("\n".join(lines) + "\n", FILE)
    assert docs == []
    assert error.reason.startswith(f"expands to more than {parse.MAX_VALUES} values")
    assert error.path.startswith("a5") or error.path.startswith("a6")


def test_a_budget_is_spent_as_values_are_built() -> None:
    budget = Budget()
    before = budget.bytes
    parse.documents(CLUSTER, FILE, budget)
    assert 0 < before - budget.bytes < 2_000


RUNTIME_ENV = "spec.runtimeEnvYAML"


@pytest.mark.parametrize(("text", "value", "errors"), [
    pytest.param("working_dir: jobs/train\npip: [torch==2.9.0]\n",
                 {"working_dir": "jobs/train", "pip": ["torch==2.9.0"]}, [], id="a runtime_env"),
    pytest.param("", None, [], id="empty"),
    pytest.param("env_vars: {A: '1'}\nenv_vars: {B: '2'}\n", None,
                 [ValidationError("environments/dev/rayjob.yaml", "duplicate key (a second value would silently "
                                  "replace the first) (line 2)", 3, "RayJob/train", f"{RUNTIME_ENV}.env_vars")],
                 id="a key twice: the field inside the string"),
    pytest.param("pip: [a\n", None, [], id="invalid YAML: the string field"),
    pytest.param("a: 1\n---\nb: 2\n", None,
                 [ValidationError("environments/dev/rayjob.yaml", "more than 1 YAML document(s) (an empty one counts "
                                  "too)", 3, "RayJob/train", RUNTIME_ENV)], id="two documents"),
])
def test_text_parses_a_string_field_and_names_the_object_and_field(text: str, value: Any,
                                                                   errors: list[ValidationError]) -> None:
    got, got_errors = parse.text(text, "environments/dev/rayjob.yaml", 3, "RayJob/train", RUNTIME_ENV)
    assert got == value
    if text == "pip: [a\n":
        [error] = got_errors
        assert (error.file, error.document, error.object, error.path) == (
            "environments/dev/rayjob.yaml", 3, "RayJob/train", RUNTIME_ENV)
        assert error.reason.startswith("invalid YAML (line 2")
    else:
        assert got_errors == errors


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("3", 3, id="an int"),
    pytest.param("0.5", 0.5, id="a float"),
    pytest.param("true", True, id="a boolean"),
    pytest.param("yes", True, id="a YAML 1.1 boolean, as a bare yes reads in a file"),
    pytest.param("rayproject/ray:2.60.0", "rayproject/ray:2.60.0", id="text"),
    pytest.param("null", "null", id="null stays text: a default is a value"),
    pytest.param(".inf", ".inf", id="not a JSON number: text"),
    pytest.param("1" * 5000, "1" * 5000, id="too many digits: text"),
    pytest.param("", "", id="empty"),
])
def test_plain_reads_a_default_as_bare_yaml_would(text: str, expected: Any) -> None:
    value = parse.plain(text)
    assert value == expected and type(value) is type(expected)
