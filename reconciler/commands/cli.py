"""Command line: run, reconcile, diff, plan, render, validate, status, history, rollback, suspend, resume
(`ray-gitops --help`).

The outermost layer: parses flags and hands each command to its module (`run` here, the read-only
ones in `show`, the interventions in `rollback`). Every error reaches the user as one line with
the command's documented exit code, never as a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError, InvalidEnvironment, RayGitopsError
from ..service import settings


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
    # urllib3 warns on each connection retry; the failed request is reported once, by the daemon
    logging.getLogger("urllib3").setLevel(max(logging.ERROR, logging.getLogger().level))


def _command(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """Command `name` of `module`, imported when it runs: `--help` and a bad flag load no Git, Kubernetes or
    pipeline code."""
    return lambda args: getattr(importlib.import_module(f"{__package__}.{module}"), name)(args)


def cmd_run(args: argparse.Namespace) -> int:
    from ..pipeline.source import redact
    from ..service import config
    from ..service.daemon import Daemon
    settings = config.load(vars(args), config_file=args.config)
    if not settings.repo:
        print("ray-gitops run: --repo (or RAY_GITOPS_REPO) is required", file=sys.stderr)
        return 2
    _logging(settings.log_format, settings.log_level)
    config.key_digests(settings, create=True)
    daemon = Daemon(settings)
    if settings.once:
        try:
            return 0 if daemon.run_once() else 1
        except ConfigError:
            raise  # exit 2, like any bad setting
        except RayGitopsError as exc:
            logging.getLogger("ray-gitops").error("%s", exc)
            return 1
        finally:
            daemon.targets.close()
            daemon.ledger.close()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: daemon.stop())
    host, port = settings.host_port
    print(f"ray-gitops: reconciling {redact(settings.repo)} ({settings.branch}) every {settings.interval:g}s; "
          f"metrics on http://{host}:{port}/metrics; state in {settings.state_dir}", file=sys.stderr)
    if not daemon.serve():  # a reconcile that never ends: do not wait for its thread at exit
        logging.shutdown()
        os._exit(0)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ray-gitops", description="GitOps reconciler for Ray (KubeRay and local Ray)")
    sub = p.add_subparsers(dest="command", required=True)

    def source_flags(sp: argparse.ArgumentParser, names: tuple[str, ...] | None = ("repo", "branch", "state_dir")
                     ) -> None:
        """The flags of settings `names` (None: all, as `run` takes) and --config."""
        settings.add_flags(sp, names)
        sp.add_argument("--config", type=Path, help="YAML file of settings, e.g. the clusters (flags and env vars win)")

    def working_tree_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--path", type=Path, help="read the environments from this working tree on disk, "
                        "uncommitted changes included, instead of --repo's branch (like flux build --path)")

    run = sub.add_parser("run", help="run the reconciler daemon", description="Every flag has a RAY_GITOPS_* "
                         "variable and a --config key: docs/settings.md.")
    source_flags(run, None)
    run.set_defaults(func=cmd_run)

    now = sub.add_parser("reconcile", help="make the running daemon of --state-dir fetch Git and reconcile now, and "
                         "wait for it (exit 0 done, 1 failed or no daemon, 2 unknown environment)")
    now.add_argument("--environment", action="append", dest="environments", default=[], metavar="NAME",
                     help="environment to reconcile (repeatable; default all the daemon reconciles)")
    now.add_argument("--state-dir", type=Path, help="the daemon's state directory (its control.sock)")
    now.add_argument("--timeout", default="5m", help="how long to wait for the reconciles (default 5m)")
    now.add_argument("-o", "--output", choices=["text", "json"], default="text")
    now.set_defaults(func=_command("reconcile", "cmd_reconcile"))

    for verb, func, text in (
            ("diff", _command("show", "cmd_diff"),
             "show what a reconcile would change (exit 0 none, 1 changes, 2 error)"),
            ("plan", _command("show", "cmd_plan"),
             "what apply would do per object, no diff bodies (exit 0 none, 1 changes, 2 error)")):
        preview = sub.add_parser(verb, help=text)
        source_flags(preview)
        working_tree_flag(preview)
        preview.add_argument("--environment", required=True)
        preview.add_argument("-o", "--output", choices=["text", "json"], default="text")
        preview.set_defaults(func=func)

    built = sub.add_parser("render", help="print an environment's final objects as YAML, base, patches and "
                           "variables applied (exit 0 ok, 1 invalid, 2 error)")
    source_flags(built)
    working_tree_flag(built)
    built.add_argument("--environment", required=True)
    built.set_defaults(func=_command("show", "cmd_render"))

    history = sub.add_parser("history", help="revisions applied to an environment, newest first (from the ledger)")
    history.add_argument("--environment", required=True)
    history.add_argument("--state-dir", type=Path)
    history.add_argument("--limit", type=int, default=50, help="newest N (default 50)")
    history.add_argument("-o", "--output", choices=["table", "json"], default="table")
    history.set_defaults(func=_command("show", "cmd_history"))

    back = sub.add_parser("rollback", help="git revert the commits that changed an environment, in a local clone "
                          "(exit 0 done, 2 refused or conflict)")
    back.add_argument("--repo", required=True, help="path of a clean local clone (work tree) on --branch")
    back.add_argument("--environment", required=True)
    back.add_argument("--to", help="revert every commit after this revision that changed the environment (default: "
                      "the parent of the last applied revision with --state-dir, else of the environment's newest "
                      "commit)")
    back.add_argument("--branch", default="main")
    back.add_argument("--state-dir", type=Path, help="the daemon's state directory (for the last applied revision)")
    how = back.add_mutually_exclusive_group()
    how.add_argument("--all-paths", action="store_true", help="also revert commits that changed other paths "
                     "(the diff printed is then the whole repository's)")
    how.add_argument("--restore", action="store_true", help="one commit restoring environments/<name>/ to the "
                     "revision, instead of one revert per commit")
    back.add_argument("--reapply", action="store_true", help="allow undoing a rollback (which re-applies what it "
                      "rolled back); refused by default")
    back.add_argument("--push", action="store_true", help="push the revert commit(s) (default: only commit locally)")
    back.set_defaults(func=_command("rollback", "cmd_rollback"))

    for verb, text in (("suspend", "stop applying to an environment (ledger flag; the daemon sees it at its "
                                   "next reconcile)"), ("resume", "undo `suspend`")):
        hold = sub.add_parser(verb, help=text)
        hold.add_argument("--environment", required=True)
        hold.add_argument("--state-dir", type=Path, required=True, help="the daemon's state directory")
        if verb == "suspend":
            hold.add_argument("--reason", help="shown in status (e.g. an incident number)")
        hold.set_defaults(func=_command("rollback", "cmd_suspend"))

    val = sub.add_parser("validate", help="check a repository or environment directory (exit 0 ok, 1 invalid)")
    val.add_argument("path")
    val.set_defaults(func=_command("show", "cmd_validate"))

    status = sub.add_parser("status", help="table of environments: revision, sync, health")
    status.add_argument("--state-dir", type=Path)
    status.add_argument("-o", "--output", choices=["table", "json"], default="table")
    status.set_defaults(func=_command("show", "cmd_status"))
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command. Errors: one line on stderr and exit code 2 (`RAY_GITOPS_TRACEBACK=1` adds the
    traceback of an unexpected one)."""
    _logging("text", "warning")
    os.umask(0o077)  # whatever ray-gitops writes (state, ledger, Git cache, local clusters) is its alone
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except InvalidEnvironment as exc:
        print(exc, file=sys.stderr)
    except RayGitopsError as exc:
        print(f"ray-gitops {args.command}: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: still one line, unless asked for more
        if os.environ.get("RAY_GITOPS_TRACEBACK"):
            traceback.print_exc()
        print(f"ray-gitops {args.command}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
