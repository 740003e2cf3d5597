"""Every setting of `ray-gitops run`, declared once: its field, flag, `RAY_GITOPS_*` variable, config-file key,
help, default and how a text becomes its value. `config.load` reads values by them, the CLI makes the `run`
flags of them and `markdown()` the reference, docs/settings.md (`python -m reconciler.service.settings`).

Imported by `ray-gitops --help`, so it loads no Git, Kubernetes or pipeline code until a value is read.
"""
from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..model import parse_duration

if TYPE_CHECKING:
    from ..targets import Cluster

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
ENV_PREFIX = "RAY_GITOPS_"

Coerce = Callable[[str, Any], Any]  # (setting name, raw value from a flag, variable or the config file) -> value


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ray-gitops"


def pod_namespace() -> str:
    """The pod's namespace when running in a cluster, else ""."""
    try:
        return Path(SERVICE_ACCOUNT_NAMESPACE).read_text().strip()
    except OSError:
        return ""


# How raw values become settings. A ValueError or TypeError becomes `setting <name>: <message>` (config.load).

def text(name: str, value: Any) -> str:
    return str(value)


def duration(name: str, value: Any) -> float:
    return parse_duration(value)


def path(name: str, value: Any) -> Path:
    return Path(value).expanduser()


def boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word not in BOOLEANS:
        raise ValueError(f"expected true or false, got {value!r}")
    return BOOLEANS[word]


def number(name: str, value: Any) -> float:
    return float(value)


def whole(minimum: int, meaning: str = "") -> Coerce:
    """A whole number >= `minimum`; `meaning` explains the smallest, e.g. " (0: off)"."""
    def coerce(name: str, value: Any) -> int:
        count = int(value)
        if count < minimum:
            raise ValueError(f"{name} must be a whole number >= {minimum}{meaning}, got {value!r}")
        return count
    return coerce


def fraction(name: str, value: Any) -> float:
    share = float(value)
    if not 0 < share <= 1:
        raise ValueError(f"must be a number in (0, 1], got {value!r}")
    return share


def hosts(name: str, value: Any) -> tuple[str, ...]:
    names = tuple(h.strip() for h in value.split(",")) if isinstance(value, str) else tuple(map(str, value))
    for host in names:
        if not host or any(c.isspace() or c in "/@?#" for c in host):
            raise ValueError(f"{host!r} is not a host name (names, without scheme or path, comma-separated)")
    return names


def environment_names(name: str, value: Any) -> tuple[str, ...]:
    # imported here, not at the top, as in `urls` and `cluster_map`: see the module docstring
    from ..pipeline.validate import dns_label
    names = tuple(value.split(",")) if isinstance(value, str) else tuple(value)
    for environment in names:
        if not dns_label(environment):
            raise ValueError(f"{environment!r} is not an environment name (a DNS-1123 label: a-z, 0-9, '-')")
    return names


def urls(name: str, value: Any) -> tuple[str, ...]:
    from .notify import destination
    found = tuple(u for u in re.split(r"[\s,]+", value) if u) if isinstance(value, str) else tuple(map(str, value))
    for url in found:
        destination(url)  # a ValueError names only scheme and host
    return found


CLUSTER_KEYS = {"kubeconfig", "context", "in_cluster", "environments", "namespaces", "service_accounts"}


def cluster_map(name: str, value: Any) -> dict[str, Cluster]:
    """`clusters` (a mapping, or YAML text from the variable): name -> {kubeconfig, context, in_cluster,
    environments, namespaces, service_accounts} (patterns; `-` or `_` in keys). A cluster that lists no service
    accounts gets the default (see `Settings.kube_clusters`)."""
    import yaml

    from ..pipeline.validate import dns_label
    from ..targets import Cluster
    value = yaml.safe_load(value) if isinstance(value, str) else value
    if not isinstance(value, dict):
        raise ValueError("must map cluster names to their settings (kubeconfig, context or in_cluster, ...)")
    out = {}
    for cluster, raw in value.items():
        if not isinstance(cluster, str) or not dns_label(cluster):
            raise ValueError(f"cluster name {cluster!r} is not a DNS-1123 label")
        raw = {str(k).replace("-", "_"): v for k, v in (raw or {}).items()}
        if set(raw) - CLUSTER_KEYS:
            raise ValueError(f"cluster {cluster}: unknown keys {', '.join(sorted(set(raw) - CLUSTER_KEYS))} (known: "
                             f"{', '.join(sorted(CLUSTER_KEYS))})")
        lists = {key: tuple(str(p) for p in raw.get(key, ["*"])) for key in ("environments", "namespaces")}
        out[cluster] = Cluster(cluster, str(raw.get("kubeconfig") or ""), str(raw.get("context") or ""),
                               raw.get("in_cluster") is True, lists["environments"], lists["namespaces"],
                               tuple(str(p) for p in raw.get("service_accounts", ())))
    return out


@dataclass(frozen=True)
class Setting:
    """How one field of `Fields` is set and documented. Its variable is `RAY_GITOPS_<NAME>`, its config-file key
    the field's name (`-` or `_`)."""

    coerce: Coerce
    help: str  # the flag's --help line (plain text); the reference's meaning too, unless `doc`
    doc: str = ""  # the reference's meaning (markdown), when it says more than `help`
    shown_default: str = ""  # the default as the reference shows it, when not the field's value as it is
    flag: str | None = ""  # "": --<name with '-'>; None: no flag (a variable or the config file only)
    hidden: bool = False  # a flag --help does not list (for tests)
    cli: Mapping[str, Any] = field(default_factory=dict)  # more argparse.add_argument keywords (choices, action...)

    def meaning(self) -> str:
        return self.doc or self.help[0].upper() + self.help[1:] + "."


def setting(default: Any, coerce: Coerce, help: str, *, repr: bool = True, **how: Any) -> Any:
    """A field of `Fields` declared with its `Setting`; `default` may be a callable making it (a fresh dict)."""
    made = Setting(coerce, help, **how)
    if callable(default):
        return field(default_factory=default, repr=repr, metadata={"setting": made})
    return field(default=default, repr=repr, metadata={"setting": made})


@dataclass(frozen=True)
class Fields:
    """The settings' values, one field per setting, in the reference's order. `config.Settings` adds what is
    built from them (targets' runtime, signature checks, notification destinations)."""

    repo: str = setting("", text, "Git URL or local path of the GitOps repository", shown_default="(required)",
                        doc="Git URL or local path. Credentials in a URL are never logged.")
    branch: str = setting("main", text, "branch to follow (default main)", doc="Branch to follow.")
    environments: tuple[str, ...] = setting(
        (), environment_names, "environment to reconcile (repeatable; default all)", shown_default="all",
        flag="--environment", cli={"action": "append", "default": []},
        doc="Environments to reconcile (`--environment`, repeatable; the variable: comma-separated).")
    interval: float = setting(30.0, duration, "Git poll interval, e.g. 5s (default 30s)", shown_default="`30s`",
                              doc="Git poll interval (`ms`, `s`, `m`, `h`).")
    metrics_address: str = setting(
        "127.0.0.1:9464", text, "host:port for /metrics /healthz /readyz (default 127.0.0.1:9464)",
        doc="Serves `/metrics`, `/healthz`, `/readyz`, `POST /hooks/git` and the status page (`/`, `/api/v1/`).")
    ui: bool = setting(
        True, boolean, "serve the read-only status page (/) and its JSON API (/api/v1/) on --metrics-address "
        "(default true; --ui=false turns both off)", cli={"nargs": "?", "const": "true", "metavar": "true|false"},
        doc="The read-only [status page](user-guide.md#status-page) and its JSON API. `--ui=false` turns both off "
        "(404); the other endpoints stay.")
    allowed_hosts: tuple[str, ...] = setting(
        (), hosts, "comma-separated Host names the status page answers to besides 127.0.0.1, localhost and the bound "
        "address (names behind a proxy)",
        doc="More `Host` names the status page and its API answer to (the name of an authenticating proxy in front of "
        "them; comma-separated), besides `127.0.0.1`, `localhost`, `::1` and the address it is bound to. Other names "
        "get 421 (DNS rebinding). `/metrics`, `/healthz`, `/readyz` and `POST /hooks/git` answer any name.")
    state_dir: Path = setting(default_state_dir(), path, "ledger, Git cache and local clusters (default "
                              "$XDG_STATE_HOME/ray-gitops)", shown_default="`$XDG_STATE_HOME/ray-gitops`",
                              doc="Ledger, Git cache, local clusters.")
    once: bool = setting(False, boolean, "reconcile once and exit (0 = all succeeded)",
                         doc="Reconcile once and exit: 0 when every environment succeeded, else 1.",
                         cli={"action": "store_true", "default": None})
    concurrency: int = setting(
        4, whole(1), "environments reconciled at the same time (default 4)",
        doc="Environments reconciled at the same time (Flux's `--concurrent` has the same default). The others wait "
        "their turn; one environment never runs twice at once.")
    verify_commits: str = setting(
        "", text, "apply only revisions whose head (head) or every new commit (strict) carries a valid signature by a "
        "key in --trusted-keys", shown_default="(off)", cli={"choices": ["head", "strict"]},
        doc="`head`: apply a new branch head only if it carries a valid signature by a trusted key; `strict`: every "
        "commit new since the last verified head must (see [Signed commits](operations.md#signed-commits)).")
    trusted_keys: str = setting(
        "", text, "directory of OpenPGP public keys (*.asc) and an SSH allowed_signers file",
        doc="Directory of trusted OpenPGP public keys (`*.asc`) and an SSH `allowed_signers` file; required with "
        "`verify_commits`.")
    verify_allow_rewrite: bool = setting(
        False, boolean, "strict: accept a branch head that is not a descendant of the last verified one (history "
        "rewritten)", flag=None, doc="`strict`: accept a branch head that is not a descendant of the last verified one "
        "(history rewritten).")
    default_service_account: str = setting(
        "", text, "Kubernetes: the service account (in each environment's namespace) whose rights every write of an "
        "environment without serviceAccountName uses",
        doc="Kubernetes: every write of an environment without `serviceAccountName` impersonates this service account "
        "of its namespace (multi-tenant lock-down).")
    kube_api_qps: float = setting(
        0.0, number, "Kubernetes requests per second per API server, on average (default 0: no client-side limit)",
        shown_default="`0`",
        doc="Client-side rate limit per API server (a token bucket, as client-go's). `0` (the default): no "
        "client-side limit; the server's API Priority and Fairness paces us, and a 429 is retried after its "
        "Retry-After (see [Request pacing](targets.md#request-pacing)). Set it (Flux uses 50, burst 300) for an API "
        "server without APF.")
    kube_api_burst: int = setting(300, whole(1), "Kubernetes requests in a burst above --kube-api-qps (default 300)",
                                  doc="Kubernetes requests in a burst above `kube_api_qps`.")
    log_format: str = setting("text", text, "log output: text or json (default text)",
                              doc="Log output: `text` or `json`.", cli={"choices": ["text", "json"]})
    log_level: str = setting("info", text, "log level (default info)", doc="Log level.",
                             cli={"choices": ["debug", "info", "warning", "error"]})
    leader_election: bool = setting(
        False, boolean, "reconcile only while holding a coordination.k8s.io Lease (for more than one replica)",
        cli={"action": "store_true", "default": None})
    leader_election_namespace: str = setting(
        pod_namespace() or "default", text, "namespace of the Lease (default: the pod's, else default)",
        shown_default="the pod's namespace, else `default`",
        doc="Namespace of the Lease.")
    leader_election_id: str = setting("ray-gitops", text, "name of the Lease (default ray-gitops)",
                                         doc="Name of the Lease.")
    leader_election_lease_duration: float = setting(
        15.0, duration, "how long a Lease holds without renewal", shown_default="`15s`", hidden=True,
        doc="Timing (as client-go): how long a Lease holds without renewal; must satisfy lease duration > renew "
        "deadline > 1.2 × retry period. Sharding uses the same timing.")
    leader_election_renew_deadline: float = setting(
        10.0, duration, "how long the holder tries to renew before it gives the Lease up", shown_default="`10s`",
        hidden=True)
    leader_election_retry_period: float = setting(
        2.0, duration, "how often a replica tries to take or renew the Lease", shown_default="`2s`", hidden=True)
    shards: int = setting(
        0, whole(0, " (0: off)"), "split the environments among this many shard Leases, each replica reconciling its "
        "share (default 0: off; not with --leader-election)", shown_default="`0` (off)",
        doc="Split the environments among this many shard Leases, each replica reconciling the environments of the "
        "shards it holds (see [Sharded replicas](operations.md#sharded-replicas)). The Leases live in "
        "`leader_election_namespace` and are named after `leader_election_id`. Not together with `leader_election`.")
    kubeconfig: str = setting(
        "", text, "kubeconfig of the Lease and of the cluster `default` (default: in-cluster, else $KUBECONFIG or "
        "~/.kube/config)", shown_default="in-cluster, else `$KUBECONFIG` or `~/.kube/config`",
        doc="Where the Lease lives, and what the cluster `default` connects to when `clusters` is not set.")
    kube_context: str = setting("", text, "its context (default: the current context)",
                                shown_default="the kubeconfig's current context",
                                doc="The context of `kubeconfig`.")
    clusters: Mapping[str, Cluster] = setting(
        dict, cluster_map, "the Kubernetes clusters environments may name, and who may use each", flag=None,
        shown_default="one cluster, `default` (above)",
        doc="The Kubernetes clusters environments may name, and who may use each (see "
        "[Clusters](operations.md#clusters)). Best set in the `--config` file; the variable holds YAML.")
    webhook_secret: str = setting(
        "", text, "shared secret for POST /hooks/git", flag=None, repr=False,
        doc="Shared secret for `POST /hooks/git`; without it (or the file) the endpoint answers 404. Never logged; no "
        "flag, so it never shows in a process list.")
    webhook_secret_file: str = setting(
        "", text, "file holding the POST /hooks/git secret (a mounted Secret); or RAY_GITOPS_WEBHOOK_SECRET; none: the "
        "endpoint is off", doc="File holding the webhook secret (a mounted Secret; trailing newline ignored). Wins "
        "over `webhook_secret`. Read at start.")
    webhook_max_body: int = setting(
        1024 * 1024, whole(1), "largest webhook body in bytes (default 1048576)",
        doc="Largest webhook body in bytes; a larger Content-Length gets 413 unread.")
    removal_max_fraction: float = setting(
        0.5, fraction, "share of the environments that may leave Git in one revision and have their objects pruned; "
        "more is refused (default 0.5; 1: no guard)",
        doc="The removal guard: when more than this share of the environments the ledger knows (and more than one), "
        "or all of them, leave Git in one revision, none is removed (see "
        "[What Git controls](user-guide.md#what-git-controls)). `1` turns the guard off: how a repository of one "
        "environment removes it.")
    dependency_timeout: float = setting(
        600.0, duration, "--once: how long each dependsOn link may take to be Healthy at the revision before its "
        "dependents are given up, exit 1 (default 10m)", shown_default="`10m`",
        doc="`--once`: how long each `dependsOn` link may take to be Healthy at the revision before its dependents "
        "are given up (they stay `Waiting`; exit 1).")
    installation_key_file: str = setting(
        "", text, "the installation's secret", flag=None, shown_default="`<state-dir>/installation-key`",
        doc="The installation's secret (at least 32 bytes): it keys the Secret digests and signs the ledger copies "
        "on the targets. In a cluster, mount it from a Secret, so it outlives the emptyDir state dir.")
    notify_urls: tuple[str, ...] = setting(
        (), urls, "POST JSON here when an environment fails, recovers, is promoted, waits, is removed or is "
        "unverified (repeatable; Slack's format for hooks.slack.com or a slack+https:// prefix)", repr=False,
        flag="--notify-url", cli={"action": "append", "default": []},
        doc="URLs POSTed a JSON message when an environment's state changes (`--notify-url`, repeatable; the "
        "variable: comma- or space-separated; see [Notifications](user-guide.md#notifications)). Slack's format for "
        "`hooks.slack.com` or a `slack+https://` prefix. Only `scheme://host` is ever logged.")
    notify_urls_file: str = setting(
        "", text, "file of more notification URLs, one per line (a mounted Secret)",
        doc="File of more notification URLs, one per line (`#` comments), for URLs that hold a secret (a mounted "
        "Secret). Read at start.")


# The settings by concern, as `run --help` and the reference list them (every field in exactly one group).
GROUPS: dict[str, tuple[str, ...]] = {
    "Git": ("repo", "branch", "interval", "verify_commits", "trusted_keys", "verify_allow_rewrite"),
    "Reconciling": ("environments", "once", "concurrency", "dependency_timeout", "removal_max_fraction", "state_dir",
                    "installation_key_file"),
    "HTTP: metrics, health, the status page and webhooks": (
        "metrics_address", "ui", "allowed_hosts", "webhook_secret", "webhook_secret_file", "webhook_max_body"),
    "Kubernetes": ("kubeconfig", "kube_context", "clusters", "default_service_account", "kube_api_qps",
                   "kube_api_burst"),
    "Replicas: leader election and shards": (
        "leader_election", "leader_election_namespace", "leader_election_id", "leader_election_lease_duration",
        "leader_election_renew_deadline", "leader_election_retry_period", "shards"),
    "Notifications": ("notify_urls", "notify_urls_file"),
    "Logs": ("log_format", "log_level"),
}


def declared(group: str | None = None) -> Iterator[tuple[Field[Any], Setting]]:
    """Each field of `Fields` with its `Setting`: of `group` in its order, else all in declaration order."""
    by_name = {each.name: each for each in fields(Fields)}
    for each in (by_name[name] for name in GROUPS[group]) if group else by_name.values():
        yield each, each.metadata["setting"]


def env_var(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag(name: str, how: Setting) -> str | None:
    return None if how.flag is None else how.flag or "--" + name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """The flags of the settings `names` on `parser`, or of all of them in their groups (None); a flag not given is
    None (not set)."""
    places = [(parser, declared())] if names is not None else [
        (parser.add_argument_group(f"{group} settings"), declared(group)) for group in GROUPS]
    for place, settings in places:
        for each, how in settings:
            option = flag(each.name, how)
            if option and (names is None or each.name in names):
                place.add_argument(option, dest=each.name, help=argparse.SUPPRESS if how.hidden else how.help,
                                   **how.cli)


def shown(each: Field[Any], how: Setting) -> str:
    """The default as the reference shows it."""
    if how.shown_default:
        return how.shown_default
    value = each.default if each.default is not MISSING else None
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`" if value not in ("", (), None) else "(none)"


def markdown() -> str:
    """docs/settings.md: the reference of every setting, made from the declarations."""
    made = ("<!-- Made by `python -m reconciler.service.settings > docs/settings.md` from "
            "reconciler/service/settings.py; edit there. -->")
    precedence = ("`ray-gitops run` reads each setting from, in this order: its flag, its environment variable "
                  f"(`{ENV_PREFIX}<NAME>`), the `--config` YAML file (the keys below, with `-` or `_`), its default. "
                  "An empty variable counts as unset. A true/false setting takes `true`/`false`, `1`/`0` or "
                  "`yes`/`no`; anything else is an error naming the setting, as is an unknown key in the config "
                  "file. Durations take `ms`, `s`, `m` and `h` (`1h30m`) or a number of seconds.")
    lines = ["# Settings", "", made, "", precedence]
    for group in GROUPS:
        lines += ["", f"## {group}", "", "| key | flag | environment variable | default | meaning |",
                  "|---|---|---|---|---|"]
        for each, how in declared(group):
            option = flag(each.name, how)
            shown_flag = "(none)" if option is None else f"`{option}`" + (" (hidden)" if how.hidden else "")
            lines.append(f"| `{each.name}` | {shown_flag} | `{env_var(each.name)}` | {shown(each, how)} | "
                         f"{how.meaning()} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
