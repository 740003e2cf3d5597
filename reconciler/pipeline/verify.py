"""Commit signatures: is a fetched revision signed by a key the daemon trusts?

Configured by the daemon, never by the repository (whoever can push could change the keys):
`verify_commits` is `head` (the new head commit must carry a valid signature by a trusted key) or
`strict` (every commit new since the last verified head must), and `trusted_keys` is a directory
of OpenPGP public keys (`*.asc`) and an SSH `allowed_signers` file. The real tools decide:
`git verify-commit`, with a keyring of exactly the trusted OpenPGP keys (its own GNUPGHOME under the
state dir, rebuilt when the key files change) and `gpg.ssh.allowedSignersFile` for SSH signatures.
Importing and verifying public keys needs no gpg-agent, so that GNUPGHOME says `no-autostart`: no
agent outlives the daemon. Used by `GitSource.fetch`, under its lock.
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
        """The GNUPGHOME holding exactly the trusted OpenPGP keys (rebuilt when the files change), whose
        gpg never starts an agent (one left by an earlier version is stopped before its home goes)."""
        files = sorted(self.keys.glob("*.asc"))
        digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()
        gnupg = self.home / "gnupg"
        if digest != self._imported:
            env = {"GNUPGHOME": str(gnupg), "PATH": "/usr/bin:/bin"}
            if gnupg.is_dir():
                subprocess.run(["gpgconf", "--kill", "all"], capture_output=True, env=env, timeout=60)
            shutil.rmtree(gnupg, ignore_errors=True)
            gnupg.mkdir(parents=True, mode=0o700)
            (gnupg / "gpg.conf").write_text("no-autostart\n")  # also for the gpg that git verify-commit runs
            for path in files:
                done = subprocess.run(["gpg", "--batch", "--quiet", "--import", str(path)], capture_output=True,
                                      env=env, timeout=60)
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
            checked = subprocess.run([*git_, "verify-commit", "--raw", sha], capture_output=True, text=True,
                                     env=environ, timeout=60)
            if checked.returncode:
                code, key, key_id = subprocess.run([*git_, "log", "-1", "--format=%G?%n%GF%n%GK", sha],
                                                   capture_output=True, text=True, env=environ,
                                                   timeout=60).stdout.split("\n")[:3]
                return Verdict(failure=f"{sha[:12]}: {refusal(code, key or issuer(checked.stderr) or key_id)}")
        signer = subprocess.run([*git_, "log", "-1", "--format=%GF", head], capture_output=True, text=True,
                                env=environ, timeout=60).stdout.strip()
        return Verdict(signer=signer)


def refusal(code: str, key: str) -> str:
    """Why a commit's signature is refused, naming the key that signed: from git's %G? (`code`)."""
    if code == "N":
        return "not signed"
    why = REASONS.get(code, "whose signature does not verify")
    return f"signed by key {key or '(unknown)'}, {why}"


def issuer(status: str) -> str:
    """The signing key's fingerprint from gpg's status lines when the key is not in the keyring
    (`ERRSIG <keyid> <algo> <hash> <class> <time> <rc> <fingerprint>`), else ""."""
    for line in status.splitlines():
        fields = line.split()
        if fields[:2] == ["[GNUPG:]", "ERRSIG"] and len(fields) > 8:
            return fields[8]
    return ""


def descends(repo: git.Repo, older: str, newer: str) -> bool:
    """`older` is `newer` or one of its ancestors."""
    try:
        repo.git.merge_base("--is-ancestor", older, newer)
    except git.GitCommandError:
        return False
    return True


# git's %G? of a commit that `git verify-commit` refused ("U" from SSH: a key not in allowed_signers)
REASONS = {"B": "but the signature is bad (the commit is not what was signed)",
           "E": "which is not a trusted key (not among trusted_keys)",
           "U": "which is not a trusted key (not in trusted_keys' allowed_signers)",
           "X": "but the signature has expired", "Y": "which has expired", "R": "which is revoked"}
