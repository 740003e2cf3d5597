"""Daemon settings: command-line flags > `RAY_GITOPS_*` environment variables > config file > defaults.

Read once by the CLI; every other module receives a `Settings`. Never logs secrets.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from ..errors import ConfigError
from ..metrics import Metrics
from ..model import parse_duration
from ..pipeline.diff import use_digest_key
from ..pipeline.validate import dns_label
from ..pipeline.verify import Verifier
from ..targets import DEFAULT_CLUSTER, PROTECTED_NAMESPACES, Cluster, Runtime
from .notify import Destination, destination

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
INSTALLATION_KEY = "installation-key"  # in the state dir
DURATIONS = ("interval", "leader_election_lease_duration", "leader_election_renew_deadline",
             "leader_election_retry_period", "dependency_timeout")


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ray-gitops"


def pod_namespace() -> str:
    """The pod's namespace when running in a cluster, else ""."""
    try:
        return Path(SERVICE_ACCOUNT_NAMESPACE).read_text().strip()
    except OSError:
        return ""


def default_namespace() -> str:
    """The pod's namespace when running in a cluster, else "default"."""
    return pod_namespace() or "default"


@dataclass(frozen=True)
class Settings:
    """Everything `ray-gitops run` needs. Keys are the flag names with `_` for `-`."""

    repo: str = ""
    branch: str = "main"
    environments: tuple[str, ...] = ()
    interval: float = 30.0
    metrics_address: str = "127.0.0.1:9464"
    allowed_hosts: tuple[str, ...] = ()  # Host names the page answers to besides loopback and the bound address
    state_dir: Path = default_state_dir()
    once: bool = False
    log_format: str = "text"
    log_level: str = "info"
    leader_election: bool = False  # only the replica holding the Lease reconciles
    leader_election_namespace: str = default_namespace()
    leader_election_id: str = "ray-gitops"  # the Lease's name
    leader_election_lease_duration: float = 15.0
    leader_election_renew_deadline: float = 10.0
    leader_election_retry_period: float = 2.0
    shards: int = 0  # > 0: replicas split the environments among this many shard Leases (the leader_election_* Lease
    # namespace, id as the Leases' name prefix, and timing); 0: off
    kubeconfig: str = ""  # where the Lease lives: default in-cluster, else $KUBECONFIG / ~/.kube/config
    kube_context: str = ""
    webhook_secret: str = field(default="", repr=False)  # POST /hooks/git; empty (and no file): disabled
    webhook_secret_file: str = ""  # a mounted Secret's file; wins over webhook_secret
    webhook_max_body: int = 1024 * 1024  # bytes; larger webhook bodies get 413 unread
    concurrency: int = 4  # environments reconciled at the same time (as Flux's --concurrent)
    kube_api_qps: float = 0.0  # client-side rate limit per API server; 0: none (see README, Request pacing)
    kube_api_burst: int = 300
    default_service_account: str = ""  # Kubernetes writes of environments without serviceAccountName impersonate it
    verify_commits: str = ""  # "" (off), head or strict: which commits must carry a trusted signature
    trusted_keys: str = ""  # a directory of *.asc OpenPGP public keys and an SSH allowed_signers file
    verify_allow_rewrite: bool = False  # strict: accept a head that is not a descendant of the last verified one
    ui: bool = True  # the status page (/) and its read-only JSON API (/api/v1/) on the metrics address
    clusters: Mapping[str, Cluster] = field(default_factory=dict)  # Kubernetes clusters environments may name
    installation_key_file: str = ""  # the secret keying digests and ledger copies (default <state-dir>/installation-key)
    removal_max_fraction: float = 0.5  # environments that may leave Git in one revision and be removed (1: no guard)
    dependency_timeout: float = 600.0  # run --once: how long a dependsOn link may take to be Healthy at the revision
    notify_urls: tuple[str, ...] = field(default=(), repr=False)  # POSTed on environment state changes (notify.py)
    notify_urls_file: str = ""  # a mounted Secret's file of more such URLs, one per line

    def notify_destinations(self) -> list[Destination]:
        """`notify_urls` and those of `notify_urls_file` (blank lines and # comments skipped)."""
        urls = list(self.notify_urls)
        if self.notify_urls_file:
            try:
                lines = Path(self.notify_urls_file).read_text().splitlines()
            except OSError as exc:
                raise ConfigError(f"notify_urls_file {self.notify_urls_file}: {exc.strerror}") from None
            urls += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        try:
            return [destination(url) for url in urls]
        except ValueError as exc:
            raise ConfigError(f"notify_urls: {exc}") from None

    def __post_init__(self) -> None:
        if self.shards and self.leader_election:
            raise ConfigError("shards and leader_election exclude each other: with shards every replica reconciles "
                              "its share, without them only the leader reconciles")

    def verifier(self) -> Verifier | None:
        """Checks of commit signatures, when `verify_commits` asks for them."""
        if not self.verify_commits:
            return None
        if not self.trusted_keys:
            raise ConfigError("verify_commits needs trusted_keys: a directory of *.asc keys and allowed_signers")
        return Verifier(self.verify_commits, Path(self.trusted_keys), self.state_dir, self.verify_allow_rewrite)

    def runtime(self, metrics: Metrics, changed: Callable[[str], None] | None = None, writes: bool = False) -> Runtime:
        """What targets are built with (the daemon and the CLI's `plan`/`diff` use the same); `changed`: the
        daemon's listener for objects someone else changed; `writes`: the daemon (it may create the ledger key)."""
        own = pod_namespace()
        return Runtime(self.state_dir, metrics, self.kube_api_qps, self.kube_api_burst, self.default_service_account,
                       changed, self.kube_clusters(), PROTECTED_NAMESPACES | ({own} if own else set()),
                       ledger_key=derived(installation_key(self.state_dir, writes, self.installation_key_file),
                                          "ledger-copies"))

    def kube_clusters(self) -> dict[str, Cluster]:
        """The clusters environments may name: `clusters`, else one called `default` (this daemon's kubeconfig
        and context, or in-cluster in a pod). With `default_service_account`, a cluster that lists no service
        accounts admits only that one."""
        accounts = (self.default_service_account,) if self.default_service_account else ("*",)
        if not self.clusters:
            in_pod = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
            in_cluster = not self.kubeconfig and not self.kube_context and in_pod
            return {DEFAULT_CLUSTER: Cluster(DEFAULT_CLUSTER, self.kubeconfig, self.kube_context, in_cluster,
                                             service_accounts=accounts)}
        return {name: cluster if cluster.service_accounts != () else replace(cluster, service_accounts=accounts)
                for name, cluster in self.clusters.items()}

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.metrics_address.rpartition(":")
        return host or "127.0.0.1", int(port)


def installation_key(state_dir: Path, create: bool = False, file: str = "") -> bytes:
    """The installation's secret, which keys the Secret digests and signs the ledger copies on targets (`derived`):
    `file` (`installation_key_file`: a mounted Secret, so it survives an emptyDir state dir), else
    `<state-dir>/installation-key`, 32 random bytes, mode 0600. The daemon (`create`) makes it on its first start;
    a command that only looks uses it if it is there, else a random key of its own (its digests then differ from
    the daemon's, and the ledger copies read as unverifiable)."""
    path = Path(file) if file else state_dir / INSTALLATION_KEY
    if not path.exists() and not create and not file:
        return secrets.token_bytes(32)
    try:
        if not path.exists() and not file:
            _make_key(path)
        key = path.read_bytes().strip() if file else path.read_bytes()  # a mounted Secret may end in a newline
    except OSError as exc:
        raise ConfigError(f"{'installation_key_file ' if file else ''}{path}: {exc.strerror}") from None
    if len(key) < 32 if file else len(key) != 32:
        raise ConfigError(f"{path}: must hold {'at least ' if file else ''}32 bytes, holds {len(key)}" + (
            "" if file else " (remove it: the daemon makes a new one at its next start, and every Secret digest and "
            "ledger signature changes once)"))
    return key


def derived(key: bytes, purpose: str) -> bytes:
    """A key for one purpose (`secret-digests`, `ledger-copies`) from the installation's."""
    return hmac.new(key, purpose.encode(), hashlib.sha256).digest()


def key_digests(settings: Settings, create: bool = False) -> None:
    """Key this process's Secret digests (`diff.use_digest_key`) with the installation's key: once, at start-up, by
    `run` (`create`) and by the commands that show digests."""
    use_digest_key(derived(installation_key(settings.state_dir, create, settings.installation_key_file),
                           "secret-digests"))


def _make_key(path: Path) -> None:
    """32 random bytes at `path`, 0600, whole or not at all (written aside, then linked: never replacing a key
    another daemon made meanwhile)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fresh = path.with_name(f".{INSTALLATION_KEY}.{secrets.token_hex(8)}")
    with open(os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        out.write(secrets.token_bytes(32))
        os.fsync(out.fileno())
    try:
        os.link(fresh, path)
    except FileExistsError:
        pass
    finally:
        fresh.unlink()


def _coerce(name: str, value: Any) -> Any:
    try:
        return _value(name, value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}: {exc}") from None


def _value(name: str, value: Any) -> Any:
    if name in DURATIONS:
        return parse_duration(value)
    if name == "state_dir":
        return Path(value).expanduser()
    if name == "allowed_hosts":
        hosts = tuple(h.strip() for h in value.split(",")) if isinstance(value, str) else tuple(map(str, value))
        for host in hosts:
            if not host or any(c.isspace() or c in "/@?#" for c in host):
                raise ValueError(f"{host!r} is not a host name (names, without scheme or path, comma-separated)")
        return hosts
    if name == "notify_urls":
        urls = tuple(u for u in re.split(r"[\s,]+", value) if u) if isinstance(value, str) else tuple(map(str, value))
        for url in urls:
            destination(url)  # a ValueError names only scheme and host
        return urls
    if name == "environments":
        names = tuple(value.split(",")) if isinstance(value, str) else tuple(value)
        for environment in names:
            if not dns_label(environment):
                raise ValueError(f"{environment!r} is not an environment name (a DNS-1123 label: a-z, 0-9, '-')")
        return names
    if name == "shards":
        number = int(value)
        if number < 0:
            raise ValueError(f"shards must be a whole number >= 0 (0: off), got {value!r}")
        return number
    if name in ("webhook_max_body", "concurrency", "kube_api_burst"):
        number = int(value)
        if number < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        return number
    if name == "kube_api_qps":
        return float(value)
    if name == "clusters":
        return _clusters(yaml.safe_load(value) if isinstance(value, str) else value)
    if name == "removal_max_fraction":
        number = float(value)
        if not 0 < number <= 1:
            raise ValueError(f"must be a number in (0, 1], got {value!r}")
        return number
    if name in ("once", "leader_election", "ui", "verify_allow_rewrite"):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text not in BOOLEANS:
            raise ValueError(f"expected true or false, got {value!r}")
        return BOOLEANS[text]
    return str(value)


CLUSTER_KEYS = {"kubeconfig", "context", "in_cluster", "environments", "namespaces", "service_accounts"}


def _clusters(value: Any) -> dict[str, Cluster]:
    """`clusters`: name -> {kubeconfig, context, in_cluster, environments, namespaces, service_accounts} (patterns;
    `-` or `_` in keys). A cluster that lists no service accounts gets the default (see `kube_clusters`)."""
    if not isinstance(value, dict):
        raise ValueError("must map cluster names to their settings (kubeconfig, context or in_cluster, ...)")
    out = {}
    for name, raw in value.items():
        if not isinstance(name, str) or not dns_label(name):
            raise ValueError(f"cluster name {name!r} is not a DNS-1123 label")
        raw = {str(k).replace("-", "_"): v for k, v in (raw or {}).items()}
        if set(raw) - CLUSTER_KEYS:
            raise ValueError(f"cluster {name}: unknown keys {', '.join(sorted(set(raw) - CLUSTER_KEYS))} (known: "
                             f"{', '.join(sorted(CLUSTER_KEYS))})")
        lists = {key: tuple(str(p) for p in raw.get(key, ["*"])) for key in ("environments", "namespaces")}
        out[name] = Cluster(name, str(raw.get("kubeconfig") or ""), str(raw.get("context") or ""),
                            raw.get("in_cluster") is True, lists["environments"], lists["namespaces"],
                            tuple(str(p) for p in raw.get("service_accounts", ())))
    return out


def load(flags: Mapping[str, Any], environ: Mapping[str, str] = os.environ, config_file: Path | None = None) -> Settings:
    """Merge the three sources; unknown config-file keys are an error naming the file and key."""
    names = {f.name for f in fields(Settings)}
    merged: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = yaml.safe_load(config_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{config_file}: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{config_file}: must be a mapping of settings")
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name not in names:
                raise ConfigError(f"{config_file}: unknown setting {key!r} (known: {', '.join(sorted(names))})")
            merged[name] = value
    for name in names:
        value = environ.get(f"RAY_GITOPS_{name.upper()}")
        if value not in (None, ""):
            merged[name] = value
    merged.update({k: v for k, v in flags.items() if k in names and v not in (None, (), [])})
    return Settings(**{k: _coerce(k, v) for k, v in merged.items()})
