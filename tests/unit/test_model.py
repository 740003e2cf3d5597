"""Plain helpers of `reconciler.model`: durations, resource quantities, spec hashes, submission ids."""
from __future__ import annotations

import hashlib
import json
import re

import pytest

from reconciler.model import job_submission_id, parse_duration, parse_quantity, spec_hash


@pytest.mark.parametrize("text, seconds", [
    pytest.param("90s", 90.0, id="seconds"),
    pytest.param("5m", 300.0, id="minutes"),
    pytest.param("1h", 3600.0, id="hours"),
    pytest.param("1h30m", 5400.0, id="hours-and-minutes"),
    pytest.param("1h0m30s", 3630.0, id="go-style-compound"),
    pytest.param("500ms", 0.5, id="milliseconds-not-minutes"),
    pytest.param("1.5h", 5400.0, id="fractional-hours"),
    pytest.param("45", 45.0, id="bare-number-string"),
    pytest.param(" 30s ", 30.0, id="surrounding-whitespace"),
    pytest.param(12, 12.0, id="int"),
    pytest.param(2.5, 2.5, id="float"),
])
def test_durations_are_parsed_to_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [
    pytest.param("", id="empty"),
    pytest.param("abc", id="word"),
    pytest.param("5d", id="days-unsupported"),
    pytest.param("-5s", id="negative"),
    pytest.param("1m30", id="trailing-number-without-unit"),
    pytest.param("5 m", id="space-inside"),
    pytest.param("s", id="unit-without-number"),
    pytest.param("1hh", id="doubled-unit"),
    pytest.param(True, id="bool-is-not-a-number"),
])
def test_malformed_durations_are_rejected(text: object) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("text, value", [
    pytest.param("500m", 0.5, id="millicpu"),
    pytest.param("2", 2.0, id="plain-integer"),
    pytest.param("1.5", 1.5, id="plain-decimal"),
    pytest.param("+1", 1.0, id="signed"),
    pytest.param("1e3", 1000.0, id="decimal-exponent"),
    pytest.param("1.5k", 1500.0, id="kilo"),
    pytest.param("1M", 1_000_000.0, id="mega"),
    pytest.param("2G", 2_000_000_000.0, id="giga"),
    pytest.param("1Ki", 1024.0, id="kibi"),
    pytest.param("512Mi", 512 * 1024 ** 2, id="mebi"),
    pytest.param("1Gi", 1024 ** 3, id="gibi"),
    pytest.param("2Ti", 2 * 1024 ** 4, id="tebi"),
    pytest.param(4, 4.0, id="int"),
    pytest.param(0.25, 0.25, id="float"),
    pytest.param("1Ei", float(2 ** 60), id="exbi"),
    pytest.param("2E", 2e18, id="exa"),
    pytest.param("250u", 250e-6, id="micro"),
    pytest.param(".5", 0.5, id="leading-dot"),
])
def test_resource_quantities_are_parsed_like_kubernetes(text: object, value: float) -> None:
    assert parse_quantity(text) == pytest.approx(value)


@pytest.mark.parametrize("text", [
    pytest.param("two", id="word"),
    pytest.param("1GB", id="unit-of-another-world"),
    pytest.param("", id="empty"),
    pytest.param("1 Gi", id="space-before-suffix"),
    pytest.param("Gi", id="suffix-only"),
    pytest.param("1e", id="dangling-exponent"),
    pytest.param("1gi", id="wrong-case"),
    pytest.param(True, id="bool-is-not-a-number"),
])
def test_malformed_resource_quantities_are_rejected(text: object) -> None:
    with pytest.raises(ValueError, match="not a resource quantity"):
        parse_quantity(text)


JOB = {
    "apiVersion": "ray.io/v1", "kind": "RayJob",
    "metadata": {"name": "train", "labels": {"team": "ml"}},
    "spec": {"entrypoint": "python train.py", "shutdownAfterJobFinishes": True,
             "runtimeEnvYAML": "pip: [torch]\n", "clusterSelector": {"ray.io/cluster": "demo"}},
}


def test_spec_hash_does_not_depend_on_key_order() -> None:
    reordered = {"kind": "RayJob", "metadata": JOB["metadata"], "apiVersion": "ray.io/v1",
                 "spec": {"clusterSelector": {"ray.io/cluster": "demo"}, "runtimeEnvYAML": "pip: [torch]\n",
                          "shutdownAfterJobFinishes": True, "entrypoint": "python train.py"}}
    assert list(reordered["spec"]) != list(JOB["spec"])
    assert spec_hash(reordered) == spec_hash(JOB)


def test_spec_hash_does_not_depend_on_metadata() -> None:
    other = {**JOB, "metadata": {"name": "renamed", "namespace": "x",
                                 "annotations": {"gitops.ray.io/revision": "abc"}}}
    assert spec_hash(other) == spec_hash(JOB)


def test_spec_hash_changes_with_any_spec_value() -> None:
    edited = {**JOB, "spec": {**JOB["spec"], "entrypoint": "python train.py --epochs 2"}}
    assert spec_hash(edited) != spec_hash(JOB)


def test_spec_hash_is_a_prefix_of_the_sha256_of_canonical_json() -> None:
    # Pinned so that an upgrade of ray-gitops never changes the ids of runs that already happened.
    canonical = json.dumps(JOB["spec"], sort_keys=True, separators=(",", ":"))
    expected = hashlib.sha256(canonical.encode()).hexdigest()
    assert spec_hash(JOB) == expected[:10]
    assert spec_hash(JOB, length=16) == expected[:16]


def test_object_without_spec_hashes_like_an_empty_spec() -> None:
    assert spec_hash({"kind": "ConfigMap"}) == spec_hash({"kind": "ConfigMap", "spec": {}})


def test_job_submission_id_is_environment_name_and_ten_hex_digits() -> None:
    run = job_submission_id("prod", "train", JOB)
    assert re.fullmatch(r"prod-train-[0-9a-f]{10}", run)
    assert run.rsplit("-", 1)[1] == spec_hash(JOB)


def test_job_submission_id_differs_between_environments_and_specs() -> None:
    edited = {**JOB, "spec": {**JOB["spec"], "entrypoint": "python other.py"}}
    ids = {job_submission_id("prod", "train", JOB), job_submission_id("staging", "train", JOB),
           job_submission_id("prod", "train", edited)}
    assert len(ids) == 3
