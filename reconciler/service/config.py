"""Daemon settings: command-line flags > `RAY_GITOPS_*` environment variables > config file > defaults.

Read once by the CLI; every other module receives a `Settings`. Never logs secrets.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from ..errors import ConfigError
from ..metrics import Metrics
from ..model import parse_duration
from ..pipeline.diff import use_digest_key
from ..pipeline.validate import dns_label
from ..pipeline.verify import Verifier
from ..targets import Runtime

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
DIGEST_KEY = "digest-key"  # in the state dir
DURATIONS = ("interval", "leader_election_lease_duration", "leader_election_renew_deadline",
             "leader_election_retry_period", "dependency_timeout")


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ray-gitops"


def default_namespace() -> str:
    """The pod's namespace when running in a cluster, else "default"."""
    try:
        return Path(SERVICE_ACCOUNT_NAMESPACE).read_text().strip() or "default"
    except OSError:
        return "default"


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
    kubeconfig: str = ""  # where the Lease lives: default in-cluster, else $KUBECONFIG / ~/.kube/config
    kube_context: str = ""
    webhook_secret: str = field(default="", repr=False)  # POST /hooks/git; empty (and no file): disabled
    webhook_secret_file: str = ""  # a mounted Secret's file; wins over webhook_secret
    webhook_max_body: int = 1024 * 1024  # bytes; larger webhook bodies get 413 unread
    concurrency: int = 4  # environments reconciled at the same time (as Flux's --concurrent)
    kube_api_qps: float = 50.0  # client-side rate limit per API server (Flux: 50 and a burst of 300)
    kube_api_burst: int = 300
    default_service_account: str = ""  # Kubernetes writes of environments without serviceAccountName impersonate it
    verify_commits: str = ""  # "" (off), head or strict: which commits must carry a trusted signature
    trusted_keys: str = ""  # a directory of *.asc OpenPGP public keys and an SSH allowed_signers file
    ui: bool = True  # the status page (/) and its read-only JSON API (/api/v1/) on the metrics address
    removal_max_fraction: float = 0.5  # environments that may leave Git in one revision and be removed (1: no guard)
    dependency_timeout: float = 600.0  # run --once: how long a dependsOn link may take to be Healthy at the revision

    def verifier(self) -> Verifier | None:
        """Checks of commit signatures, when `verify_commits` asks for them."""
        if not self.verify_commits:
            return None
        if not self.trusted_keys:
            raise ConfigError("verify_commits needs trusted_keys: a directory of *.asc keys and allowed_signers")
        return Verifier(self.verify_commits, Path(self.trusted_keys), self.state_dir)

    def runtime(self, metrics: Metrics, changed: Callable[[str], None] | None = None) -> Runtime:
        """What targets are built with (the daemon and the CLI's `plan`/`diff` use the same); `changed`: the
        daemon's listener for objects someone else changed."""
        return Runtime(self.state_dir, metrics, self.kube_api_qps, self.kube_api_burst, self.default_service_account,
                       changed)

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.metrics_address.rpartition(":")
        return host or "127.0.0.1", int(port)


def digest_key(state_dir: Path, create: bool = False) -> bytes:
    """The installation's key for Secret digests: `<state-dir>/digest-key`, 32 random bytes, mode 0600. The
    daemon (`create`) makes it on its first start; a command that only looks uses it if it is there, else a
    random key of its own (its digests then differ from the daemon's: on the local target, which stores the
    daemon's digests, `diff` shows every Secret as changed)."""
    path = state_dir / DIGEST_KEY
    if not path.exists() and not create:
        return secrets.token_bytes(32)
    try:
        if not path.exists():
            _make_key(path)
        key = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    if len(key) != 32:
        raise ConfigError(f"{path}: must hold 32 bytes, holds {len(key)} (remove it: the daemon makes a new one at "
                          "its next start, and every Secret digest changes once)")
    return key


def key_digests(state_dir: Path, create: bool = False) -> None:
    """Key this process's Secret digests (`diff.use_digest_key`) with `digest_key(state_dir, create)`: once, at
    start-up, by `run` (`create`) and by the commands that show digests."""
    use_digest_key(digest_key(state_dir, create))


def _make_key(path: Path) -> None:
    """32 random bytes at `path`, 0600, whole or not at all (written aside, then linked: never replacing a key
    another daemon made meanwhile)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fresh = path.with_name(f".{DIGEST_KEY}.{secrets.token_hex(8)}")
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
    if name == "environments":
        names = tuple(value.split(",")) if isinstance(value, str) else tuple(value)
        for environment in names:
            if not dns_label(environment):
                raise ValueError(f"{environment!r} is not an environment name (a DNS-1123 label: a-z, 0-9, '-')")
        return names
    if name in ("webhook_max_body", "concurrency", "kube_api_burst"):
        number = int(value)
        if number < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        return number
    if name == "kube_api_qps":
        return float(value)
    if name == "removal_max_fraction":
        number = float(value)
        if not 0 < number <= 1:
            raise ValueError(f"must be a number in (0, 1], got {value!r}")
        return number
    if name in ("once", "leader_election", "ui"):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text not in BOOLEANS:
            raise ValueError(f"expected true or false, got {value!r}")
        return BOOLEANS[text]
    return str(value)


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
