"""The CLI's contract: output and exit codes of validate, diff and status (real Git, no Ray needed)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reconciler.commands.cli import main
from tests.conftest import GitRemote

ROOT = Path(__file__).resolve().parents[2]
TESTDATA = ROOT / "tests" / "testdata"


def test_validate_accepts_this_repositorys_environments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(ROOT)]) == 0
    assert "ok: environment local" in capsys.readouterr().out


def test_validate_reports_every_error_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = tmp_path / "environments" / "e2e"
    env.mkdir(parents=True)
    shutil.copy(TESTDATA / "environment-local.yaml", env / "environment.yaml")
    (env / "c.yaml").write_text((TESTDATA / "raycluster.yaml").read_text().replace("REPLICAS", "-1"))

    assert main(["validate", str(env)]) == 1
    assert ("environments/e2e/c.yaml#0: RayCluster/demo: spec.workerGroupSpecs[0].replicas: must be an integer >= 0"
            in capsys.readouterr().err)


def test_validate_prints_a_warning_and_still_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = tmp_path / "environments" / "e2e"
    env.mkdir(parents=True)
    shutil.copy(TESTDATA / "environment-local.yaml", env / "environment.yaml")
    (env / "c.yaml").write_text((TESTDATA / "raycluster.yaml").read_text().replace("REPLICAS", "1").replace(
        "maxReplicas: 4", "maxReplicas: 1000000"))

    assert main(["validate", str(env)]) == 0
    out, err = capsys.readouterr()
    assert "ok: environment e2e: 1 object(s)" in out
    assert err.startswith("warning: environments/e2e/c.yaml#0: RayCluster/demo: spec.workerGroupSpecs[0].maxReplicas: "
                          "1000000 is above the local target's limit of ")


def test_diff_exits_1_with_changes_and_2_on_invalid_input(remote: GitRemote, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    remote.write("environments/e2e/environment.yaml", (TESTDATA / "environment-local.yaml").read_text())
    remote.write("environments/e2e/raycluster.yaml",
                 (TESTDATA / "raycluster.yaml").read_text().replace("REPLICAS", "1"))
    remote.commit("one cluster")
    args = ["diff", "--repo", remote.url, "--environment", "e2e", "--state-dir", str(tmp_path / "state")]

    assert main(args) == 1
    out = capsys.readouterr().out
    assert "  create RayCluster/default/demo: not on the target" in out and "+++ git/RayCluster/default/demo" in out

    remote.write("environments/e2e/bad.yaml", "kind: RayCluster\n")
    remote.commit("broken")
    assert main(args) == 2
    assert "environments/e2e/bad.yaml#0" in capsys.readouterr().err


def test_status_prints_what_the_ledger_holds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from reconciler.model import Health, SyncStatus
    from reconciler.pipeline.ledger import EnvironmentState, Ledger
    detail = {"clusters": {"demo": {"health": "Healthy", "groups": {"cpu": {"ready": 1, "desired": 2}}}},
              "jobs": {"count": {"status": "SUCCEEDED", "health": "Healthy"}}}
    Ledger(tmp_path).commit("prod", state=EnvironmentState("prod", "local", "a" * 40, SyncStatus.OUT_OF_SYNC,
                                                           Health.DEGRADED, "why", 0.0, detail))

    assert main(["status", "--state-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["ENVIRONMENT", "TARGET", "REVISION", "SYNC", "HEALTH", "UPDATED", "MESSAGE"]
    assert table[1].split()[:5] == ["prod", "local", "a" * 12, "OutOfSync", "Degraded"]
    assert table[2:] == ["  RayCluster demo: Healthy; workers ready/desired: cpu 1/2",
                         "  RayJob count: SUCCEEDED (Healthy)"]
    assert main(["status", "--state-dir", str(tmp_path), "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["sync_status"] == "OutOfSync"


@pytest.mark.parametrize("target, message", [
    pytest.param("kubernetes: {cluster: prod}", "spec.target.kubernetes.namespace: required field is missing",
                 id="kubernetes-needs-namespace"),
    pytest.param("kubernetes: {namespace: x, kubeconfig: /etc/shadow}", "spec.target.kubernetes.kubeconfig: Git may "
                 "not name the daemon's credentials (a file, a context or its own service account): name a cluster of "
                 "the daemon's settings instead", id="no-path-from-git"),
    pytest.param("kubernetes: {namespace: x, context: admin}", "spec.target.kubernetes.context: Git may not name",
                 id="no-context-from-git"),
    pytest.param("kubernetes: {namespace: kube-system}", "spec.target.kubernetes: namespace kube-system is protected",
                 id="protected-namespace"),
    pytest.param("local: {persit: true}", "spec.target.local.persit: unknown option (known: persist)", id="typo"),
    pytest.param("local: {persist: 'yes'}", "spec.target.local.persist: must be true or false", id="not-a-bool"),
])
def test_target_options_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str,
                                    message: str) -> None:
    env = tmp_path / "environments" / "e2e"
    env.mkdir(parents=True)
    (env / "environment.yaml").write_text((TESTDATA / "environment-local.yaml").read_text().replace(
        "target: {local: {}}", f"target: {{{target}}}"))
    assert main(["validate", str(env)]) == 1
    assert message in capsys.readouterr().err


def test_run_never_prints_credentials_from_the_repository_url(tmp_path: Path) -> None:
    import subprocess
    import sys
    url = "https://user:s3cret@tok/en@127.0.0.1:9/none.git"  # a raw '@' and '/' in the password
    proc = subprocess.run([sys.executable, "-m", "reconciler", "run", "--repo", url, "--once", "--state-dir",
                           str(tmp_path), "--environment", "x"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "s3cret" not in proc.stdout + proc.stderr and "tok/en" not in proc.stdout + proc.stderr
    assert "git fetch of https://127.0.0.1:9/none.git branch main failed" in proc.stderr
    stored = "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())
    assert "s3cret" not in stored
    assert "https://127.0.0.1:9/none.git" in next((tmp_path / "git").glob("*/config")).read_text()
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.rglob("*") if p.is_file()} <= {"0o600", "0o700"}
    assert oct(tmp_path.stat().st_mode & 0o777) == "0o700"
