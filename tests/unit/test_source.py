"""The Git source against real repositories: revisions, failures, exports, redaction."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from reconciler.errors import TemporaryError
from reconciler.metrics import Metrics
from reconciler.pipeline.source import GitSource, redact
from tests.conftest import GitRemote


def test_revision_moves_only_with_the_branch_head(remote: GitRemote, tmp_path: Path) -> None:
    remote.write("environments/x/a.yaml", "a: 1\n")
    first = remote.commit("first")
    source = GitSource(remote.url, "main", tmp_path / "cache")
    one, again = source.fetch(), source.fetch()
    remote.write("environments/x/a.yaml", "a: 2\n")
    second = remote.commit("second")
    two = source.fetch()

    assert (one.sha, again.sha, two.sha) == (first, first, second)
    assert one.tree.read("environments/x/a.yaml") == b"a: 1\n"  # an old revision keeps its own content
    assert two.tree.read("environments/x/a.yaml") == b"a: 2\n"
    assert list(two.tree.files("environments")) == ["environments/x/a.yaml"]


def test_failing_fetch_keeps_the_last_good_revision_and_counts_the_error(remote: GitRemote, tmp_path: Path) -> None:
    remote.write("environments/x/a.yaml", "a: 1\n")
    sha = remote.commit("first")
    metrics = Metrics(CollectorRegistry())
    source = GitSource(remote.url, "main", tmp_path / "cache", metrics.git_request)
    source.fetch()
    shutil.move(remote.bare_path, tmp_path / "moved.git")

    assert source.fetch().sha == sha
    assert metrics.registry.get_sample_value("ray_gitops_git_requests_total",
                                             {"request_type": "fetch", "result": "error"}) == 1
    assert metrics.registry.get_sample_value("ray_gitops_git_requests_total",
                                             {"request_type": "fetch", "result": "success"}) == 1


def test_first_fetch_failure_is_a_temporary_error_without_credentials(tmp_path: Path) -> None:
    source = GitSource("https://user:s3cret@127.0.0.1:9/none.git", "main", tmp_path / "cache")
    with pytest.raises(TemporaryError) as err:
        source.fetch()
    assert "s3cret" not in str(err.value) and "***@127.0.0.1" in str(err.value)


def test_materialize_exports_a_directory_of_the_revision(remote: GitRemote, tmp_path: Path) -> None:
    remote.write("jobs/app/main.py", "print('v1')\n")
    remote.commit("v1")
    source = GitSource(remote.url, "main", tmp_path / "cache")
    revision = source.fetch()
    remote.write("jobs/app/main.py", "print('v2')\n")
    remote.commit("v2")

    out = source.materialize(revision, "jobs/app", tmp_path / "checkouts")

    assert (out / "main.py").read_text() == "print('v1')\n"
    assert source.materialize(revision, "jobs/app", tmp_path / "checkouts") == out


def test_redact_hides_userinfo_only() -> None:
    assert redact("https://tok@github.example/x.git") == "https://***@github.example/x.git"
    assert redact("/srv/git/repo.git") == "/srv/git/repo.git"
