"""Signed commits with real keys and real tools (GnuPG, ssh-keygen, git verify-commit): only revisions
signed by a trusted key are applied; a failing one leaves the last good revision in place, says why,
and is counted; the verifying key's fingerprint is recorded. Real Git and the real local target."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.metrics import Metrics
from reconciler.pipeline.source import GitSource
from reconciler.pipeline.verify import Verifier
from reconciler.targets.local.target import LocalTarget
from tests.conftest import GitRemote
from tests.memory import MemoryTarget, pipeline
from tests.unit.test_reconcile import env_yaml

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("gpg", "ssh-keygen")), reason="needs gpg, ssh-keygen")


class Signers:
    """Alice (OpenPGP) and Bob (SSH) are trusted; Eve (SSH) is not. Commits are made and pushed in `remote`."""

    def __init__(self, remote: GitRemote, root: Path) -> None:
        self.remote, self.keys, self.gnupg = remote, root / "trusted", root / "gnupg"
        self.keys.mkdir()
        self.gnupg.mkdir(mode=0o700)
        self._gpg("--quick-gen-key", "Alice <alice@example.org>", "ed25519", "sign", "never")
        self.alice = self._gpg("--list-keys", "--with-colons").split("fpr:::::::::")[1].split(":")[0]
        (self.keys / "alice.asc").write_text(self._gpg("--armor", "--export", "alice@example.org"))
        for name in ("bob", "eve"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(root / name)],
                           check=True)
        self.bob_key = root / "bob.pub"
        self.eve_key = root / "eve.pub"
        (self.keys / "allowed_signers").write_text(f"bob@example.org {self.bob_key.read_text()}")
        self.bob = subprocess.run(["ssh-keygen", "-lf", str(self.bob_key)], capture_output=True, text=True,
                                  check=True).stdout.split()[1]

    def _gpg(self, *args: str) -> str:
        return subprocess.run(["gpg", "--batch", "--passphrase", "", *args], capture_output=True, text=True,
                              check=True, env={**os.environ, "GNUPGHOME": str(self.gnupg)}).stdout

    def commit(self, message: str, by: str = "") -> str:
        """Commit everything in the work tree, signed by alice, bob or eve ("" = unsigned), and push."""
        config = {"alice": ["-c", "user.signingkey=alice@example.org"],
                  "bob": ["-c", "gpg.format=ssh", "-c", f"user.signingkey={self.bob_key}"],
                  "eve": ["-c", "gpg.format=ssh", "-c", f"user.signingkey={self.eve_key}"]}.get(by, [])
        work = ["git", "-C", str(self.remote.work_path)]
        subprocess.run([*work, "add", "-A"], check=True)
        subprocess.run([*work, *config, "commit", "-q", *(["-S"] if by else []), "-m", message], check=True,
                       env={**os.environ, "GNUPGHOME": str(self.gnupg)})
        subprocess.run([*work, "push", "-q", "origin", "main"], check=True)
        return subprocess.run([*work, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()


def settings(value: str) -> str:
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{value: {value}}}\n"


@pytest.fixture
def stage(remote: GitRemote, tmp_path: Path):
    signers = Signers(remote, tmp_path)

    def make(mode: str):
        state = tmp_path / f"state-{mode}"
        metrics = Metrics(__import__("prometheus_client").CollectorRegistry())
        source = GitSource(remote.url, "main", state / "git", metrics.git_request,
                           Verifier(mode, signers.keys, state))
        return source, pipeline(source, state, LocalTarget(state), metrics), state
    remote.write("environments/a/environment.yaml", env_yaml("a"))
    return remote, signers, make


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

    for by, why in (("", "not signed"), ("eve", "signed by a key that is not trusted")):
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
