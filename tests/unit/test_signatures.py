"""Signed commits with real keys and real tools (GnuPG, ssh-keygen, git verify-commit): only revisions
signed by a trusted key are applied; a failing one leaves the last good revision in place, says why,
and is counted; the verifying key's fingerprint is recorded. Real Git and the real local target."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.errors import TemporaryError
from reconciler.metrics import Metrics
from reconciler.pipeline.source import GitSource
from reconciler.pipeline.verify import Verifier
from reconciler.targets.local.target import LocalTarget
from tests.conftest import GitRemote
from tests.memory import MemoryTarget, pipeline
from tests.unit.test_reconcile import env_yaml

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("gpg", "ssh-keygen")), reason="needs gpg, ssh-keygen")


def agents(home: Path) -> list[str]:
    """The command lines of running GnuPG daemons (gpg-agent, dirmngr, keyboxd) of GNUPGHOME `home`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:  # the process ended meanwhile
            continue
        if Path(args[0]).name in ("gpg-agent", "dirmngr", "keyboxd") and str(home) in args:
            found.append(" ".join(args))
    return found


class Signers:
    """Alice (OpenPGP) and Bob (SSH) are trusted; Eve (SSH) and Mallory (OpenPGP) are not; Olive's OpenPGP
    key is trusted but expired. Commits are made and pushed in `remote`."""

    def __init__(self, remote: GitRemote, root: Path) -> None:
        self.remote, self.keys, self.gnupg = remote, root / "trusted", root / "gnupg"
        self.keys.mkdir()
        self.gnupg.mkdir(mode=0o700)
        self.alice = self._key("Alice <alice@example.org>", "never")
        (self.keys / "alice.asc").write_text(self._gpg("--armor", "--export", "alice@example.org"))
        self.mallory = self._key("Mallory <mallory@example.org>", "never")
        self.olive = self._key("Olive <olive@example.org>", "1d", "--faked-system-time", "20200101T000000")
        (self.keys / "olive.asc").write_text(self._gpg("--armor", "--export", "olive@example.org"))
        self.in_2020 = root / "gpg-in-2020"  # signs as on 2020-01-01, while Olive's key was valid
        self.in_2020.write_text(f"#!/bin/sh\nexec {shutil.which('gpg')} --faked-system-time 20200101T010000 \"$@\"\n")
        self.in_2020.chmod(0o700)
        for name in ("bob", "eve"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(root / name)],
                           check=True)
        self.bob_key = root / "bob.pub"
        self.eve_key = root / "eve.pub"
        (self.keys / "allowed_signers").write_text(f"bob@example.org {self.bob_key.read_text()}")
        self.bob, self.eve = (subprocess.run(["ssh-keygen", "-lf", str(key)], capture_output=True, text=True,
                                             check=True).stdout.split()[1] for key in (self.bob_key, self.eve_key))

    def _gpg(self, *args: str) -> str:
        return subprocess.run(["gpg", "--batch", "--passphrase", "", *args], capture_output=True, text=True,
                              check=True, env={**os.environ, "GNUPGHOME": str(self.gnupg)}).stdout

    def _key(self, uid: str, expires: str, *options: str) -> str:
        """A new signing key; its fingerprint."""
        self._gpg(*options, "--quick-gen-key", uid, "ed25519", "sign", expires)
        return self._gpg("--with-colons", "--list-keys", uid).split("fpr:::::::::")[1].split(":")[0]

    def commit(self, message: str, by: str = "", push: bool = True) -> str:
        """Commit everything in the work tree, signed by alice, bob, eve, mallory or olive ("" = unsigned),
        and push (unless not `push`)."""
        config = {"alice": ["-c", "user.signingkey=alice@example.org"],
                  "mallory": ["-c", "user.signingkey=mallory@example.org"],
                  "olive": ["-c", "user.signingkey=olive@example.org", "-c", f"gpg.program={self.in_2020}"],
                  "bob": ["-c", "gpg.format=ssh", "-c", f"user.signingkey={self.bob_key}"],
                  "eve": ["-c", "gpg.format=ssh", "-c", f"user.signingkey={self.eve_key}"]}.get(by, [])
        work = ["git", "-C", str(self.remote.work_path)]
        subprocess.run([*work, "add", "-A"], check=True)
        subprocess.run([*work, *config, "commit", "-q", "--allow-empty", *(["-S"] if by else []), "-m", message],
                       check=True,
                       env={**os.environ, "GNUPGHOME": str(self.gnupg)})
        if push:
            subprocess.run([*work, "push", "-q", "origin", "main"], check=True)
        return subprocess.run([*work, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()

    def tamper(self, message: str) -> str:
        """A commit signed by alice, then copied (signature included) with another message; the copy is
        pushed."""
        work = ["git", "-C", str(self.remote.work_path)]
        sha = self.commit("signed by alice", by="alice", push=False)
        body = subprocess.run([*work, "cat-file", "commit", sha], capture_output=True, text=True, check=True).stdout
        forged = body[:body.rindex("\n\n") + 2] + message + "\n"
        new = subprocess.run([*work, "hash-object", "-t", "commit", "-w", "--stdin"], input=forged,
                             capture_output=True, text=True, check=True).stdout.strip()
        subprocess.run([*work, "reset", "-q", "--hard", new], check=True)
        subprocess.run([*work, "push", "-q", "origin", "main"], check=True)
        return new

    def close(self) -> None:
        """Stop the agent that signing started."""
        subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": str(self.gnupg)}, check=True)


def settings(value: str) -> str:
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{value: {value}}}\n"


@pytest.fixture
def signers(remote: GitRemote, tmp_path: Path):
    made = Signers(remote, tmp_path)
    yield made
    made.close()


@pytest.fixture
def stage(remote: GitRemote, tmp_path: Path, signers: Signers):

    def make(mode: str):
        state = tmp_path / f"state-{mode}"
        metrics = Metrics(__import__("prometheus_client").CollectorRegistry())
        source = GitSource(remote.url, "main", state / "git", metrics.git_request,
                           Verifier(mode, signers.keys, state))
        return source, pipeline(source, state, LocalTarget(state), metrics), state
    remote.write("environments/a/environment.yaml", env_yaml("a"))
    yield remote, signers, make


def applied_value(state: Path) -> str:
    return json.loads((state / "local/objects/a/ConfigMap.default.settings.json").read_text())["manifest"]["data"][
        "value"]


def test_head_mode_applies_trusted_heads_and_keeps_the_last_good_one_otherwise(stage) -> None:
    remote, signers, make = stage
    remote.write("environments/a/settings.yaml", settings("one"))
    good = signers.commit("one, signed by alice (OpenPGP)", by="alice")
    source, reconciler, state = make("head")
    result = reconciler.reconcile("a", source.fetch())
    assert (result.sync_status, applied_value(state)) == ("Synced", "one")
    assert reconciler.ledger.history("a")[0][5] == signers.alice
    assert reconciler.ledger.state("a").detail["signer"] == signers.alice

    for by, why in (("", "not signed"), ("eve", f"signed by key {signers.eve}, which is not a trusted key (not in "
                                                "trusted_keys' allowed_signers)")):
        remote.write("environments/a/settings.yaml", settings(f"by-{by or 'nobody'}"))
        bad = signers.commit("a change", by=by)
        result = reconciler.reconcile("a", source.fetch())
        assert (result.sync_status, result.message) == ("Unverified", f"Unverified: {bad[:12]}: {why}")
        assert applied_value(state) == "one" and result.revision == good

    assert reconciler.metrics.registry.get_sample_value("ray_gitops_git_verification_failures_total") == 2
    remote.write("environments/a/settings.yaml", settings("two"))
    ssh = signers.commit("two, signed by bob (SSH)", by="bob")
    result = reconciler.reconcile("a", source.fetch())
    assert (result.sync_status, result.revision, applied_value(state)) == ("Synced", ssh, "two")
    assert reconciler.ledger.history("a")[0][5] == signers.bob


def test_strict_mode_refuses_a_signed_head_over_an_unsigned_commit(stage) -> None:
    remote, signers, make = stage
    remote.write("environments/a/settings.yaml", settings("one"))
    signers.commit("one", by="alice")
    strict, reconciler, state = make("strict")
    head_only, _, _ = make("head")
    reconciler.reconcile("a", strict.fetch())
    head_only.fetch()
    remote.write("environments/a/settings.yaml", settings("two"))
    middle = signers.commit("two, unsigned")
    remote.write("environments/a/settings.yaml", settings("three"))
    head = signers.commit("three", by="bob")

    assert head_only.fetch().sha == head  # only the head is checked there
    result = reconciler.reconcile("a", strict.fetch())

    assert (result.sync_status, result.message) == ("Unverified", f"Unverified: {middle[:12]}: not signed")
    assert applied_value(state) == "one"

    # the README's recovery: re-sign the commits after the last verified head, then force-push
    work = ["git", "-C", str(remote.work_path)]
    subprocess.run([*work, "-c", "user.signingkey=alice@example.org", "rebase", "-q", "--force-rebase",
                    "--gpg-sign", result.revision], check=True, env={**os.environ, "GNUPGHOME": str(signers.gnupg)})
    subprocess.run([*work, "push", "-q", "--force-with-lease", "origin", "main"], check=True)
    result = reconciler.reconcile("a", strict.fetch())
    assert (result.sync_status, result.revision) == ("Synced", remote.repo.head.commit.hexsha)
    assert applied_value(state) == "three"


def test_a_branch_put_back_on_the_verified_head_is_synced_again(stage) -> None:
    remote, signers, make = stage
    remote.write("environments/a/settings.yaml", settings("one"))
    good = signers.commit("one", by="alice")
    source, reconciler, state = make("head")
    reconciler.reconcile("a", source.fetch())
    remote.write("environments/a/settings.yaml", settings("two"))
    signers.commit("two, unsigned")
    assert reconciler.reconcile("a", source.fetch()).sync_status == "Unverified"

    subprocess.run(["git", "-C", str(remote.work_path), "reset", "-q", "--hard", good], check=True)
    subprocess.run(["git", "-C", str(remote.work_path), "push", "-q", "--force", "origin", "main"], check=True)
    result = reconciler.reconcile("a", source.fetch())

    assert (result.sync_status, result.revision, source.unverified) == ("Synced", good, None)
    assert applied_value(state) == "one"


def test_an_unverified_head_is_reported_to_the_target_once(stage, tmp_path: Path) -> None:
    remote, signers, make = stage
    remote.write("environments/a/settings.yaml", settings("one"))
    signers.commit("one", by="alice")
    source, _, _ = make("head")
    target = MemoryTarget()
    reconciler = pipeline(source, tmp_path / "memory-state", target)
    reconciler.reconcile("a", source.fetch())
    remote.write("environments/a/settings.yaml", settings("two"))
    bad = signers.commit("unsigned")

    for _ in range(3):
        reconciler.reconcile("a", source.fetch())

    assert target.warnings == [("a", "Unverified", f"revision {bad[:12]}: not signed; the last verified revision "
                                                  "stays applied")]


def test_a_refusal_names_the_signing_key_and_why_it_is_not_trusted(stage) -> None:
    remote, signers, make = stage
    remote.write("environments/a/settings.yaml", settings("one"))
    signers.commit("one", by="alice")
    source, reconciler, state = make("head")
    reconciler.reconcile("a", source.fetch())
    cases = [
        (lambda: signers.commit("by mallory", by="mallory"),
         f"signed by key {signers.mallory}, which is not a trusted key (not among trusted_keys)"),
        (lambda: signers.commit("by olive, in 2020", by="olive"), f"signed by key {signers.olive}, which has expired"),
        (lambda: signers.tamper("message changed after signing"),
         f"signed by key {signers.alice[-16:]}, but the signature is bad (the commit is not what was signed)"),
    ]
    for make_head, why in cases:
        bad = make_head()
        result = reconciler.reconcile("a", source.fetch())
        assert (result.sync_status, result.message) == ("Unverified", f"Unverified: {bad[:12]}: {why}")
        assert applied_value(state) == "one"


def test_no_gpg_agent_outlives_the_daemon(stage, tmp_path: Path) -> None:
    remote, signers, _ = stage
    remote.write("environments/a/settings.yaml", settings("one"))
    signers.commit("one", by="alice")
    state = tmp_path / "daemon-state"
    (state / "gnupg").mkdir(parents=True, mode=0o700)  # an agent an earlier version left running in the keyring
    subprocess.run(["gpgconf", "--launch", "gpg-agent"], env={**os.environ, "GNUPGHOME": str(state / "gnupg")},
                   check=True)
    assert len(agents(state / "gnupg")) == 1
    cmd = [sys.executable, "-m", "reconciler", "run", "--once", "--repo", remote.url, "--environment", "a",
           "--state-dir", str(state), "--verify-commits", "head", "--trusted-keys", str(signers.keys)]

    for value in ("one", "two"):  # the second start rebuilds the keyring of a state dir in use before
        remote.write("environments/a/settings.yaml", settings(value))
        signers.commit(value, by="alice")
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert applied_value(state) == value
        assert agents(state / "gnupg") == []


class Recalled:
    """The daemon's VerifiedHeads after its state dir was lost: nothing of its own, `heads` from the clusters'
    ledger copies."""

    def __init__(self, *heads: str) -> None:
        self.heads = list(heads)

    def last_verified(self, url: str, branch: str) -> tuple[str, str] | None:
        return None

    def record_verified(self, url: str, branch: str, revision: str, signer: str) -> None:
        """Kept nowhere: each fresh source starts from `heads` alone."""

    def recalled(self) -> list[str]:
        return self.heads


def fresh(remote: GitRemote, signers: Signers, state: Path, *recalled: str, allow_rewrite: bool = False) -> GitSource:
    """A strict source on an empty state dir whose clusters remember `recalled`."""
    return GitSource(remote.url, "main", state / "git", verifier=Verifier("strict", signers.keys, state, allow_rewrite),
                     heads=Recalled(*recalled))


def force_push(remote: GitRemote, sha: str) -> None:
    """Reset the branch to `sha` and force-push it (a rollback of history)."""
    remote.repo.git.reset("-q", "--hard", sha)
    remote.repo.git.push("-q", "--force", "origin", "main")


def test_strict_mode_refuses_a_rollback_of_history_unless_rewrites_are_allowed(stage, tmp_path: Path) -> None:
    remote, signers, make = stage
    remote.write("environments/a/settings.yaml", settings("one"))
    old = signers.commit("one", by="alice")
    strict, reconciler, state = make("strict")
    allowing = fresh(remote, signers, tmp_path / "allowing", allow_rewrite=True)
    reconciler.reconcile("a", strict.fetch())
    allowing.fetch()
    remote.write("environments/a/settings.yaml", settings("two"))
    new = signers.commit("two", by="alice")
    reconciler.reconcile("a", strict.fetch())
    allowing.fetch()

    force_push(remote, old)
    result = reconciler.reconcile("a", strict.fetch())

    assert (result.sync_status, result.revision) == ("Unverified", new)
    assert f"not a descendant of the last verified head {new[:12]}" in result.message
    assert applied_value(state) == "two"
    assert allowing.fetch().sha == old


@pytest.mark.parametrize("served", [True, False], ids=["old-head-still-served", "old-head-pruned-on-the-server"])
def test_strict_mode_after_a_lost_state_dir_refuses_a_rollback_past_the_recalled_head(
        stage, tmp_path: Path, served: bool) -> None:
    remote, signers, _ = stage
    remote.write("environments/a/settings.yaml", settings("one"))
    old = signers.commit("one", by="alice")
    remote.write("environments/a/settings.yaml", settings("two"))
    verified = signers.commit("two", by="alice")
    force_push(remote, old)
    if not served:  # the rolled-back commit is gone from the server too: it cannot be fetched by id
        bare = ["git", "-C", str(remote.bare_path)]
        subprocess.run([*bare, "reflog", "expire", "--expire=now", "--all"], check=True)
        subprocess.run([*bare, "gc", "-q", "--prune=now"], check=True)

    lost = fresh(remote, signers, tmp_path / "lost", verified)

    if served:  # fetched by id: the last verified head stays applied
        assert lost.fetch().sha == verified
        assert lost.unverified and lost.unverified[0] == old
        assert f"not a descendant of the last verified head {verified[:12]}" in lost.unverified[1]
    else:
        with pytest.raises(TemporaryError) as refused:
            lost.fetch()
        assert str(refused.value).startswith(
            f"revision {old[:12]} is not applied: {old[:12]}: the last verified head {verified[:12]} (remembered by "
            "the cluster's ledger) is not in the branch's history")
    assert fresh(remote, signers, tmp_path / "allowing", verified, allow_rewrite=True).fetch().sha == old


def test_strict_mode_after_a_lost_state_dir_checks_every_commit_since_the_recalled_head(
        stage, tmp_path: Path) -> None:
    remote, signers, _ = stage
    remote.write("environments/a/settings.yaml", settings("one"))
    verified = signers.commit("one", by="alice")
    remote.write("environments/a/settings.yaml", settings("two"))
    middle = signers.commit("two, unsigned")
    remote.write("environments/a/settings.yaml", settings("three"))
    head = signers.commit("three", by="bob")

    lost = fresh(remote, signers, tmp_path / "lost", verified)
    revision = lost.fetch()  # the recalled head stays applied

    assert (revision.sha, lost.unverified) == (verified, (head, f"{middle[:12]}: not signed"))
    assert fresh(remote, signers, tmp_path / "signed", middle).fetch().sha == head
