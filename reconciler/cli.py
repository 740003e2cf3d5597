"""Command line: run, diff, validate, status (`ray-gitops --help`).

The outermost layer: parses flags, builds `Settings`, wires the daemon or a one-shot pipeline,
prints results and maps them to exit codes. Holds no reconcile logic of its own.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from . import config, planner
from .daemon import Daemon, build_target
from .errors import InvalidEnvironment, ReconcileError
from .ledger import Ledger
from .metrics import Metrics
from .model import Action
from .render import ROOT, list_environments, render
from .source import DirectoryTree, GitSource


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname.lower(), "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def cmd_run(args: argparse.Namespace) -> int:
    settings = config.load(vars(args), config_file=args.config)
    if not settings.repo:
        print("ray-gitops run: --repo (or RAY_GITOPS_REPO) is required", file=sys.stderr)
        return 2
    _logging(settings.log_format, settings.log_level)
    try:
        daemon = Daemon(settings)
    except ReconcileError as exc:
        print(f"ray-gitops run: {exc}", file=sys.stderr)
        return 2
    if settings.once:
        try:
            return 0 if daemon.run_once() else 1
        except ReconcileError as exc:
            logging.getLogger("ray-gitops").error("%s", exc)
            return 1
        finally:
            daemon.targets.close()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: daemon.stop())
    host, port = settings.host_port
    print(f"ray-gitops: reconciling {settings.repo} ({settings.branch}) every {settings.interval:g}s; "
          f"metrics on http://{host}:{port}/metrics; state in {settings.state_dir}", file=sys.stderr)
    daemon.serve()
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    settings = config.load(vars(args))
    _logging("text", "warning")
    try:
        source = GitSource(settings.repo, settings.branch, settings.state_dir / "git")
        revision = source.fetch()
        env = render(revision.tree, args.environment, revision.sha)
        target = build_target(env.spec, settings.state_dir, Metrics(CollectorRegistry()))
        ledger = Ledger(settings.state_dir)
        inventory = ledger.inventory(env.spec.name)
        live = target.observe(env, inventory | {d.ref for d in env.objects})
        items = planner.plan(env, live, inventory, ledger.finished_runs(env.spec.name),
                             expected=target.expected(env, live))
    except InvalidEnvironment as exc:
        print(exc, file=sys.stderr)
        return 2
    except ReconcileError as exc:
        print(f"ray-gitops diff: {exc}", file=sys.stderr)
        return 2
    changes = [i for i in items if i.action not in (Action.NOOP, Action.SKIP)]
    for item in items:
        if item.action == Action.NOOP:
            continue
        print(f"{item.action.value:>8} {item.ref}: {item.reason}")
        for warning in item.warnings:
            print(f"         warning: {warning}")
        if item.diff:
            print(item.diff.rstrip("\n"))
    print(f"{len(changes)} change(s) for environment {env.spec.name} at {revision.short}")
    return 1 if changes else 0


def cmd_validate(args: argparse.Namespace) -> int:
    path = Path(args.path).resolve()
    if (path / "environment.yaml").exists():
        root, names = path.parent.parent, [path.name]
    else:
        root = path
        names = list_environments(DirectoryTree(root))
    if not names:
        print(f"{path}: no environments found (expected {ROOT}/<env>/environment.yaml)", file=sys.stderr)
        return 1
    failed = 0
    for name in names:
        try:
            env = render(DirectoryTree(root), name)
            print(f"ok: environment {name}: {len(env.objects)} object(s), target {env.spec.target.kind}")
        except InvalidEnvironment as exc:
            failed += 1
            print(exc, file=sys.stderr)
    return 1 if failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    settings = config.load(vars(args))
    states = Ledger(settings.state_dir).states()
    if args.output == "json":
        print(json.dumps([s.__dict__ for s in states], indent=2, default=str))
        return 0
    rows = [("ENVIRONMENT", "TARGET", "REVISION", "SYNC", "HEALTH", "UPDATED", "MESSAGE")]
    for s in states:
        updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.updated_at))
        rows.append((s.env, s.target, s.revision[:12], s.sync_status, s.health_status, updated,
                     s.message.splitlines()[0][:80] if s.message else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ray-gitops", description="GitOps reconciler for Ray (KubeRay and local Ray)")
    sub = p.add_subparsers(dest="command", required=True)

    def source_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--repo", help="Git URL or local path of the GitOps repository")
        sp.add_argument("--branch", help="branch to follow (default main)")
        sp.add_argument("--state-dir", type=Path, help="ledger, Git cache and local clusters (default "
                        "$XDG_STATE_HOME/ray-gitops)")

    run = sub.add_parser("run", help="run the reconciler daemon")
    source_flags(run)
    run.add_argument("--environment", action="append", dest="environments", default=[],
                     help="environment to reconcile (repeatable; default all)")
    run.add_argument("--interval", help="Git poll interval, e.g. 5s (default 30s)")
    run.add_argument("--metrics-address", help="host:port for /metrics /healthz /readyz (default 127.0.0.1:9464)")
    run.add_argument("--once", action="store_true", default=None, help="reconcile once and exit (0 = all succeeded)")
    run.add_argument("--log-format", choices=["text", "json"])
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.add_argument("--config", type=Path, help="YAML file of settings (flags and env vars win)")
    run.add_argument("--leader-election", action="store_true", default=None,
                     help="reconcile only while holding a coordination.k8s.io Lease (for more than one replica)")
    run.add_argument("--leader-election-namespace", help="namespace of the Lease (default: the pod's, else default)")
    run.add_argument("--leader-election-id", help="name of the Lease (default ray-gitops)")
    for timing in ("lease-duration", "renew-deadline", "retry-period"):  # for tests; settings keys too
        run.add_argument(f"--leader-election-{timing}", help=argparse.SUPPRESS)
    run.add_argument("--kubeconfig", help="kubeconfig for the Lease (default: in-cluster, else $KUBECONFIG or "
                     "~/.kube/config)")
    run.add_argument("--kube-context", help="kubeconfig context for the Lease (default: the current context)")
    run.add_argument("--webhook-secret-file", help="file holding the POST /hooks/git secret (a mounted Secret); "
                     "or RAY_GITOPS_WEBHOOK_SECRET; none: the endpoint is off")
    run.add_argument("--webhook-max-body", help="largest webhook body in bytes (default 1048576)")
    run.set_defaults(func=cmd_run)

    diff = sub.add_parser("diff", help="show what a reconcile would change (exit 0 none, 1 changes, 2 error)")
    source_flags(diff)
    diff.add_argument("--environment", required=True)
    diff.set_defaults(func=cmd_diff)

    val = sub.add_parser("validate", help="check a repository or environment directory (exit 0 ok, 1 invalid)")
    val.add_argument("path")
    val.set_defaults(func=cmd_validate)

    status = sub.add_parser("status", help="table of environments: revision, sync, health")
    status.add_argument("--state-dir", type=Path)
    status.add_argument("-o", "--output", choices=["table", "json"], default="table")
    status.set_defaults(func=cmd_status)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
