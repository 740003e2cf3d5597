"""Secret values never in clear: digests keyed with the installation's key (so a weak value cannot be guessed
offline), the key made once by the daemon and read by the commands that look, and the API server's text left
out of errors about a Secret."""
from __future__ import annotations

import hashlib
import hmac
import re
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.errors import ConfigError
from reconciler.kubeapi import ApiError
from reconciler.model import DesiredObject, ObjectRef
from reconciler.pipeline import diff
from reconciler.service.config import derived, installation_key
from reconciler.targets.kubernetes.apply import translate
from tests.conftest import GitRemote

LOCAL = "apiVersion: gitops.ray.io/v1alpha1\nkind: Environment\nmetadata: {name: team-a}\nspec: {target: {local: {}}}\n"
SECRET = "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData: {password: hunter2}\n"


def keyed(key: bytes, value: str) -> str:
    return "hmac-sha256:" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:12]


@pytest.fixture
def key() -> Iterator[bytes]:
    """A digest key set for the test, and this process's own key back afterwards."""
    before = diff._digest_key
    diff.use_digest_key(b"k" * 32)
    yield b"k" * 32
    diff.use_digest_key(before)


def test_a_digest_is_an_hmac_under_the_key_stable_and_idempotent(key: bytes) -> None:
    shown = diff.digest("hunter2")

    assert shown == keyed(key, "hunter2") == diff.digest("hunter2") == diff.digest(shown)
    assert shown != "sha256:" + hashlib.sha256(b"hunter2").hexdigest()[:12]  # the unkeyed digest anyone can compute
    diff.use_digest_key(b"o" * 32)
    assert diff.digest("hunter2") != shown


def test_a_secret_is_normalized_to_keyed_digests_and_other_kinds_are_not(key: bytes) -> None:
    secret = {"kind": "Secret", "data": {"a": "aHVudGVyMg=="}, "stringData": {"b": "hunter2"}}
    config = {"kind": "ConfigMap", "data": {"a": "hunter2"}}

    assert diff.hide_secret_values(secret) == {**secret, "data": {"a": keyed(key, "aHVudGVyMg==")},
                                               "stringData": {"b": keyed(key, "hunter2")}}
    assert diff.hide_secret_values(config) is config


def test_the_daemon_makes_the_key_once_0600_and_every_caller_gets_the_same(tmp_path: Path) -> None:
    found: list[bytes] = []
    threads = [threading.Thread(target=lambda: found.append(installation_key(tmp_path / "state", create=True)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    path = tmp_path / "state" / "installation-key"
    assert len(set(found)) == 1 and found[0] == path.read_bytes() and len(found[0]) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["installation-key"]  # no temporary file left
    assert installation_key(tmp_path / "state") == found[0]


def test_a_command_that_looks_makes_no_key_and_uses_one_of_its_own(tmp_path: Path) -> None:
    first, second = installation_key(tmp_path), installation_key(tmp_path)

    assert len(first) == 32 and first != second
    assert list(tmp_path.iterdir()) == []


def test_a_key_file_of_another_size_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "installation-key").write_bytes(b"short")

    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}/installation-key: must hold 32 bytes, holds 5")):
        installation_key(tmp_path, create=True)


@pytest.mark.parametrize("kind, shown", [
    pytest.param("Secret", False, id="secret"),
    pytest.param("ConfigMap", True, id="configmap"),
])
def test_the_api_servers_text_is_left_out_of_an_error_about_a_secret(kind: str, shown: bool) -> None:
    ref = ObjectRef("", kind, "team-a", "db")
    error = ApiError(422, "Invalid", f'{kind} "db" is invalid: data[password]: Invalid value: "hunter2"',
                     {"details": {"causes": [{"field": "data[password]"}]}})

    message = str(translate(ref, error, DesiredObject(ref, {}, "environments/team-a/s.yaml", 0)))

    assert message.startswith(f"{kind}/team-a/db: environments/team-a/s.yaml#0: rejected by the API server: ")
    assert message.endswith("(fields: data[password])") and ("hunter2" in message) == shown


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, timeout=120)


def test_render_shows_the_daemons_digests_once_the_daemon_made_its_key(remote: GitRemote, tmp_path: Path) -> None:
    remote.write("environments/team-a/environment.yaml", LOCAL)
    remote.write("environments/team-a/s.yaml", SECRET)
    remote.commit("a secret")
    state, other = tmp_path / "state", tmp_path / "other"
    render = ["render", "--repo", remote.url, "--environment", "team-a", "--state-dir"]

    assert cli("run", "--once", "--repo", remote.url, "--state-dir", str(state)).returncode == 0
    daemons, own = cli(*render, str(state)), cli(*render, str(other))

    key = derived((state / "installation-key").read_bytes(), "secret-digests")
    assert f"password: {keyed(key, 'hunter2')}" in daemons.stdout
    assert "password: hmac-sha256:" in own.stdout and keyed(key, "hunter2") not in own.stdout
    assert not (other / "installation-key").exists() and "hunter2" not in daemons.stdout + own.stdout
