"""Render budgets: the parser, the overlays and the render stop hostile content at their limits, before the
memory it asks for is taken, with errors that name the file, object and field and never quote a value."""
from __future__ import annotations

import copy
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.errors import InvalidEnvironment
from reconciler.model import ObjectRef
from reconciler.pipeline import budgets, overlay, parse
from reconciler.pipeline.budgets import Budget
from reconciler.pipeline.render import render
from reconciler.pipeline.source import DirectoryTree
from tests.memory import TARGETS

ENVIRONMENT: dict[str, Any] = {"apiVersion": "gitops.ray.io/v1alpha1", "kind": "Environment",
                               "metadata": {"name": "team-a"},
                               "spec": {"target": {"kubernetes": {"namespace": "team-a", "namespaces": ["shared"]}}}}
SECRET = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
          "stringData": {"password": "hunter2-s3cret"}}


def configmap(name: str = "settings", **data: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data or {"mode": "fast"}}


def environment(**spec: Any) -> dict[str, Any]:
    return {**ENVIRONMENT, "spec": {**ENVIRONMENT["spec"], **spec}}


def tree(root: Path, files: dict[str, str], env: dict[str, Any] | None = None) -> DirectoryTree:
    for path, text in {"environment.yaml": yaml.safe_dump(env or ENVIRONMENT), **files}.items():
        (root / "environments" / "team-a" / path).parent.mkdir(parents=True, exist_ok=True)
        (root / "environments" / "team-a" / path).write_text(text)
    return DirectoryTree(root)


def errors_of(root: Path, files: dict[str, str], env: dict[str, Any] | None = None) -> list[str]:
    with pytest.raises(InvalidEnvironment) as caught:
        render(tree(root, files, env), "team-a", "", TARGETS)
    return [str(e) for e in caught.value.errors]


def peak_mib(work: Callable[[], Any]) -> float:
    """The most memory Python allocated while `work` ran (tracemalloc), in MiB."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


# -- the parser ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, document, path, reason", [
    pytest.param("---\n" * 1001, 1000, "", "more than 1000 YAML document(s) (an empty one counts too)",
                 id="1001-empty-documents"),
    pytest.param("a: *b\n", 0, "a", "alias *b has no anchor before it", id="undefined-alias"),
    pytest.param("a: &x 1\nb: &x 2\n", 0, "b", "anchor &x is defined twice", id="duplicate-anchor"),
    pytest.param("a: &a {b: *a}\n", 0, "a.b", "alias *a is inside its own anchor", id="alias-inside-its-anchor"),
    pytest.param("a: " + "1" * 5000 + "\n", 0, "a", "a number of 5000 characters is too long", id="5000-digits"),
    pytest.param("x: &x " + "[" * 40 + "]" * 40 + "\n" + "a:\n" + "".join(f"{'  ' * i}k{i}:\n" for i in range(1, 30))
                 + "  " * 30 + "v: *x\n", 0, "a" + "".join(f".k{i}" for i in range(1, 30)) + ".v",
                 "nested deeper than 64 levels (where alias *x is used)", id="alias-nests-too-deep"),
])
def test_the_parser_refuses_with_the_document_and_field(text: str, document: int, path: str, reason: str) -> None:
    docs, errors = parse.documents(text, "f.yaml")

    assert docs == [] and len(errors) == 1
    assert (errors[0].document, errors[0].path) == (document, path)
    assert errors[0].reason.startswith(reason), errors[0].reason


def test_a_million_values_in_one_document_stop_at_the_value_limit_without_holding_the_document() -> None:
    text = "[" + "a," * (1024 * 1024 - 2) + "a]"  # 2 MiB: a million scalars
    found: list[Any] = []

    peak = peak_mib(lambda: found.extend(parse.documents(text, "f.yaml", Budget())[1]))

    assert [(e.path, e.reason.split(" (")[0]) for e in found] == [
        ("[199999]", "expands to more than 200000 values")]
    assert peak < 60, peak  # building PyYAML's node graph of the whole document first took 330 MiB


def test_an_alias_is_a_copy_so_patching_one_place_never_changes_another() -> None:
    docs, errors = parse.documents("a: &x {k: [1]}\nb: *x\n", "f.yaml")

    assert errors == [] and docs == [{"a": {"k": [1]}, "b": {"k": [1]}}]
    assert docs[0]["a"]["k"] is not docs[0]["b"]["k"]


def test_a_long_string_used_through_aliases_is_counted_each_time() -> None:
    text = "s: &s " + "x" * 1024 * 1024 + "\nl: [" + ", ".join(["*s"] * 20) + "]\n"

    docs, errors = parse.documents(text, "f.yaml", Budget())

    assert docs == [] and [e.path for e in errors] == ["l[6]"]  # 8 copies of 1 MiB pass the 8 MiB budget
    assert "more than 8388608 bytes" in errors[0].reason


# -- the overlays ----------------------------------------------------------------------------------------------

def doubling(times: int) -> list[dict[str, Any]]:
    return [{"op": "copy", "from": "/data", "path": f"/data/d{i}"} for i in range(times)]


@pytest.mark.parametrize("operations, index, where, reason", [
    pytest.param([{"op": "add", "path": "/a", "value": 1}] * 101, None, "", "101 operations: a JSON patch holds at "
                 "most 100", id="101-operations"),
    pytest.param([{"op": "test", "path": "/stringData/password", "value": "guess"}], 0,
                 "test /stringData/password", "value does not match", id="test-a-secret"),
    pytest.param([{"op": "remove", "path": "/stringData/token"}], 0, "remove /stringData/token",
                 "no such location in the object", id="remove-missing"),
    pytest.param([{"op": "copy", "from": "/nope", "path": "/x"}], 0, "copy /x",
                 "no such location in the object (from)", id="copy-from-missing"),
    pytest.param([{"op": "move", "from": "/stringData", "path": "/stringData/x"}], 0, "move /stringData/x",
                 "cannot be applied at this location", id="move-into-itself"),
    pytest.param([{"op": "add", "path": "/stringData/password/x", "value": 1}], 0, "add /stringData/password/x",
                 "cannot be applied at this location", id="add-inside-a-string"),
    pytest.param(["remove /x"], 0, "", "must be a mapping whose op is one of", id="not-a-mapping"),
    pytest.param([{"op": "append", "path": "/x"}], 0, "", "must be a mapping whose op is one of", id="unknown-op"),
    pytest.param([{"op": "add", "path": "x", "value": 1}], 0, "add", "path must be a JSON pointer", id="bad-pointer"),
    pytest.param([{"op": "add", "path": "/~2", "value": 1}], 0, "add", "path must be a JSON pointer", id="bad-escape"),
    pytest.param([{"op": "replace", "path": "/kind"}], 0, "replace /kind", "needs a value", id="no-value"),
    pytest.param([{"op": "copy", "path": "/x"}], 0, "copy /x", "from must be a JSON pointer", id="no-from"),
    pytest.param(doubling(26), 16, "copy /data/d16", "the environment's objects come to more than 8388608 bytes",
                 id="26-doubling-copies"),
    pytest.param([{"op": "add", "path": "/y", "value": [[[[]]]]}, {"op": "move", "from": "/data", "path": "/y/0/0/0/0"},
                  {"op": "move", "from": "/y", "path": "/data"}] * 20, 46, "move /y/0/0/0/0",
                 "would nest the object deeper than 64 levels", id="moves-that-nest-deeper"),
    pytest.param([{"op": "replace", "path": "", "value": []}], None, "",
                 "a JSON patch must leave an object", id="replace-the-root-by-a-list"),
])
def test_a_json_patch_error_names_the_operation_and_never_a_value(operations: list[Any], index: int | None,
                                                                  where: str, reason: str) -> None:
    doc = {**SECRET, "data": {"k": "v" * 40}}

    with pytest.raises(overlay.OverlayError) as caught:
        overlay.json_patch(doc, operations, Budget())

    assert (caught.value.operation, caught.value.path) == (index, where)
    assert caught.value.reason.startswith(reason), caught.value.reason
    assert "hunter2" not in caught.value.reason and "guess" not in caught.value.reason


def test_doubling_copies_are_refused_before_the_memory_is_taken() -> None:
    doc = configmap(**{f"k{i}": f"v{i}" for i in range(100)})  # about 1 KB, doubled by each copy

    peak = peak_mib(lambda: pytest.raises(overlay.OverlayError, overlay.json_patch, doc, doubling(26), Budget()))

    assert peak < 40, peak  # at most the 8 MiB budget, counted as it is, in Python objects


def test_json_patch_operations_apply_in_place_one_at_a_time() -> None:
    doc = configmap(a="1")
    patched = overlay.json_patch(doc, [{"op": "add", "path": "/data/b", "value": "2"},
                                       {"op": "copy", "from": "/data", "path": "/copy"},
                                       {"op": "move", "from": "/data/a", "path": "/data/c"},
                                       {"op": "test", "path": "/copy/a", "value": "1"}], Budget())

    assert patched is doc and doc["data"] == {"b": "2", "c": "1"} and doc["copy"] == {"a": "1", "b": "2"}


@pytest.mark.parametrize("value, variables, path, reason", [
    pytest.param({"v": "${BIG}" * 4000}, {"BIG": "x" * 2**20}, "v",
                 "would be 4194304000 characters after substitution, more than the limit of 1048576", id="one-value"),
    pytest.param({"v": ["${BIG}"] * 9}, {"BIG": "x" * 2**20}, "v[8]",
                 "the environment's objects come to more than 8388608 bytes", id="many-values"),
    pytest.param({"v": "a ${NOPE}"}, {}, "v", "${NOPE} is not defined in spec.substitute", id="undefined"),
])
def test_substitution_is_measured_before_the_string_is_built(value: Any, variables: dict[str, Any], path: str,
                                                             reason: str) -> None:
    budget = Budget()

    peak = peak_mib(lambda: pytest.raises(overlay.OverlayError, overlay.substitute, copy.deepcopy(value), variables,
                                          budget))
    with pytest.raises(overlay.OverlayError) as caught:
        overlay.substitute(copy.deepcopy(value), variables, Budget())

    assert caught.value.path == path and caught.value.reason.startswith(reason), caught.value.reason
    assert peak < 12, peak  # the strings that fit (one MiB each, shared), never the ones refused


def test_substitution_keeps_types_literals_and_counts_growth() -> None:
    budget = Budget()
    doc = overlay.substitute({"n": "${N}", "s": "x-${N}-$${N}", "b": "${B}"}, {"N": 3, "B": True}, budget)

    assert doc == {"n": 3, "s": "x-3-${N}", "b": True}
    assert budgets.MAX_BYTES - budget.bytes == 0  # "x-3-${N}" is no longer than "x-${N}-$${N}"


def test_a_merge_patch_is_counted_and_applied_in_place() -> None:
    doc, budget = configmap(a="1"), Budget()
    before = budget.bytes

    assert overlay.merge(doc, {"data": {"b": "2", "a": None}}, budget) is doc
    assert doc["data"] == {"b": "2"} and before - budget.bytes == budgets.measure({"data": {"b": "2", "a": None}},
                                                                                   before)[0]


# -- the render ------------------------------------------------------------------------------------------------

def test_documents_are_counted_across_files_and_the_file_that_passes_the_limit_is_named(tmp_path: Path) -> None:
    files = {f"c{i}.yaml": "---\n" * 600 for i in range(3)}

    assert errors_of(tmp_path, files) == [
        "environments/team-a/c1.yaml#400: more than 1000 YAML documents in the environment's object files (its "
        "base's included, an empty one counts too): split it into several environments"]


def test_a_1000_patches_on_a_large_object_cost_no_copy_of_it(tmp_path: Path) -> None:
    big = configmap(**{f"k{i}": "v" for i in range(50_000)})
    env = environment(patches=[{"target": {"kind": "ConfigMap", "name": "settings"}, "patch": [
        {"op": "replace", "path": f"/data/k{i}", "value": "w"}]} for i in range(1000)])
    started = time.thread_time()

    rendered = render(tree(tmp_path, {"c.yaml": yaml.safe_dump(big)}, env), "team-a", "", TARGETS)

    assert [d.manifest["data"]["k999"] for d in rendered.objects] == ["w"]
    assert time.thread_time() - started < 5  # a copy of the object per patch took 35 s


def test_a_render_that_passes_its_cpu_time_stops_naming_the_file(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budgets, "MAX_CPU_SECONDS", 0.0)

    errors = errors_of(tmp_path, {"c.yaml": yaml.safe_dump(configmap())})

    assert errors == ["environments/team-a/c.yaml: rendering took more than 0 s of CPU time"]


def test_a_failed_patch_drops_its_object_from_later_patches(tmp_path: Path) -> None:
    env = environment(patches=[
        {"target": {"kind": "Secret", "name": "db"}, "patch": [
            {"op": "replace", "path": "/stringData/password", "value": "other"},
            {"op": "test", "path": "/stringData/password", "value": "hunter2-s3cret"}]},
        {"target": {"kind": "Secret", "name": "db"}, "patch": {"metadata": {"labels": {"a": "b"}}}}])

    errors = errors_of(tmp_path, {"s.yaml": yaml.safe_dump(SECRET)}, env)

    assert errors == ["environments/team-a/environment.yaml: Secret/team-a/db: spec.patches[0].patch[1] "
                      "(test /stringData/password): value does not match"]


# -- identity after substitution -------------------------------------------------------------------------------

def test_kind_name_and_namespace_set_by_substitution_are_the_objects_identity(tmp_path: Path) -> None:
    doc = {"apiVersion": "v1", "kind": "${K}", "metadata": {"name": "${N}-x", "namespace": "${NS}"}, "data": {}}
    env = environment(substitute={"K": "ConfigMap", "N": "app", "NS": "shared"})

    rendered = render(tree(tmp_path, {"c.yaml": yaml.safe_dump(doc)}, env), "team-a", "", TARGETS)

    assert [d.ref for d in rendered.objects] == [ObjectRef("", "ConfigMap", "shared", "app-x")]
    assert rendered.objects[0].manifest["metadata"]["namespace"] == "shared"


@pytest.mark.parametrize("namespace, name, error", [
    pytest.param("${NS}", "b", "environments/team-a/c.yaml#1: ConfigMap/b: metadata.namespace: kube-system is "
                 "outside this environment", id="namespace-outside"),
    pytest.param("team-a", "${BAD}", "environments/team-a/c.yaml#1: ConfigMap/../x: metadata.name: must be a "
                 "DNS-1123 name", id="name-not-dns"),
    pytest.param("team-a", "${A}", "environments/team-a/c.yaml#1: ConfigMap/team-a/a: duplicate object after "
                 "substitution, first defined in environments/team-a/c.yaml#0", id="duplicate"),
])
def test_an_identity_made_by_substitution_is_validated_as_final(tmp_path: Path, namespace: str, name: str,
                                                                error: str) -> None:
    first = configmap("a")
    second = {**configmap(name), "metadata": {"name": name, "namespace": namespace}}
    env = environment(substitute={"NS": "kube-system", "BAD": "../x", "A": "a"})

    errors = errors_of(tmp_path, {"c.yaml": yaml.safe_dump_all([first, second])}, env)

    assert [e for e in errors if e.startswith(error)] and len(errors) == 1, errors


@pytest.mark.parametrize("patch", [
    pytest.param({"kind": "Secret"}, id="kind"),
    pytest.param({"metadata": {"name": "other"}}, id="name"),
    pytest.param({"metadata": {"namespace": "shared"}}, id="namespace"),
    pytest.param([{"op": "replace", "path": "/metadata/name", "value": "other"}], id="name-by-json-patch"),
])
def test_a_patch_may_not_change_an_objects_identity(tmp_path: Path, patch: Any) -> None:
    env = environment(patches=[{"target": {"kind": "ConfigMap", "name": "settings"}, "patch": patch}])

    errors = errors_of(tmp_path, {"c.yaml": yaml.safe_dump(configmap())}, env)

    assert errors == ["environments/team-a/environment.yaml: ConfigMap/team-a/settings: spec.patches[0].patch: a patch "
                      "may not change an object's kind, name or namespace"]
