"""Commit signatures: is a fetched revision signed by a key the daemon trusts?

Configured by the daemon, never by the repository (whoever can push could change the keys):
`verify_commits` is `head` (the new head commit must carry a valid signature by a trusted key) or
`strict` (every commit new since the last verified head must), and `trusted_keys` is a directory
of OpenPGP public keys (`*.asc`) and an SSH `allowed_signers` file. The real tools decide:
`git verify-commit`, with a keyring of exactly the trusted OpenPGP keys (its own GNUPGHOME under the
state dir, rebuilt when the key files change) and `gpg.ssh.allowedSignersFile` for SSH signatures.
Used by `GitSource.fetch`, under its lock.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import git

from ..errors import ConfigError

MODES = ("head", "strict")


@dataclass(frozen=True)
class Verdict:
    """A verification: the signing key of the head (its fingerprint) or why it failed (`sha: reason`)."""

    signer: str = ""
    failure: str = ""


class Verifier:
    """Checks commits against the trusted keys in `keys` (a directory), with a keyring under `home`."""

    def __init__(self, mode: str, keys: Path, home: Path, allow_rewrite: bool = False) -> None:
        if mode not in MODES:
            raise ConfigError(f"verify_commits must be one of {', '.join(MODES)}, got {mode!r}")
        if not keys.is_dir():
            raise ConfigError(f"trusted_keys {keys}: not a directory of *.asc keys and an allowed_signers file")
        self.mode, self.keys, self.home, self.allow_rewrite = mode, keys, home, allow_rewrite
        self._imported = ""  # digest of the key files the keyring was built from

    def _keyring(self) -> Path:
        """The GNUPGHOME holding exactly the trusted OpenPGP keys (rebuilt when the files change)."""
        files = sorted(self.keys.glob("*.asc"))
        digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()
        gnupg = self.home / "gnupg"
        if digest != self._imported:
            shutil.rmtree(gnupg, ignore_errors=True)
            gnupg.mkdir(parents=True, mode=0o700)
            for path in files:
                done = subprocess.run(["gpg", "--batch", "--quiet", "--import", str(path)], capture_output=True,
                                      env={"GNUPGHOME": str(gnupg), "PATH": "/usr/bin:/bin"}, timeout=60)
                if done.returncode != 0:
                    raise ConfigError(f"trusted_keys {path}: gpg cannot import it: "
                                      f"{done.stderr.decode(errors='replace').strip()[-200:]}")
            self._imported = digest
        return gnupg

    def check(self, repo: git.Repo, head: str, verified: str) -> Verdict:
        """Verify `head` (mode head), or every commit reachable from it and not from `verified`, the last
        verified head (mode strict; all of `head`'s own only when there is none)."""
        if self.mode == "strict" and verified and not self.allow_rewrite and not descends(repo, verified, head):
            return Verdict(failure=f"{head[:12]}: not a descendant of the last verified head {verified[:12]} (history "
                                   "was rewritten; the daemon setting verify_allow_rewrite allows it)")
        if self.mode == "strict" and verified:
            commits = repo.git.rev_list(head, "--not", verified).split() or [head]
        else:
            commits = [head]
        config = ["-c", f"gpg.ssh.allowedSignersFile={self.keys / 'allowed_signers'}"]
        env = {"GNUPGHOME": str(self._keyring())}
        git_ = ["git", "-C", str(repo.git_dir), *config]
        environ = {**{k: v for k, v in os.environ.items() if not k.startswith("GIT_")}, **env}
        for sha in commits:
            if subprocess.run([*git_, "verify-commit", sha], capture_output=True, env=environ, timeout=60).returncode:
                code = subprocess.run([*git_, "log", "-1", "--format=%G?", sha], capture_output=True, text=True,
                                      env=environ, timeout=60).stdout.strip()
                return Verdict(failure=f"{sha[:12]}: {REASONS.get(code, 'signature does not verify')}")
        signer = subprocess.run([*git_, "log", "-1", "--format=%GF", head], capture_output=True, text=True,
                                env=environ, timeout=60).stdout.strip()
        return Verdict(signer=signer)


def descends(repo: git.Repo, older: str, newer: str) -> bool:
    """`older` is `newer` or one of its ancestors."""
    try:
        repo.git.merge_base("--is-ancestor", older, newer)
    except git.GitCommandError:
        return False
    return True


# git's %G? of a commit that `git verify-commit` refused
REASONS = {"N": "not signed", "B": "bad signature", "E": "signed by a key that is not trusted",
           "U": "signed by a key that is not trusted", "X": "signature expired", "Y": "signed by an expired key",
           "R": "signed by a revoked key"}
