"""`ray-gitops reconcile`: make the running daemon of a state dir fetch Git and reconcile now (one environment,
several, or all), over its control socket, and print what each reconcile did.

It acts only through the daemon (which owns Git, the ledger and the targets): it never fetches, reconciles
or writes anything itself.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..model import parse_duration
from ..service import config, control


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Exit 0: every named environment reconciled without failure; 1: a failure, no daemon, or no answer in
    time; 2: an environment the daemon does not reconcile."""
    settings = config.load(vars(args))
    try:
        timeout = parse_duration(args.timeout)
    except ValueError as exc:
        print(f"ray-gitops reconcile: --timeout: {exc}", file=sys.stderr)
        return 2
    try:
        answer = control.request(settings.state_dir, list(args.environments), timeout)
    except (control.NoDaemon, TimeoutError) as exc:
        print(f"ray-gitops reconcile: {exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(answer, indent=2))
    else:
        if answer["revision"]:
            print(f"fetched {answer['revision'][:12]}")
        for r in answer["results"]:
            line = f"{r['environment']}: {r['result']}, {r['sync_status']}, {r['health_status']}"
            print(line + (f" at {r['revision'][:12]}" if r["revision"] else "") +
                  (f": {r['message'].splitlines()[0]}" if r["message"] else ""))
    if answer["error"]:
        print(f"ray-gitops reconcile: {answer['error']}", file=sys.stderr)
    return int(answer["code"])
