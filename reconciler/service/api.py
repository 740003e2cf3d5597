"""The status page's read-only JSON API under /api/v1/: the data of `status -o json`, `history -o json`
and `diff -o json`, per environment, with the commit behind each revision, and the promotion chains.

Answered in HTTP threads: it reads the ledger (SQLite, bounded queries) and what the daemon, `plans`
and `commits` keep in memory. It never fetches Git and never talks to a target: plans and unknown
commits are asked of the page's worker, and an answer says when one is still being computed.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from ..model import Action, HistoryResult, ObjectRef, SyncStatus
from ..pipeline.ledger import EnvironmentState, LastChange, Ledger
from ..pipeline.render import waves
from ..pipeline.source import GitSource, Revision, redact
from ..pipeline.validate import dns_label
from .commits import Commits, describe
from .plans import Plans
from .shards import Shards

PREFIX = "/api/v1/"
LIMITS = {"history": 50, "runs": 50}  # default rows; `?limit=` up to MAX_LIMIT
MAX_LIMIT = 500

Answer = tuple[int, Any]  # (HTTP status, JSON document)


class Api:
    """Routes under PREFIX to JSON documents."""

    def __init__(self, ledger: Ledger, source: GitSource, plans: Plans, commits: Commits,
                 head: Callable[[], Revision | None], selected: Callable[[], list[str]],
                 leading: Callable[[], bool], graph: Callable[[], Mapping[str, tuple[str, ...]]],
                 shards: Shards | None = None, clock: Callable[[], float] = time.time) -> None:
        """`graph`: each environment's `dependsOn` at the head; `shards`: with sharding, who reconciles what."""
        self._ledger, self._source, self._plans, self._commits = ledger, source, plans, commits
        self._head, self._selected, self._leading, self._clock = head, selected, leading, clock
        self._graph, self._shards = graph, shards

    def answer(self, path: str, query: Mapping[str, list[str]]) -> Answer:
        """The document at `path` (below PREFIX), or an {"error": ...} with 404 or 400."""
        parts = path[len(PREFIX):].strip("/").split("/")
        if parts == ["environments"]:
            return 200, self.environments()
        if len(parts) not in (2, 3) or parts[0] != "environments":
            return 404, {"error": f"no such API path: {path[:200]}"}
        name, view = parts[1], parts[2] if len(parts) == 3 else ""
        state = self._state(name)
        owner = self._shards.owner(name) if self._shards is not None and dns_label(name) else None
        if state is None or (owner is not None and not owner.here):
            elsewhere = f" (shard {owner.shard}: replica {owner.replica or 'none yet'})" if owner else ""
            return 404, {"error": f"no environment {name[:80]!r} is reconciled by this daemon{elsewhere}"}
        if view == "":
            return 200, self.environment(state)
        if view == "plan":
            return 200, self.plan(state)
        if view in LIMITS:
            try:
                limit = int(query["limit"][0]) if query.get("limit") else LIMITS[view]
            except ValueError:
                limit = 0
            if not 1 <= limit <= MAX_LIMIT:
                return 400, {"error": f"limit must be a whole number from 1 to {MAX_LIMIT}"}
            return 200, self.history(state, limit) if view == "history" else self.runs(state, limit)
        return 404, {"error": f"no such API path: {path[:200]}"}

    # -- documents -------------------------------------------------------------------------------------
    def environments(self) -> dict[str, Any]:
        """Every environment of this daemon (`status -o json` rows, each with `commit` and `reason`), the Git
        source (branch, head, a failing fetch, an unverified head), whether this replica leads (a
        standby reconciles nothing: its ledger is not the leader's), and the promotion chains. With sharding,
        `shards` says which replica holds each shard, and each row its `owner` (a row another replica owns now
        is this replica's last word on it: read the owner's page)."""
        selected = set(self._selected())
        states = [s for s in self._ledger.states() if not selected or s.environment in selected]
        return {"time": self._clock(), "leading": self._leading(), "source": self._source_info(),
                "shards": self._shards.summary() if self._shards is not None else None,
                "environments": [self._summary(s) for s in states], "promotions": self.promotions(states)}

    def promotions(self, states: list[EnvironmentState]) -> list[list[dict[str, Any]]]:
        """Each promotion chain (environments linked by `dependsOn` at the head), its steps in order (each after
        the ones it depends on): the revision applied there and, while it waits, what for."""
        graph, found = self._graph(), {s.environment: s for s in states}
        linked = {n for n, deps in graph.items() if deps} | {d for deps in graph.values() for d in deps}
        chains, placed = [], set()
        for start in sorted(linked):
            if start in placed:
                continue
            chain, todo = set(), [start]
            while todo:  # everything linked to `start`, either way
                name = todo.pop()
                if name not in chain:
                    chain.add(name)
                    todo += [*graph.get(name, ()), *(n for n, deps in graph.items() if name in deps)]
            placed |= chain
            order = waves({n: graph.get(n, ()) for n in chain})
            chains.append([self._step(n, graph.get(n, ()), found.get(n)) for wave in order for n in wave])
        return chains

    def _step(self, name: str, depends_on: tuple[str, ...], state: EnvironmentState | None) -> dict[str, Any]:
        held = (state.detail.get("waitingFor") if state and state.sync_status == SyncStatus.WAITING else None) or {}
        waiting = {"environments": held["environments"], "revision": held["revision"],
                   "commit": self._commits.get(held["revision"])} if held else None
        return {"environment": name, "depends_on": list(depends_on), "revision": state.revision if state else "",
                "commit": self._commits.get(state.revision) if state else None,
                "sync_status": state.sync_status.value if state else "",
                "health_status": state.health_status.value if state else "", "waiting_for": waiting}

    def environment(self, state: EnvironmentState) -> dict[str, Any]:
        """One environment's row and its objects: kind, health, last outcome and the pending action; and, as in
        `environments`, whether this replica leads and the Git source (the page's header and banners)."""
        return {**self._summary(state), "objects": self._objects(state), "leading": self._leading(),
                "source": self._source_info()}

    def history(self, state: EnvironmentState, limit: int) -> dict[str, Any]:
        """`history -o json` rows, newest first, each with its commit (when known) and the command that rolls
        the environment back to it (for applied revisions other than the one applied now, `applied`)."""
        history = self._ledger.history(state.environment, limit)
        applied = next((row.revision for row in history if row.result == HistoryResult.SUCCESS), "")  # on the target
        rows = [{**row._asdict(), "commit": self._commits.known(row.revision),
                 "rollback": self._rollback(state.environment, row.revision)
                 if row.result == HistoryResult.SUCCESS and row.revision != applied else None} for row in history]
        return {"environment": state.environment, "applied": applied, "items": rows}

    def runs(self, state: EnvironmentState, limit: int) -> dict[str, Any]:
        """RayJob runs from the ledger, newest first, with their duration when they ended."""
        runs = [{**run.__dict__, "duration": run.end_time - run.start_time if run.end_time and run.start_time
                 else None} for run in self._ledger.runs(state.environment, limit)]
        return {"environment": state.environment, "items": runs}

    def plan(self, state: EnvironmentState) -> dict[str, Any]:
        """What the next reconcile at the branch head would do (`diff -o json` items, no-ops left out).
        `status`: ready; refreshing (an older plan, a new one is being computed); computing (none yet);
        unavailable (no revision fetched)."""
        plan, current = self._plans.get(state.environment, state.updated_at)
        head = self._head()
        if head is None and plan is None:
            status = "unavailable"
        else:
            status = "ready" if current else "refreshing" if plan is not None else "computing"
        return {"environment": state.environment, "status": status,
                "revision": plan.revision if plan else head.sha if head else "",
                "computed_at": plan.computed_at if plan else None, "error": plan.error if plan else "",
                "items": [i for i in plan.items if i["action"] != Action.NOOP.value] if plan else []}

    # -- parts -----------------------------------------------------------------------------------------
    def _state(self, name: str) -> EnvironmentState | None:
        selected = self._selected()
        if not dns_label(name) or (selected and name not in selected):
            return None
        return self._ledger.state(name)

    def _source_info(self) -> dict[str, Any]:
        head, failure, unverified = self._head(), self._source.failure, self._source.unverified
        return {"repo": redact(self._source.url), "branch": self._source.branch,
                "head": describe(head) if head else None,
                "fetch_failure": {"since": failure.since, "reason": failure.reason} if failure else None,
                "unverified": {"revision": unverified[0], "reason": unverified[1]} if unverified else None}

    def _summary(self, state: EnvironmentState) -> dict[str, Any]:
        """The `status -o json` row, the commit of its revision, and the reason for its sync status."""
        return {"environment": state.environment, "target": state.target, "revision": state.revision,
                "sync_status": state.sync_status.value, "health_status": state.health_status.value,
                "message": state.message, "updated_at": state.updated_at, "detail": state.detail,
                "commit": self._commits.get(state.revision), "reason": reason(state),
                "owner": self._owner(state.environment)}

    def _owner(self, name: str) -> dict[str, Any] | None:
        """With sharding: the environment's shard, the replica holding it, and whether that is this one."""
        if self._shards is None:
            return None
        owner = self._shards.owner(name)
        return {"shard": owner.shard, "replica": owner.replica, "here": owner.here}

    def _objects(self, state: EnvironmentState) -> list[dict[str, Any]]:
        """Applied objects (the inventory), those the last reconcile rendered and those the plan knows, with
        their health and its reason and warnings from the last reconcile, their last outcome and the pending
        action."""
        name, reported = state.environment, state.detail.get("objects") or {}
        plan = self._plans.peek(name)
        pending = {i["object"]: i for i in plan.items} if plan else {}
        refs = {str(ref): ref for ref in self._ledger.load(name).inventory}
        rows: dict[str, dict[str, Any]] = {key: {"object": key, "kind": ref.kind, "namespace": ref.namespace,
                                                 "name": ref.name} for key, ref in refs.items()}
        for key, item in pending.items():
            rows.setdefault(key, {k: item[k] for k in ("object", "kind", "namespace", "name")})
        for key, obj in reported.items():  # rendered but neither applied nor planned (a job gone by its TTL)
            rows.setdefault(key, {"object": key} | {k: obj[k] for k in ("kind", "namespace", "name")})
        last = last_outcomes(self._ledger.last_changes(name, LIMITS["history"]))
        for key, row in rows.items():
            action = pending[key]["action"] if key in pending else None
            health = reported.get(key) or ({"health": "Missing", "message": "not created yet"}
                                           if action == Action.CREATE.value else
                                           {"health": "Unknown", "message": "no health reported by the last reconcile"})
            row.update(health=health["health"], health_message=health["message"], warnings=health.get("warnings", []),
                       last_action=last.get(key), pending=action)
        return sorted(rows.values(), key=lambda r: (r["kind"], r["namespace"], r["name"]))

    def _rollback(self, environment: str, revision: str) -> str:
        branch = self._source.branch
        return (f"ray-gitops rollback --repo . --environment {environment} --to {revision}"
                + (f" --branch {branch}" if branch != "main" else ""))


def reason(state: EnvironmentState) -> str:
    """Why an environment is not Synced, in one line: the message's first line up to its first "; "
    (a Failed environment's first error). Empty when Synced."""
    if state.sync_status == SyncStatus.SYNCED or not state.message:
        return ""
    return state.message.splitlines()[0].split("; ")[0][:300]


def last_outcomes(changes: Mapping[ObjectRef, LastChange]) -> dict[str, dict[str, Any]]:
    """object -> {outcome, revision, applied_at} of its newest change (`Ledger.last_changes`)."""
    return {str(ref): {"outcome": last.change.outcome.value, "revision": last.revision, "applied_at": last.applied_at}
            for ref, last in changes.items()}
