"""Command line: run, diff, plan, validate, status, history, rollback, suspend, resume (`ray-gitops --help`).

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

from . import config, rollback
from .daemon import Daemon
from .errors import InvalidEnvironment, ReconcileError
from .ledger import Ledger
from .model import Action
from .preview import Preview, preview
from .render import ROOT, list_environments, render
from .source import DirectoryTree, redact


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
    print(f"ray-gitops: reconciling {redact(settings.repo)} ({settings.branch}) every {settings.interval:g}s; "
          f"metrics on http://{host}:{port}/metrics; state in {settings.state_dir}", file=sys.stderr)
    daemon.serve()
    return 0


def _preview(command: str, args: argparse.Namespace) -> Preview | int:
    """The plan `diff` and `plan` print, or exit code 2 with the error on stderr."""
    settings = config.load(vars(args))
    _logging("text", "warning")
    try:
        return preview(settings, args.environment)
    except InvalidEnvironment as exc:
        print(exc, file=sys.stderr)
    except ReconcileError as exc:
        print(f"ray-gitops {command}: {exc}", file=sys.stderr)
    return 2


def cmd_diff(args: argparse.Namespace) -> int:
    return _print_plan(_preview("diff", args), bodies=True)


def cmd_plan(args: argparse.Namespace) -> int:
    return _print_plan(_preview("plan", args), bodies=False)


def _print_plan(found: Preview | int, bodies: bool) -> int:
    """One line per object that is not unchanged (action, object, reason), its warnings, optionally
    its diff; exit 0 no changes, 1 changes."""
    if isinstance(found, int):
        return found
    for item in found.items:
        if item.action == Action.NOOP:
            continue
        print(f"{item.action.value:>8} {item.ref}: {item.reason}")
        for warning in item.warnings:
            print(f"         warning: {warning}")
        if bodies and item.diff:
            print(item.diff.rstrip("\n"))
    print(f"{len(found.changes)} change(s) for environment {found.environment} at {found.revision.short}")
    return 1 if found.changes else 0


def cmd_history(args: argparse.Namespace) -> int:
    settings = config.load(vars(args))
    rows = Ledger(settings.state_dir).history(args.environment, args.limit)
    if args.output == "json":
        keys = ("revision", "commit_time", "applied_at", "result", "summary")
        print(json.dumps([dict(zip(keys, row)) for row in rows], indent=2))
        return 0
    if not rows:
        print(f"no applied revisions recorded for environment {args.environment} in {settings.state_dir}",
              file=sys.stderr)
        return 0
    _table([("REVISION", "COMMITTED", "APPLIED", "RESULT", "SUMMARY")] + [
        (revision[:12], _time(committed), _time(applied), result, summary.splitlines()[0][:100] if summary else "")
        for revision, committed, applied, result, summary in rows])
    return 0


def cmd_suspend(args: argparse.Namespace) -> int:
    ledger = Ledger(config.load(vars(args)).state_dir)
    if args.command == "suspend":
        ledger.suspend(args.environment, args.reason or "")
        print(f"environment {args.environment}: suspended in {ledger.path}; from its next reconcile the daemon "
              f"reports Suspended and applies nothing (`ray-gitops resume` lifts it; `spec.suspend: true` in Git "
              f"is the GitOps way)")
    elif ledger.resume(args.environment):
        print(f"environment {args.environment}: resumed; its next reconcile applies Git again")
    else:
        print(f"environment {args.environment}: was not suspended in {ledger.path} (a `spec.suspend: true` "
              f"in Git is lifted only by a commit)")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    last = Ledger(args.state_dir).last_applied(args.environment) if args.state_dir else None
    try:
        done = rollback.rollback(Path(args.repo), args.environment, args.to, args.branch, last, args.all_paths,
                                 args.push)
    except rollback.RollbackError as exc:
        print(f"ray-gitops rollback: {exc}", file=sys.stderr)
        return 2
    if not done.reverted:
        print(f"nothing to roll back: no commit changed environments/{args.environment}/ since the chosen revision")
        return 0
    for sha, subject in done.reverted:
        print(f"reverted {sha[:12]} {subject}")
    print(done.diff.rstrip("\n") or f"(no net change under environments/{args.environment}/)")
    branch = args.branch
    where = f"pushed to origin/{branch}" if done.pushed else f"not pushed (git push origin {branch} or --push)"
    print(f"{len(done.reverted)} revert commit(s) {done.old_head[:12]}..{done.new_head[:12]} on {args.branch}; "
          f"{where}")
    return 0


def _time(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else ""


def _table(rows: list[tuple[str, ...]], details: list[list[str]] | None = None) -> None:
    """Aligned columns; `details[i]` are indented lines printed under data row i."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()

    print(line(rows[0]))
    for row, extra in zip(rows[1:], details or [[] for _ in rows[1:]]):
        print(line(row))
        for text in extra:
            print(f"  {text}")


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
        rows.append((s.env, s.target, s.revision[:12], s.sync_status, s.health_status, _time(s.updated_at),
                     s.message.splitlines()[0][:80] if s.message else ""))
    _table(rows, [_details(s.detail) for s in states])
    return 0


def _details(detail: dict) -> list[str]:
    """One line per cluster (workers ready/desired per group) and per job (status of its run)."""
    lines = []
    for name, cluster in sorted((detail.get("clusters") or {}).items()):
        groups = ", ".join(f"{g} {c.get('ready', 0)}/{c.get('desired', 0)}"
                           for g, c in sorted((cluster.get("groups") or {}).items()))
        lines.append(f"RayCluster {name}: {cluster.get('health', '')}; workers ready/desired: {groups or 'none'}")
    for name, job in sorted((detail.get("jobs") or {}).items()):
        lines.append(f"RayJob {name}: {job.get('status') or 'no run yet'} ({job.get('health', '')})")
    return lines


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
    run.add_argument("--concurrency", help="environments reconciled at the same time (default 4)")
    run.add_argument("--kube-api-qps", help="Kubernetes requests per second per API server, on average (default 50)")
    run.add_argument("--kube-api-burst", help="Kubernetes requests in a burst above --kube-api-qps (default 300)")
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

    plan = sub.add_parser("plan", help="what apply would do per object, no diff bodies (exit 0 none, 1 changes, "
                          "2 error)")
    source_flags(plan)
    plan.add_argument("--environment", required=True)
    plan.set_defaults(func=cmd_plan)

    history = sub.add_parser("history", help="revisions applied to an environment, newest first (from the ledger)")
    history.add_argument("--environment", required=True)
    history.add_argument("--state-dir", type=Path)
    history.add_argument("--limit", type=int, default=50, help="newest N (default 50)")
    history.add_argument("-o", "--output", choices=["table", "json"], default="table")
    history.set_defaults(func=cmd_history)

    back = sub.add_parser("rollback", help="git revert the commits that changed an environment, in a local clone "
                          "(exit 0 done, 2 refused or conflict)")
    back.add_argument("--repo", required=True, help="path of a clean local clone (work tree) on --branch")
    back.add_argument("--environment", required=True)
    back.add_argument("--to", help="revert every commit after this revision that changed the environment (default: "
                      "the parent of the last applied revision with --state-dir, else of the environment's newest "
                      "commit)")
    back.add_argument("--branch", default="main")
    back.add_argument("--state-dir", type=Path, help="the daemon's state directory (for the last applied revision)")
    back.add_argument("--all-paths", action="store_true", help="also revert commits that changed other paths")
    back.add_argument("--push", action="store_true", help="push the revert commit(s) (default: only commit locally)")
    back.set_defaults(func=cmd_rollback)

    for verb, text in (("suspend", "stop applying to an environment (ledger flag; the daemon sees it at its "
                                   "next reconcile)"), ("resume", "undo `suspend`")):
        hold = sub.add_parser(verb, help=text)
        hold.add_argument("--environment", required=True)
        hold.add_argument("--state-dir", type=Path, required=True, help="the daemon's state directory")
        if verb == "suspend":
            hold.add_argument("--reason", help="shown in status (e.g. an incident number)")
        hold.set_defaults(func=cmd_suspend)

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
