"""Commands that look and change nothing: `diff`, `plan` (the pipeline stopped before apply),
`render` and `validate` (the same loader as the daemon), `status` and `history` (the ledger).

Whatever `--repo` (or `--path`, a working tree read as it is on disk) and `--state-dir` they are given,
they write to no target, no ledger and no daemon's Git cache: they fetch into a cache of their own
(`source.user_cache()`, one per repository URL), open the ledger read-only, and run no target's own control
loop (cron slots, clean-ups)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from ..errors import ConfigError, InvalidEnvironment
from ..metrics import Metrics
from ..model import Action
from ..pipeline.diff import hide_secret_values
from ..pipeline.ledger import Ledger
from ..pipeline.reconcile import Pipeline, Preview
from ..pipeline.render import ENVIRONMENT_FILE, ROOT, list_environments, render
from ..pipeline.source import DirectoryTree, GitSource, Revision, redact, user_cache
from ..service import config
from ..targets import Registry, Runtime


def preview(args: argparse.Namespace) -> Preview:
    """What a reconcile of `--environment` would do now, from a fetch of `--repo` (or the working tree `--path`)."""
    settings = config.load(vars(args), config_file=args.config)
    config.key_digests(settings)  # Secret digests as the daemon's, if it made its key
    revision = _revision(args, settings)
    metrics = Metrics(CollectorRegistry())
    targets = Registry(settings.runtime(metrics))
    source = GitSource(str(_root(args.path)) if args.path else settings.repo, settings.branch, user_cache())
    try:  # the source is never fetched again: it stands for the repository of `revision`
        return Pipeline(source, Ledger(settings.state_dir, readonly=True), metrics, targets).preview(
            args.environment, revision)
    finally:
        targets.close(workloads=False)  # the daemon's Ray processes are not the CLI's to stop


def _revision(args: argparse.Namespace, settings: config.Settings) -> Revision:
    """The branch head of `--repo`, or with `--path` the working tree on disk (uncommitted changes and all, no
    revision), after checking that `--environment` is one of its environments (else a usage error, exit 2)."""
    if args.path and args.repo:
        raise ConfigError("--path and --repo: give one (--path reads a working tree on disk, --repo a branch)")
    if args.path and not args.path.is_dir():
        raise ConfigError(f"--path {args.path}: not a directory")
    revision = (Revision("", time.time(), DirectoryTree(_root(args.path))) if args.path
                else GitSource(settings.repo, settings.branch, user_cache()).fetch())
    names = list_environments(revision.tree)
    if args.environment not in names:
        where = f"the working tree {args.path}" if args.path else f"{redact(settings.repo)} at {revision.short}"
        raise ConfigError(f"--environment {args.environment}: no such environment in {where} (environments: "
                          f"{', '.join(names) or 'none'})")
    return revision


def _root(path: Path) -> Path:
    """The root of a working tree given as itself, as its `environments/` or as one environment's directory."""
    path = path.resolve()
    if (path / ENVIRONMENT_FILE).exists():
        return path.parent.parent
    return path.parent if path.name == ROOT and not (path / ROOT).is_dir() else path


def cmd_render(args: argparse.Namespace) -> int:
    """The environment's final objects at the branch head (or in the working tree `--path`), as YAML (like
    `flux build` or `kustomize build`): base, patches and variables applied, ownership labels added, Secret
    values as digests."""
    settings = config.load(vars(args), config_file=args.config)
    revision = _revision(args, settings)
    targets = Registry(settings.runtime(Metrics(CollectorRegistry())))  # parses options; builds no target
    try:
        rendered = render(revision.tree, args.environment, revision.sha, targets)
    except InvalidEnvironment as exc:
        print(exc, file=sys.stderr)
        return 1
    config.key_digests(settings)  # Secret digests as the daemon's, if it made its key
    docs = [hide_secret_values(d.manifest) for d in rendered.objects]
    print(yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False), end="")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    return _print_plan(preview(args), bodies=True, output=args.output)


def cmd_plan(args: argparse.Namespace) -> int:
    return _print_plan(preview(args), bodies=False, output=args.output)


def _print_plan(found: Preview, bodies: bool, output: str) -> int:
    """One line per object that is not unchanged or carries a warning (action, object, reason), its warnings,
    optionally its diff; or one JSON document. Exit 0 no changes, 1 changes."""
    shown = [i for i in found.items if i.action != Action.NOOP or i.warnings]
    if output == "json":
        print(json.dumps({"environment": found.environment, "revision": found.revision.sha, "items": [
            i.as_json(i.diff if bodies else None) for i in shown]}, indent=2))
        return 1 if found.changes else 0
    for item in shown:
        print(f"{item.action.value:>8} {item.ref}: {item.reason}")
        for warning in item.warnings:
            print(f"         warning: {warning}")
        if bodies and item.diff:
            print(item.diff.rstrip("\n"))
    print(f"{len(found.changes)} change(s) for environment {found.environment} at "
          f"{found.revision.short or 'the working tree'}")
    return 1 if found.changes else 0


def cmd_validate(args: argparse.Namespace) -> int:
    path, root = Path(args.path).resolve(), _root(Path(args.path))
    names = [path.name] if (path / ENVIRONMENT_FILE).exists() else list_environments(DirectoryTree(root))
    if not names:
        print(f"{path}: no environments found (expected {ROOT}/<env>/environment.yaml)", file=sys.stderr)
        return 1
    targets = Registry(Runtime(Path("."), Metrics(CollectorRegistry())))  # parses options; builds no target
    failed = 0
    for name in names:
        try:
            rendered = render(DirectoryTree(root), name, "", targets)
            print(f"ok: environment {name}: {len(rendered.objects)} object(s), target {rendered.spec.target.kind}")
            for d in rendered.objects:
                for warning in d.warnings:
                    print(f"warning: {d.file}#{d.document}: {d.ref.kind}/{d.ref.name}: {warning}", file=sys.stderr)
        except InvalidEnvironment as exc:
            failed += 1
            print(exc, file=sys.stderr)
    return 1 if failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    settings = config.load(vars(args))
    states = Ledger(settings.state_dir, readonly=True).states()
    if args.output == "json":
        print(json.dumps([s.__dict__ for s in states], indent=2, default=str))
        return 0
    rows = [("ENVIRONMENT", "TARGET", "REVISION", "SYNC", "HEALTH", "UPDATED", "MESSAGE")]
    for s in states:
        rows.append((s.environment, s.target, s.revision[:12], s.sync_status.value, s.health_status.value,
                     _time(s.updated_at), s.message.splitlines()[0][:80] if s.message else ""))
    _table(rows, [_details(s.detail) for s in states])
    return 0


def _details(detail: dict) -> list[str]:
    """One line per cluster (workers ready/desired per group) and per job (status of its run), and the pending
    restarts of clusters and RayServices."""
    lines = []
    for name, cluster in sorted((detail.get("clusters") or {}).items()):
        groups = ", ".join(f"{g} {c.get('ready', 0)}/{c.get('desired', 0)}"
                           for g, c in sorted((cluster.get("groups") or {}).items()))
        lines.append(f"RayCluster {name}: {cluster.get('health', '')}; workers ready/desired: {groups or 'none'}")
        lines += _pending_restart("RayCluster", name, cluster)
    for name, service in sorted((detail.get("services") or {}).items()):
        lines += _pending_restart("RayService", name, service)
    for name, job in sorted((detail.get("jobs") or {}).items()):
        lines.append(f"RayJob {name}: {job.get('status') or 'no run yet'} ({job.get('health', '')})")
    if detail.get("signer"):
        lines.append(f"signed by {detail['signer']}")
    return lines


def _pending_restart(kind: str, name: str, detail: dict) -> list[str]:
    """The line that says which groups still run the old template of a cluster or RayService, if any do."""
    restart = detail.get("pendingRestart") or {}
    return [f"{kind} {name}: pending restart: {', '.join(sorted(restart))} still run the old template "
            f"(changed {_time(min(restart.values()))})"] if restart else []


def cmd_history(args: argparse.Namespace) -> int:
    settings = config.load(vars(args))
    rows = Ledger(settings.state_dir, readonly=True).history(args.environment, args.limit)
    if args.output == "json":
        print(json.dumps([row._asdict() for row in rows], indent=2))
        return 0
    if not rows:
        print(f"no applied revisions recorded for environment {args.environment} in {settings.state_dir}",
              file=sys.stderr)
        return 0
    _table([("REVISION", "COMMITTED", "APPLIED", "RESULT", "SIGNER", "SUMMARY")] + [
        (row.revision[:12], _time(row.commit_time), _time(row.applied_at), row.result, row.signer or "-",
         row.summary.splitlines()[0][:100] if row.summary else "")
        for row in rows])
    return 0


def _time(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else ""


def _table(rows: Sequence[tuple[str, ...]], details: list[list[str]] | None = None) -> None:
    """Aligned columns; `details[i]` are indented lines printed under data row i."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()

    print(line(rows[0]))
    for row, extra in zip(rows[1:], details or [[] for _ in rows[1:]], strict=True):
        print(line(row))
        for text in extra:
            print(f"  {text}")
