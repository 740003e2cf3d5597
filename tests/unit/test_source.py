"""The Git source against real repositories: revisions, failures, exports, redaction."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from reconciler.errors import TemporaryError
from reconciler.metrics import Metrics
from reconciler.pipeline.source import GitSource, Snapshot, redact, split_credentials
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
    assert "s3cret" not in str(err.value) and "git fetch https://127.0.0.1:9/none.git branch main" in str(err.value)
    assert "s3cret" not in (source.cache_dir / "config").read_text()


def test_each_repository_url_has_a_git_cache_of_its_own_and_one_that_follows_another_is_refused(
        remote: GitRemote, tmp_path: Path) -> None:
    import git
    remote.write("environments/x/a.yaml", "a: 1\n")
    first = remote.commit("first")
    other = GitRemote(tmp_path / "other")
    other.write("environments/x/a.yaml", "a: 2\n")
    second = other.commit("other")
    one, two = (GitSource(url, "main", tmp_path / "cache") for url in (remote.url, other.url))

    assert (one.fetch().sha, two.fetch().sha) == (first, second)
    assert one.cache_dir != two.cache_dir and one.cache_dir.parent == two.cache_dir.parent

    git.Repo(one.cache_dir).remotes.origin.set_url(other.url)  # a cache that follows another repository
    with pytest.raises(TemporaryError, match="follows .*, not .*; remove it"):
        GitSource(remote.url, "main", tmp_path / "cache").fetch()
    assert git.Repo(one.cache_dir).remotes.origin.url == other.url  # refused, never repointed


@pytest.mark.parametrize("url, clean, user, password", [
    ("https://tok@github.example/x.git", "https://github.example/x.git", "tok", ""),
    ("https://u:p@ss/w:rd@host:8443/org/x.git", "https://host:8443/org/x.git", "u", "p@ss/w:rd"),
    ("https://u:p%40ss@host/x.git", "https://host/x.git", "u", "p@ss"),
    ("git@github.com:org/x.git", "git@github.com:org/x.git", "", ""),
    ("/srv/git/repo.git", "/srv/git/repo.git", "", ""),
])
def test_credentials_are_split_off_whatever_characters_they_hold(url: str, clean: str, user: str,
                                                                  password: str) -> None:
    assert split_credentials(url) == (clean, user, password)
    assert (password or "@@") not in redact(f"fatal: unable to access '{url}/': denied")


def test_the_askpass_helper_answers_from_the_environment(tmp_path: Path) -> None:
    source = GitSource("https://u:p@ss w0rd!@127.0.0.1:9/x.git", "main", tmp_path / "git")
    env = source._fetch_environment()
    ask = [env["GIT_ASKPASS"]]
    answers = [subprocess.run(ask + [prompt], env=env, capture_output=True, text=True, check=True).stdout
               for prompt in ("Username for 'https://127.0.0.1:9': ", "Password for 'https://u@127.0.0.1:9': ")]
    assert answers == ["u\n", "p@ss w0rd!\n"] and env["GIT_TERMINAL_PROMPT"] == "0"
    assert "p@ss" not in Path(env["GIT_ASKPASS"]).read_text()


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


@pytest.mark.parametrize("under", ["", "environments", "environments/a", "environments/a/", "/environments/a-b",
                                   "bases", "nothing", "environments/a/b"])
def test_a_snapshot_lists_exactly_the_files_under_a_directory(under: str) -> None:
    paths = ["environments/a", "environments/a/x.yaml", "environments/a-b/y.yaml", "environments/a/b/c.yaml",
             "environments/ab/z", "bases/x.yaml", "environments/a.yaml", "environments/a0/q", "environments/a/.z"]
    snapshot = Snapshot({p: b"" for p in paths[:5]}, frozenset(paths[5:]))
    prefix = under.strip("/")

    assert list(snapshot.files(under)) == sorted(
        p for p in paths if not prefix or p == prefix or p.startswith(prefix + "/"))


def test_what_a_render_reads_tells_which_later_revisions_change_it() -> None:
    from reconciler.pipeline.render import render
    from reconciler.pipeline.source import Reads, unchanged
    from reconciler.targets import Registry, Runtime
    env = ("apiVersion: gitops.ray.io/v1alpha1\nkind: Environment\nmetadata: {name: NAME}\nspec:\n"
           "  target: {local: {}}\n  base: bases/app\n").replace
    files = {"environments/a/environment.yaml": env("NAME", "a").encode(),
             "environments/b/environment.yaml": env("NAME", "b").replace("  base: bases/app\n", "").encode(),
             "bases/app/cm.yaml": b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata: {v: '1'}\n"}
    targets = Registry(Runtime(Path("."), Metrics(CollectorRegistry())))

    def inputs(tree: Snapshot, name: str) -> frozenset:
        reads = Reads(tree)
        render(reads, name, "r1", targets)
        return reads.inputs()
    first = Snapshot(dict(files))
    a, b = inputs(first, "a"), inputs(first, "b")
    elsewhere = Snapshot({**files, "NOTES.md": b"x", "environments/c/environment.yaml": env("NAME", "c").encode()})
    assert unchanged(a, elsewhere) and unchanged(b, elsewhere)
    base_edited = Snapshot({**files, "bases/app/cm.yaml": files["bases/app/cm.yaml"].replace(b"'1'", b"'2'")})
    assert not unchanged(a, base_edited) and unchanged(b, base_edited)
    base_grew = Snapshot({**files, "bases/app/more.yaml": b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: m}\n"})
    assert not unchanged(a, base_grew) and unchanged(b, base_grew)
    own_file = Snapshot({**files, "environments/b/cm.yaml": b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n"})
    assert unchanged(a, own_file) and not unchanged(b, own_file)
    gone = Snapshot({k: v for k, v in files.items() if k != "environments/b/environment.yaml"})
    assert not unchanged(b, gone)
