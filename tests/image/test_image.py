"""The image, built from the Dockerfile and run the way manifests/deployment.yaml runs it.

tests/image/build.sh builds it with podman (no Docker engine here) on a Debian trixie base made by
mmdebstrap and cached. Each container then runs with a read-only root filesystem, no network, as
uid 65532, with tmpfs only at /tmp and the state volume (the Deployment's emptyDirs). Every
container is removed by its id at the end, pass or fail.

Skipped where podman, runc or mmdebstrap are missing or where we are not root; with
RAY_GITOPS_IMAGE_TEST=required (set by .ci/run) it fails instead of skipping.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import git
import pytest

REPO = Path(__file__).resolve().parents[2]
TAG = "localhost/ray-gitops:test"
UID = 65532
STATE = "/var/lib/ray-gitops"
ENVIRONMENTS = ("alpha", "beta", "gamma")
SIZE_BUDGET = 450_000_000  # bytes; 393 MB measured (577 MB when the base kept apt's .deb files)

pytestmark = [pytest.mark.image, pytest.mark.timeout(1500)]

# The sandbox refuses crun and the default rlimits ("error setting rlimit type 7: operation not
# permitted"), so runc with explicit limits. --read-only-tmpfs=false: no writable /run or /var/tmp
# beyond what the Deployment mounts.
RUN_FLAGS = [
    "--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000",
    "--read-only", "--read-only-tmpfs=false", "--network", "none", "--user", f"{UID}:{UID}",
    "--tmpfs", "/tmp:rw,size=64m", "--tmpfs", f"{STATE}:rw,size=64m,mode=0700,U",
]

# Runs inside the container (its network namespace holds only loopback): prints the HTTP status of
# sys.argv[1], then the body.
PROBE = """\
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen("http://127.0.0.1:9464" + sys.argv[1], timeout=5) as r:
        print(r.status); sys.stdout.write(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code)
except OSError as e:
    print("down", e)
"""


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """One podman command, bounded in time; never raises on a non-zero exit."""
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def image() -> str:
    """Build (or find in podman's layer cache) the image; skip where the tools are missing."""
    missing = [tool for tool in ("podman", "runc", "mmdebstrap") if shutil.which(tool) is None]
    reason = ""
    if missing:
        reason = f"needs {', '.join(missing)}: apt-get install podman buildah runc mmdebstrap (.ci/run does)"
    elif os.geteuid() != 0:
        reason = "needs root (podman build --isolation chroot and the base bootstrap run as root)"
    if reason:
        if os.environ.get("RAY_GITOPS_IMAGE_TEST") == "required":
            pytest.fail(f"RAY_GITOPS_IMAGE_TEST=required, but the image test {reason}")
        pytest.skip(reason)
    build = subprocess.run(["bash", str(REPO / "tests/image/build.sh"), TAG], capture_output=True,
                           text=True, timeout=1400, check=False)
    assert build.returncode == 0, build.stderr[-6000:]
    assert build.stdout.strip().splitlines()[-1] == TAG
    return TAG


class Containers:
    """Starts containers of one image and keeps every id (via --cidfile) so all can be removed."""

    def __init__(self, image: str, workdir: Path) -> None:
        self.image = image
        self.workdir = workdir
        self.cidfiles: list[Path] = []

    def run(self, *args: str, mounts: dict[Path, str] | None = None, entrypoint: str | None = None,
            detach: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`podman run` of the image with RUN_FLAGS; `args` go to the entrypoint."""
        cidfile = self.workdir / f"container-{len(self.cidfiles)}.cid"
        self.cidfiles.append(cidfile)
        flags = [*RUN_FLAGS, "--cidfile", str(cidfile), "-d" if detach else "--rm"]
        for source, target in (mounts or {}).items():
            flags += ["-v", f"{source}:{target}:ro"]
        if entrypoint:
            flags += ["--entrypoint", entrypoint]
        return podman("run", *flags, self.image, *args, timeout=timeout)

    def ids(self) -> list[str]:
        """Ids of every container started so far (from their cidfiles)."""
        return [f.read_text().strip() for f in self.cidfiles if f.exists() and f.read_text().strip()]

    def remove_all(self) -> None:
        """Remove every container started, running or not; check that none is left."""
        ids = self.ids()
        if ids:
            podman("rm", "--force", "--ignore", "--time", "0", *ids, timeout=60)
            left = [cid for cid in ids if podman("container", "exists", cid, timeout=30).returncode == 0]
            assert not left, f"containers left behind: {left}"


@pytest.fixture
def containers(image: str, tmp_path: Path) -> Iterator[Containers]:
    """A Containers for the test's image, whose containers are all removed at teardown."""
    started = Containers(image, tmp_path)
    try:
        yield started
    finally:
        started.remove_all()


def write_environment(root: Path, name: str) -> None:
    """environments/<name>/: a local target and one ConfigMap (no Ray needed to apply it)."""
    env = root / "environments" / name
    env.mkdir(parents=True)
    (env / "environment.yaml").write_text(
        "apiVersion: gitops.ray.io/v1alpha1\nkind: Environment\n"
        f"metadata: {{name: {name}}}\nspec:\n  target: {{local: {{}}}}\n  interval: 2s\n")
    (env / "configmap.yaml").write_text(
        f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{environment: {name}}}\n")


def config_repository(root: Path) -> str:
    """A Git repository with three valid environments on `main`, owned by the image's user; its SHA.

    Owned by 65532 because git in the container refuses a repository owned by another user
    (dubious ownership): the daemon's fetch then fails with "Could not read from remote repository".
    """
    for name in ENVIRONMENTS:
        write_environment(root, name)
    repo = git.Repo.init(root, initial_branch="main")
    repo.git.add(A=True)
    who = {"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
           "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}
    repo.git.commit("-m", "three environments", env=who)
    sha = repo.head.commit.hexsha
    for path in [root, *root.rglob("*")]:
        os.chown(path, UID, UID, follow_symlinks=False)
    return sha


def test_the_image_is_configured_as_the_deployment_expects_and_within_its_size_budget(image: str) -> None:
    inspected = podman("image", "inspect", image, timeout=60)
    assert inspected.returncode == 0, inspected.stderr
    [info] = json.loads(inspected.stdout)
    config = info["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["ray-gitops"] and config["Cmd"] == ["run"]
    assert f"RAY_GITOPS_STATE_DIR={STATE}/state" in config["Env"]
    assert info["Size"] < SIZE_BUDGET, f"image is {info['Size'] / 1e6:.0f} MB"


def test_help_runs_and_the_image_has_git_and_ssh_but_no_ray_and_no_pip(containers: Containers) -> None:
    helped = containers.run("--help")
    assert helped.returncode == 0, helped.stderr
    for command in ("run", "diff", "validate", "status", "plan", "history", "rollback", "suspend", "resume"):
        assert re.search(rf"\b{command}\b", helped.stdout), command
    check = ("import importlib.util as u, os, shutil;"
             "print(os.getuid(), bool(shutil.which('git')), bool(shutil.which('ssh')),"
             " u.find_spec('ray') is None, u.find_spec('pip') is None)")
    inside = containers.run("-c", check, entrypoint="python")
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.split() == [str(UID), "True", "True", "True", "True"]


def test_validate_of_a_mounted_repository(containers: Containers, tmp_path: Path) -> None:
    good = tmp_path / "good"
    for name in ENVIRONMENTS:
        write_environment(good, name)
    valid = containers.run("validate", "/repo", mounts={good: "/repo"})
    assert valid.returncode == 0, valid.stderr
    assert valid.stdout.splitlines() == [f"ok: environment {n}: 1 object(s), target local" for n in ENVIRONMENTS]

    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    write_environment(bad, "delta")
    (bad / "environments/delta/raycluster.yaml").write_text("""\
apiVersion: ray.io/v1
kind: RayCluster
metadata: {name: demo}
spec:
  headGroupSpec:
    rayStartParams: {}
    template: {spec: {containers: [{name: ray-head, image: rayproject/ray:2.60.0}]}}
  workerGroupSpecs:
  - groupName: cpu
    replicas: 2
    minReplicas: 3
    maxReplicas: 2
    rayStartParams: {}
    template: {spec: {containers: [{name: ray-worker, image: rayproject/ray:2.60.0}]}}
""")
    invalid = containers.run("validate", "/repo", mounts={bad: "/repo"})
    assert invalid.returncode == 1, (invalid.stdout, invalid.stderr)
    assert "ok: environment gamma" in invalid.stdout and "delta" not in invalid.stdout
    assert ("environments/delta/raycluster.yaml#0: RayCluster/demo: spec.workerGroupSpecs[0].minReplicas: "
            "minReplicas 3 is greater than maxReplicas 2") in invalid.stderr


def probe(cid: str, path: str) -> tuple[str, str]:
    """(status, body) of GET http://127.0.0.1:9464<path>, asked from inside the container."""
    done = podman("exec", cid, "python", "-c", PROBE, path, timeout=30)
    status, _, body = done.stdout.partition("\n")
    return (status.strip() or f"exec failed: {done.stderr.strip()}"), body


def logs_of(cid: str) -> str:
    """The container's output (stdout and stderr), last 3000 characters, for failure messages."""
    logged = podman("logs", cid, timeout=30)
    return (logged.stdout + logged.stderr)[-3000:]


def wait_for(cid: str, path: str, deadline_s: float) -> str:
    """Probe `path` until it answers 200 or the deadline passes; return the last status."""
    deadline = time.monotonic() + deadline_s
    status = ""
    while time.monotonic() < deadline:
        status, _ = probe(cid, path)
        if status == "200":
            break
        time.sleep(0.5)
    return status


def test_the_daemon_serves_healthz_syncs_three_environments_and_stops_on_sigterm(
        containers: Containers, tmp_path: Path) -> None:
    sha = config_repository(tmp_path / "config")
    started = containers.run("run", "--repo", "/repo", "--interval", "2s",
                             "--metrics-address", "127.0.0.1:9464",
                             mounts={tmp_path / "config": "/repo"}, detach=True)
    assert started.returncode == 0, started.stderr
    cid = started.stdout.strip()

    assert wait_for(cid, "/healthz", 60) == "200", logs_of(cid)
    healthy_until = time.monotonic() + 3
    probes = 0
    while time.monotonic() < healthy_until or probes < 3:
        assert probe(cid, "/healthz")[0] == "200"
        probes += 1
        time.sleep(0.5)
    assert wait_for(cid, "/readyz", 60) == "200", logs_of(cid)

    status, metrics = probe(cid, "/metrics")
    assert status == "200"
    infos = [line for line in metrics.splitlines() if line.startswith("ray_gitops_environment_info{")]
    for name in ENVIRONMENTS:  # reconciled at once, from one Git cache
        [info] = [line for line in infos if f'environment="{name}"' in line] or [f"no info for {name}"]
        assert f'revision="{sha[:12]}"' in info and 'sync_status="Synced"' in info, info

    daemon = podman("exec", cid, "sh", "-c", "grep ^Uid: /proc/1/status; touch /opt/x", timeout=30)
    assert daemon.stdout.split()[:2] == ["Uid:", str(UID)], daemon.stdout
    assert daemon.returncode != 0 and "Read-only file system" in daemon.stderr

    stopped = podman("stop", "--time", "20", cid, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", cid, timeout=30).stdout.strip()
    logged = podman("logs", cid, timeout=30)
    logs = logged.stdout + logged.stderr
    assert exit_code == "0" and "reconciler.service.daemon: stopped" in logs, (exit_code, logs[-3000:])
