"""Daemon settings: command-line flags > `RAY_GITOPS_*` environment variables > config file > defaults.

Each setting is declared in `settings`; this module loads their values (`load`) and builds what they configure
(targets' runtime, signature checks, notification destinations, the installation key). Read once by the CLI;
every other module receives a `Settings`. Never logs secrets.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..metrics import Metrics
from ..pipeline.diff import use_digest_key
from ..pipeline.verify import Verifier
from ..targets import DEFAULT_CLUSTER, PROTECTED_NAMESPACES, Cluster, Runtime
from . import settings
from .notify import Destination, destination
from .settings import pod_namespace

INSTALLATION_KEY = "installation-key"  # in the state dir


@dataclass(frozen=True)
class Settings(settings.Fields):
    """Everything `ray-gitops run` needs: the fields are declared, with their flags, variables and docs, in
    `settings.Fields`; this adds what is built from them."""

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


def load(flags: Mapping[str, Any], environ: Mapping[str, str] = os.environ,
         config_file: Path | None = None) -> Settings:
    """Merge the three sources by the declarations (`settings.Fields`); unknown config-file keys are an error naming
    the file and key, a bad value one naming the setting."""
    coercers = {each.name: how.coerce for each, how in settings.declared()}
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
            if name not in coercers:
                raise ConfigError(f"{config_file}: unknown setting {key!r} (known: {', '.join(sorted(coercers))})")
            merged[name] = value
    for name in coercers:
        value = environ.get(settings.env_var(name))
        if value not in (None, ""):
            merged[name] = value
    merged.update({k: v for k, v in flags.items() if k in coercers and v not in (None, (), [])})
    values = {}
    for name, value in merged.items():
        try:
            values[name] = coercers[name](name, value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"setting {name}: {exc}") from None
    return Settings(**values)
