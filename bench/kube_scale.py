"""Many environments on the test control plane, measured side by side with `kubectl apply --server-side`.

For each N (default 30, 300, 1000) it makes a Git repository of N environments, each in its own
namespace holding 1 RayCluster (2 worker groups, autoscaling on) and 2 RayJobs (one with
`clusterSelector`, one with `rayClusterSpec`), and prints one table row:
- first syncs, `--repeat` times each way, each on a fresh control plane, rotating which goes first:
  `kubectl apply --server-side -R -f` of the same rendered objects (kubectl of the API server's release),
  `ray-gitops run --once`, and a daemon's first cycle (start to /readyz 200); medians, their ratios, and
  the CPU seconds the API server and etcd spent on each;
- on a fresh control plane holding only one sync's objects (a daemon caches every object labelled as
  ray-gitops' on its clusters): the peak RSS of `run --once`; a daemon started there with a fresh state dir
  (a new Pod): seconds to ready and the writes it sent; then over 60 s idle (`--interval 10s`): its CPU,
  requests, threads and RSS; then 5 pushes changing one environment each, announced by a webhook (seconds
  from the POST to that environment reconciled at the revision), and 5 found by polling (from the commit,
  at a random phase of the interval);
- and the start-up time of the CLI (`ray-gitops --help`, median of 5).
Run: `make bench-kube` (builds the control plane once, like the tests). No test asserts timings.
"""
from __future__ import annotations

import argparse
import compileall
import hashlib
import hmac
import os
import platform
import random
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

from reconciler.pipeline.ledger import Ledger  # noqa: E402
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
    """Make `plane` the cluster `default` of every ray-gitops command this benchmark runs, all of one
    installation (one installation key, as a Deployment's Pods share a mounted Secret)."""
    key = plane.workdir / "installation-key"
    key.write_text(os.urandom(32).hex())
    key.chmod(0o600)
    os.environ.update(RAY_GITOPS_KUBECONFIG=str(plane.kubeconfig), RAY_GITOPS_KUBE_CONTEXT=plane.context,
                      RAY_GITOPS_INSTALLATION_KEY_FILE=str(key))


SETTLED = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {owner: ray-gitops}\n"


def write_repo(root: Path, n: int, prefix: str, objects: str = CLUSTER) -> None:
    """N environments holding `objects`, on the daemon's cluster `default` (`use_cluster` points it at the control
    plane)."""
    for i in range(n):
        env = root / "environments" / f"e{i:03d}"
        env.mkdir(parents=True)
        (env / "environment.yaml").write_text(
            "apiVersion: gitops.ray.io/v1alpha1\nkind: Environment\n"
            f"metadata: {{name: e{i:03d}}}\nspec:\n  interval: 10s\n  target:\n    kubernetes: "
            f"{{namespace: {prefix}{i:03d}}}\n")
        (env / "ray.yaml").write_text(objects)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    commit(root, "bench")


def commit(root: Path, message: str) -> str:
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "commit", "-qm",
                    message], cwd=root, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True,
                          text=True).stdout.strip()


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


def prepare(kubectl: list[str], prefix: str, n: int, directory: Path) -> None:
    """The cluster as users have it before a first sync: the N namespaces, and the Ray kinds already read once.
    Wherever RayClusters are applied, the KubeRay operator watches them, so the API server serves their kinds
    from a ready watch cache. A fresh API server builds a custom resource's cache only at the first request
    for it, and while it builds, a LIST with a label selector is answered 429 (Retry-After: 1 s, KEP-4568):
    without this read, a daemon's first cycle waited a second that no cluster with an operator makes it wait
    (kubectl is not affected: its GETs and PATCHes go to etcd)."""
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"{prefix}{i:03d}"}} for i in range(n)]
    path = directory / f"ns-{prefix}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    subprocess.run([*kubectl, "apply", "--server-side", "-f", str(path)], check=True, capture_output=True)
    subprocess.run([*kubectl, "get", "rayclusters.ray.io,rayjobs.ray.io", "--all-namespaces", "-o", "name"],
                   check=True, capture_output=True)


def server_cpu(plane: kube_controlplane.ControlPlane) -> float:
    """CPU seconds etcd and kube-apiserver have used so far."""
    return sum(cpu_seconds(p.popen.pid) for p in plane._processes if p.popen.poll() is None)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_process(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of one command that must succeed."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        tail = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
        raise SystemExit(f"{cmd[:4]} failed:\n{tail}")
    return time.monotonic() - started, usage.ru_maxrss / 1024


def requests(port: int) -> dict[str, float]:
    """ray_gitops_kube_requests_total by verb."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for match in re.finditer(r'^ray_gitops_kube_requests_total\{verb="([\w-]+)"\} ([0-9.e+]+)$', text, re.M):
        out[match.group(1)] = float(match.group(2))
    return out


WRITES = ("apply", "create", "update", "patch", "delete")


class Daemon:
    """`ray-gitops run` on `repo` with a webhook secret, `--interval 10s`."""

    SECRET = "bench-secret"

    def __init__(self, repo: Path, state: Path) -> None:
        self.port, self.state = free_port(), state
        state.parent.mkdir(parents=True, exist_ok=True)
        (state.parent / "secret").write_text(self.SECRET)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "run", "--repo", str(repo), "--state-dir", str(state), "--interval",
             "10s", "--metrics-address", f"127.0.0.1:{self.port}", "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "RAY_GITOPS_WEBHOOK_SECRET_FILE": str(state.parent / "secret")})

    def ready_after(self) -> float:
        """Seconds from the start to /readyz 200 (every environment reconciled once)."""
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5) as resp:
                    if resp.status == 200:
                        return time.monotonic() - self.started
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit("the daemon exited")
            time.sleep(0.1)
        raise SystemExit("the daemon never became ready")

    def hook(self) -> None:
        body = b'{"ref": "refs/heads/main"}'
        signature = "sha256=" + hmac.new(self.SECRET.encode(), body, hashlib.sha256).hexdigest()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/hooks/git", body, method="POST", headers={
            "X-Hub-Signature-256": signature, "X-GitHub-Event": "push", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 202

    def wait_applied(self, environment: str, sha: str) -> None:
        ledger = Ledger(self.state, readonly=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            history = ledger.history(environment, 1)
            if history and history[0][0] == sha and history[0][3] == "success":
                return
            time.sleep(0.02)
        raise SystemExit(f"{environment} never applied {sha[:12]}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


WAYS = ("kubectl", "once", "daemon")


def first_syncs(assets: Path, kubectl: list[str], work: Path, n: int,
                repeat: int) -> dict[str, list[tuple[float, float]]]:
    """`repeat` first syncs of N environments each way, rotating which goes first, each on a fresh control plane:
    (seconds, API server + etcd CPU seconds) per way. A shared plane was unfair to ray-gitops: its caches list and
    watch every object labelled as its own cluster-wide, so each later run paid for the earlier runs' objects
    (kubectl reads none), and every run paid for a larger etcd."""
    out: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
    for r in range(repeat):
        for way in WAYS[r % len(WAYS):] + WAYS[:r % len(WAYS)]:
            plane = kube_controlplane.ControlPlane.start(assets)
            use_cluster(plane)
            try:
                out[way].append(first_sync(plane, [*kubectl, "--kubeconfig", str(plane.kubeconfig)],
                                           work / f"{way}{r}", n, way))
            finally:
                plane.cleanup()
    return out


def first_sync(plane: kube_controlplane.ControlPlane, k: list[str], root: Path, n: int,
               way: str) -> tuple[float, float]:
    """One first sync of N environments `way` (kubectl, once or daemon): seconds, API server + etcd CPU seconds."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    write_repo(repo, n, "b-")
    prepare(k, "b-", n, root)
    if way == "kubectl":
        (root / "files").mkdir()
        rendered_files(repo, root / "files", n, "b-")
    cpu = server_cpu(plane)
    if way == "kubectl":
        seconds = timed_process([*k, "apply", "--server-side", "--field-manager", "bench", "-R", "-f",
                                 str(root / "files")])[0]
    elif way == "once":
        seconds = timed_process(once_command(repo, root / "state"))[0]
    else:
        daemon = Daemon(repo, root / "state")
        try:
            seconds = daemon.ready_after()
        finally:
            daemon.stop()
    return seconds, server_cpu(plane) - cpu


def once_command(repo: Path, state: Path) -> list[str]:
    return [sys.executable, "-m", "reconciler", "run", "--once", "--repo", str(repo), "--state-dir", str(state),
            "--log-level", "warning"]


def alone(assets: Path, kubectl: list[str], work: Path, n: int, pushes: int) -> dict[str, float]:
    """On a control plane of its own: `run --once`'s peak RSS; a new daemon on the synced cluster; idle; pushes."""
    plane = kube_controlplane.ControlPlane.start(assets)
    use_cluster(plane)
    rng = random.Random(n)
    try:
        repo = work / "alone" / "repo"
        repo.mkdir(parents=True)
        write_repo(repo, n, "a-")
        prepare([*kubectl, "--kubeconfig", str(plane.kubeconfig)], "a-", n, work)
        _, once_rss = timed_process(once_command(repo, work / "alone" / "state"))
        daemon = Daemon(repo, work / "daemon" / "state")
        try:
            out = {"once_rss": once_rss, "restart_ready": daemon.ready_after()}
            time.sleep(1)
            before, cpu = requests(daemon.port), cpu_seconds(daemon.proc.pid)
            out["restart_writes"] = sum(before.get(verb, 0) for verb in WRITES)
            time.sleep(60)
            after = requests(daemon.port)
            out["idle_cpu"] = (cpu_seconds(daemon.proc.pid) - cpu) / 60 * 100
            out["idle_requests"] = sum(after.values()) - sum(before.values())
            status = dict(line.split(":", 1) for line in
                          Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines())
            out["threads"], out["daemon_rss"] = int(status["Threads"]), int(status["VmHWM"].split()[0]) / 1024
            webhook, polling = [], []
            for i in range(2 * pushes):
                env = f"e{rng.randrange(n):03d}"
                path = repo / "environments" / env / "ray.yaml"
                path.write_text(path.read_text().replace("metadata: {name: train}", f"metadata: {{name: train, "
                                                         f"labels: {{push: p{i}}}}}", 1))
                if i >= pushes:
                    time.sleep(rng.uniform(0, 10))  # a random phase of the poll interval
                sha = commit(repo, f"push {i}")
                started = time.monotonic()
                if i < pushes:
                    daemon.hook()
                daemon.wait_applied(env, sha)
                (webhook if i < pushes else polling).append(time.monotonic() - started)
                path.write_text(path.read_text().replace(f", labels: {{push: p{i}}}", ""))
                daemon.wait_applied(env, commit(repo, f"undo push {i}"))
            out.update(webhook=statistics.median(webhook), webhook_max=max(webhook),
                       polling=statistics.median(polling), polling_max=max(polling))
            return out
        finally:
            daemon.stop()
    finally:
        plane.cleanup()


def levers(assets: Path, kubectl: list[str], work: Path, n: int = 300) -> list[tuple[str, float, float]]:
    """What each kind of request of a first sync costs the server: `n` of each, from 4 threads, on a fresh control
    plane: (what, wall seconds, API server + etcd CPU ms per request)."""
    from concurrent.futures import ThreadPoolExecutor

    from reconciler.kubeapi import RESOURCES, Kube, connect
    from reconciler.model import ObjectRef, Outcome
    from reconciler.targets.kubernetes.events import event_body
    plane = kube_controlplane.ControlPlane.start(assets)
    try:
        kube = Kube(connect(str(plane.kubeconfig), plane.context), lambda verb: None)
        prepare([*kubectl, "--kubeconfig", str(plane.kubeconfig)], "l-", n, work)
        cluster = yaml.safe_load(CLUSTER.split("---")[0])
        ray, cms = RESOURCES["RayCluster"], RESOURCES["ConfigMap"]

        def apply(i: int, dry_run: bool = False) -> None:
            body = {**cluster, "metadata": {"name": "train", "namespace": f"l-{i:03d}"}}
            kube.apply(ray.item(f"l-{i:03d}", "train"), body, "bench", force=True, dry_run=dry_run)
        ways = [
            ("apply (create) of a RayCluster", apply),
            ("dry-run apply of an unchanged RayCluster", lambda i: apply(i, dry_run=True)),
            ("apply of an unchanged RayCluster", apply),
            ("Event (create)", lambda i: kube.request(
                "create", "POST", f"/api/v1/namespaces/l-{i:03d}/events",
                body=event_body(ObjectRef("ray.io", "RayCluster", f"l-{i:03d}", "train"), Outcome.CREATED, "created",
                                "e"))),
            ("ledger ConfigMap (create)", lambda i: kube.request("create", "POST", cms.collection(f"l-{i:03d}"),
                                                                 body={
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ray-gitops-ledger-e"},
                "data": {"inventory": "[" + ", ".join(['["ray.io", "RayJob", "ns", "name"]'] * 3) + "]",
                         "runs": "{}", "signature": "hmac-sha256:" + "0" * 64}})),
            ("GET of a RayCluster", lambda i: kube.get(ray.item(f"l-{i:03d}", "train"))),
        ]
        out = []
        with ThreadPoolExecutor(4) as pool:
            for what, request in ways:
                cpu, started = server_cpu(plane), time.monotonic()
                list(pool.map(request, range(n)))
                out.append((what, time.monotonic() - started, (server_cpu(plane) - cpu) / n * 1000))
        return out
    finally:
        plane.cleanup()


def settled_idle(assets: Path, kubectl: list[str], work: Path, n: int) -> dict[str, float]:
    """A daemon's idle costs once every environment is Synced and Healthy (each holds one ConfigMap: healthy at
    once, where a RayCluster without KubeRay never is), over 60 s at `--interval 10s`."""
    plane = kube_controlplane.ControlPlane.start(assets)
    use_cluster(plane)
    try:
        repo = work / "settled" / "repo"
        repo.mkdir(parents=True)
        write_repo(repo, n, "s-", SETTLED)
        prepare([*kubectl, "--kubeconfig", str(plane.kubeconfig)], "s-", n, work)
        daemon = Daemon(repo, work / "settled" / "state")
        try:
            daemon.ready_after()
            time.sleep(12)  # one interval: the first reconciles ended quiet
            before, cpu = requests(daemon.port), cpu_seconds(daemon.proc.pid)
            time.sleep(60)
            after = requests(daemon.port)
            return {"cpu": (cpu_seconds(daemon.proc.pid) - cpu) / 60 * 100,
                    "requests": sum(after.values()) - sum(before.values())}
        finally:
            daemon.stop()
    finally:
        plane.cleanup()


def help_seconds() -> float:
    return statistics.median(timed_process([sys.executable, "-m", "reconciler", "--help"])[0] for _ in range(5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="30,300,1000")
    parser.add_argument("--repeat", type=int, default=3, help="first syncs each way per N (medians printed)")
    parser.add_argument("--pushes", type=int, default=5, help="webhook and polling pushes per N (medians printed)")
    parser.add_argument("--levers", action="store_true", help="only what each kind of request costs the server")
    parser.add_argument("--settled", action="store_true", help="only a daemon's idle costs, every environment Healthy")
    args = parser.parse_args()
    # ray-gitops as installed: pip (and the image) compile its bytecode at install. Where PYTHONDONTWRITEBYTECODE
    # is set (this machine sets it), a source checkout is otherwise compiled again at every start (0.1 s).
    compileall.compile_dir(ROOT / "reconciler", quiet=1)
    assets = kube_controlplane.ensure_assets()
    kubectl = [str(assets / "kubectl")]
    if args.settled:
        with tempfile.TemporaryDirectory() as tmp:
            print("| N | daemon CPU, settled environments, idle 60 s | requests |\n|---|---|---|")
            for n in (int(x) for x in args.sizes.split(",")):
                idle = settled_idle(assets, kubectl, Path(tmp) / str(n), n)
                print(f"| {n} | {idle['cpu']:.1f} % | {idle['requests']:.0f} |")
        return
    if args.levers:
        with tempfile.TemporaryDirectory() as tmp:
            print("| request (300 of each, 4 threads) | seconds | API server + etcd CPU per request |\n|---|---|---|")
            for what, seconds, cpu in levers(assets, kubectl, Path(tmp)):
                print(f"| {what} | {seconds:.2f} s | {cpu:.1f} ms |")
        return
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            syncs = first_syncs(assets, kubectl, work, n, args.repeat)
            medians = {way: (statistics.median(s for s, _ in v), statistics.median(c for _, c in v))
                       for way, v in syncs.items()}
            rows.append((n, medians, alone(assets, kubectl, work, n, args.pushes)))
        print(f"N={n}: " + "; ".join(f"{way} " + ", ".join(f"{s:.1f} s/{c:.1f} s CPU" for s, c in v)
                                     for way, v in syncs.items()), file=sys.stderr)
        print(f"N={n}: {rows[-1][2]}", file=sys.stderr)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; 3 objects per environment, each in its own namespace; first syncs: "
          f"medians of {args.repeat} each way; `ray-gitops --help`: {help_seconds():.2f} s")
    print("| N | kubectl apply --server-side | run --once | daemon's first cycle | server CPU kubectl / once / "
          "daemon | RSS once / daemon | new daemon on the synced cluster: ready, writes | idle 60 s: CPU, requests, "
          "threads | webhook push applied (median, max) | polling, 10 s (median, max) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, m, a in rows:
        k, o, d = m["kubectl"], m["once"], m["daemon"]
        print(f"| {n} | {k[0]:.1f} s | {o[0]:.1f} s ({o[0] / k[0]:.2f}×) | {d[0]:.1f} s ({d[0] / k[0]:.2f}×) | "
              f"{k[1]:.1f} / {o[1]:.1f} ({o[1] / k[1]:.2f}×) / {d[1]:.1f} s ({d[1] / k[1]:.2f}×) | "
              f"{a['once_rss']:.0f} / {a['daemon_rss']:.0f} MiB | {a['restart_ready']:.1f} s "
              f"({a['restart_ready'] / k[0]:.2f}×), {a['restart_writes']:.0f} | {a['idle_cpu']:.1f} %, "
              f"{a['idle_requests']:.0f}, {a['threads']:.0f} | {a['webhook']:.2f} s, {a['webhook_max']:.2f} s | "
              f"{a['polling']:.2f} s, {a['polling_max']:.2f} s |")


if __name__ == "__main__":
    main()
