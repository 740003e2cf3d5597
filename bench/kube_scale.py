"""Many environments on the test control plane, measured side by side with `kubectl apply --server-side`.

For each N (default 30, 100, 300) it makes a Git repository of N environments, each in its own
namespace holding 1 RayCluster (2 worker groups, autoscaling on) and 2 RayJobs (one with
`clusterSelector`, one with `rayClusterSpec`), and prints:
- the initial sync by `ray-gitops run --once` (with the default client-side rate limit, and without one:
  `--kube-api-qps 0`) against `kubectl apply --server-side -R -f` of the same rendered objects (each
  into other, equally empty namespaces), and their ratios;
- on a fresh control plane holding only that one sync's objects (a daemon caches every object labelled as
  ray-gitops' on its clusters, so the other ways' objects would count too): the peak RSS of `run --once`,
  then a daemon that adopts that state (fresh state dir): its peak RSS, requests per no-op cycle by verb,
  list+watch streams and threads.
Run: `make bench-kube` (builds the control plane once, like the tests). No test asserts timings.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "controlplane"))
sys.path.insert(0, str(ROOT))
import kube_controlplane  # noqa: E402

from reconciler.pipeline.render import render  # noqa: E402
from reconciler.pipeline.source import DirectoryTree  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.memory import TARGETS  # noqa: E402

CLUSTER = """\
apiVersion: ray.io/v1
kind: RayCluster
metadata: {name: train}
spec:
  enableInTreeAutoscaling: true
  headGroupSpec:
    rayStartParams: {num-cpus: "0"}
    template: {spec: {containers: [{name: ray-head, image: rayproject/ray:2.60.0}]}}
  workerGroupSpecs:
  - groupName: cpu
    replicas: 1
    minReplicas: 0
    maxReplicas: 8
    template: {spec: {containers: [{name: ray-worker, image: rayproject/ray:2.60.0,
      resources: {limits: {cpu: "2", memory: 4Gi}}}]}}
  - groupName: gpu
    replicas: 0
    minReplicas: 0
    maxReplicas: 2
    template: {spec: {containers: [{name: ray-worker, image: rayproject/ray:2.60.0,
      resources: {limits: {cpu: "4", memory: 16Gi, nvidia.com/gpu: "1"}}}]}}
---
apiVersion: ray.io/v1
kind: RayJob
metadata: {name: nightly}
spec:
  clusterSelector: {ray.io/cluster: train}
  entrypoint: python -c "print(1)"
---
apiVersion: ray.io/v1
kind: RayJob
metadata: {name: batch}
spec:
  entrypoint: python -c "print(2)"
  shutdownAfterJobFinishes: true
  rayClusterSpec:
    enableInTreeAutoscaling: true
    headGroupSpec:
      rayStartParams: {num-cpus: "0"}
      template: {spec: {containers: [{name: ray-head, image: rayproject/ray:2.60.0}]}}
    workerGroupSpecs:
    - groupName: cpu
      replicas: 2
      minReplicas: 1
      maxReplicas: 4
      template: {spec: {containers: [{name: ray-worker, image: rayproject/ray:2.60.0}]}}
"""


def use_cluster(plane: kube_controlplane.ControlPlane) -> None:
    """Make `plane` the cluster `default` of every ray-gitops command this benchmark runs."""
    os.environ.update(RAY_GITOPS_KUBECONFIG=str(plane.kubeconfig), RAY_GITOPS_KUBE_CONTEXT=plane.context)


def write_repo(root: Path, n: int, prefix: str) -> None:
    """N environments on the daemon's cluster `default` (`use_cluster` points it at the control plane)."""
    for i in range(n):
        env = root / "environments" / f"e{i:03d}"
        env.mkdir(parents=True)
        (env / "environment.yaml").write_text(
            "apiVersion: gitops.ray.io/v1alpha1\nkind: Environment\n"
            f"metadata: {{name: e{i:03d}}}\nspec:\n  interval: 10s\n  target:\n    kubernetes: "
            f"{{namespace: {prefix}{i:03d}}}\n")
        (env / "ray.yaml").write_text(CLUSTER)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "commit", "-qm",
                    "bench"], cwd=root, check=True)


def rendered_files(repo: Path, into: Path, n: int, prefix: str) -> None:
    """The objects ray-gitops would apply (labels included), as files for kubectl, in `prefix` namespaces."""
    tree = DirectoryTree(repo)
    for i in range(n):
        env = render(tree, f"e{i:03d}", "0" * 40, TARGETS)
        docs = []
        for obj in env.objects:
            manifest = {**obj.manifest, "metadata": {**obj.manifest["metadata"], "namespace": f"{prefix}{i:03d}"}}
            docs.append(manifest)
        (into / f"e{i:03d}.yaml").write_text(yaml.safe_dump_all(docs))


def namespaces(kubectl: list[str], prefix: str, n: int, directory: Path) -> None:
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"{prefix}{i:03d}"}} for i in range(n)]
    path = directory / f"ns-{prefix}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    subprocess.run([*kubectl, "apply", "--server-side", "-f", str(path)], check=True, capture_output=True)


def timed_process(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """(seconds, peak RSS MiB, exit code) of one command."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
        raise SystemExit(f"{cmd[:4]} failed ({proc.returncode}):\n{tail}")
    return time.monotonic() - started, usage.ru_maxrss / 1024, proc.returncode


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r'(ray_gitops_kube_requests_total\{verb="(\w[\w-]*)"\}|ray_gitops_reconcile_total\{.*'
                         r'result="(\w+)"\}) ([0-9.e+]+)', line)
        if match:
            key = match.group(2) or f"reconcile_{match.group(3)}"
            out[key] = out.get(key, 0) + float(match.group(4))
    return out


def proc_status(pid: int) -> dict[str, str]:
    return dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())


def daemon_adopting(repo: Path, state: Path, n: int, cycles_wait: float) -> dict[str, float]:
    port = free_port()
    cmd = [sys.executable, "-m", "reconciler", "run", "--repo", str(repo), "--state-dir", str(state),
           "--interval", "10s", "--metrics-address", f"127.0.0.1:{port}", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise SystemExit("the daemon never became ready")
        time.sleep(12)  # the first cycle after adoption dry-runs each live object once
        before = metrics(port)
        time.sleep(cycles_wait)
        after = metrics(port)
        status = proc_status(proc.pid)
        cycles = (after.get("reconcile_noop", 0) - before.get("reconcile_noop", 0)) / n
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)
                 if not k.startswith("reconcile_")}
        return {"cycles": cycles, **{f"req_{k}": v / max(cycles, 1e-9) for k, v in delta.items()},
                "watches": after.get("watch", 0), "lists": after.get("list", 0),
                "threads": int(status["Threads"]), "rss": int(status["VmHWM"].split()[0]) / 1024}
    finally:
        proc.terminate()
        proc.wait(60)


WAYS = ("kubectl", "once", "unlimited")  # kubectl; run --once as configured by default; and with --kube-api-qps 0


def once_command(repo: Path, state: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "reconciler", "run", "--once", "--repo", str(repo), "--state-dir", str(state),
            "--log-level", "warning", *flags]


def initial_syncs(plane: kube_controlplane.ControlPlane, kubectl: list[str], work: Path, n: int,
                  repeat: int) -> dict[str, list[float]]:
    """`repeat` initial syncs of N environments each way (WAYS), each into fresh namespaces, rotating which goes
    first: seconds per way."""
    k = [*kubectl, "--kubeconfig", str(plane.kubeconfig)]
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    for r in range(repeat):
        runs = {}
        for way in WAYS:
            prefix, root = f"{way[0]}{r}-", work / f"{way}{r}"
            repo = root / "repo"
            repo.mkdir(parents=True)
            write_repo(repo, n, prefix)
            namespaces(k, prefix, n, work)
            if way == "kubectl":
                (root / "files").mkdir()
                rendered_files(repo, root / "files", n, prefix)
                runs[way] = [*k, "apply", "--server-side", "--field-manager", "bench", "-R", "-f", str(root / "files")]
            else:
                runs[way] = once_command(repo, root / "state", *(["--kube-api-qps", "0"] if way == "unlimited" else []))
        for way in WAYS[r % len(WAYS):] + WAYS[:r % len(WAYS)]:
            seconds[way].append(timed_process(runs[way])[0])
    return seconds


def alone(assets: Path, kubectl: list[str], work: Path, n: int) -> tuple[float, dict[str, float]]:
    """On a control plane of its own: the peak RSS of `run --once`, then the daemon adopting what it made."""
    plane = kube_controlplane.ControlPlane.start(assets)
    use_cluster(plane)
    try:
        repo = work / "alone" / "repo"
        repo.mkdir(parents=True)
        write_repo(repo, n, "a-")
        namespaces([*kubectl, "--kubeconfig", str(plane.kubeconfig)], "a-", n, work)
        _, rss, _ = timed_process(once_command(repo, work / "alone" / "state"))
        return rss, daemon_adopting(repo, work / "daemon", n, cycles_wait=25)
    finally:
        plane.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="30,100,300")
    parser.add_argument("--repeat", type=int, default=3, help="initial syncs each way per N (medians printed)")
    args = parser.parse_args()
    assets = kube_controlplane.ensure_assets()
    kubectl = [str(assets / "kubectl")]
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            plane = kube_controlplane.ControlPlane.start(assets)
            use_cluster(plane)
            try:
                seconds = initial_syncs(plane, kubectl, work, n, args.repeat)
            finally:
                plane.cleanup()
            once_rss, daemon = alone(assets, kubectl, work, n)
        medians = {way: statistics.median(values) for way, values in seconds.items()}
        rows.append((n, medians, once_rss, daemon))
        print(f"N={n}: " + "; ".join(f"{way} {', '.join(f'{x:.1f}' for x in values)} s"
                                     for way, values in seconds.items()), file=sys.stderr)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"3 objects per environment, each environment in its own namespace; initial syncs: medians of "
          f"{args.repeat} each way, rotating which goes first")
    print("| N | kubectl apply --server-side | run --once (qps 50, burst 300) | ratio | run --once --kube-api-qps 0 | "
          "ratio | RSS run --once | RSS daemon | writes/no-op cycle | dry-runs/no-op cycle | reads/no-op cycle | "
          "list+watch streams | daemon threads |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n, m, once_rss, d in rows:
        writes = sum(v for k, v in d.items() if k in ("req_apply", "req_create", "req_update", "req_delete"))
        reads = sum(v for k, v in d.items() if k in ("req_get", "req_list"))
        print(f"| {n} | {m['kubectl']:.1f} s | {m['once']:.1f} s | {m['once'] / m['kubectl']:.2f} | "
              f"{m['unlimited']:.1f} s | {m['unlimited'] / m['kubectl']:.2f} | {once_rss:.0f} MiB | "
              f"{d['rss']:.0f} MiB | {writes:.0f} | {d.get('req_dryrun-apply', 0):.0f} | {reads:.0f} | "
              f"{d['lists']:.0f}+{d['watches']:.0f} | {d['threads']} |")


if __name__ == "__main__":
    main()
