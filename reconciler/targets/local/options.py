"""`spec.target.local` of an environment: parsed and checked here, by the target itself."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...kuberay import KINDS, dotted, job_spec, submitter_command
from ...model import EnvironmentSpec
from ...pipeline.target import Checker, yaml_field
from . import limits


@dataclass(frozen=True)
class LocalOptions:
    """The embedded local Ray runtime of this machine."""

    persist: bool = False  # keep the Ray processes running when the daemon stops
    namespace: str = "default"  # objects live in one namespace locally

    @property
    def namespaces(self) -> frozenset[str]:
        return frozenset({self.namespace})

    def connection(self) -> tuple[Any, ...]:
        return ()

    @classmethod
    def parse(cls, raw: Mapping[str, Any], c: Checker, path: str) -> LocalOptions:
        c.known_keys(raw, path, {"persist"})
        c.boolean(raw.get("persist"), f"{path}.persist")
        return cls(persist=raw.get("persist") is True)


def check_object(doc: Mapping[str, Any], c: Checker, environment: EnvironmentSpec) -> None:
    """What the local target refuses beyond the common checks: more Ray nodes than its caps (`limits`), a
    cluster that asks to run without Ray's token authentication (every local cluster uses it), a job that
    only a submitter Pod or a person would submit (the local target submits `entrypoint` itself), and a Serve
    port off loopback; and what it warns about (a clamped `maxReplicas`, a RayService's incremental upgrade)."""
    limits.check(doc, c, environment)
    for path, spec in limits.cluster_specs(doc):
        if (spec.get("authOptions") or {}).get("mode") == "disabled":
            c.fail(f"{path}.authOptions.mode", "disabled is refused by the local target: every local Ray cluster "
                   "uses token authentication (remove the field, or set token)")
    spec = doc.get("spec") or {}
    kind = KINDS.get(str(doc.get("kind")))
    job, path = job_spec(doc), (dotted(kind.job_spec) if kind else "")
    if submitter_command(job):
        c.fail(f"{path}.submitterPodTemplate", "its container's own command cannot run on the local target: there is "
               "no submitter Pod, the local target submits entrypoint through the Ray Jobs API itself (set "
               "entrypoint, and drop the command)")
    if job.get("submissionMode") == "InteractiveMode":
        c.fail(f"{path}.submissionMode", "InteractiveMode waits for a person to submit the job and set its jobId; the "
               "local target submits entrypoint itself (remove submissionMode)")
    if doc.get("kind") == "RayService":
        _service(spec, c)


def _service(spec: Mapping[str, Any], c: Checker) -> None:
    """A RayService on the local target: Serve's gRPC proxy would listen on every interface (Ray 2.60 binds it
    to [::]), and there is no Gateway to shift traffic step by step."""
    config = yaml_field(spec.get("serveConfigV2") or "{}")
    grpc = (config or {}).get("grpc_options") if isinstance(config, dict) else None
    if isinstance(grpc, dict) and grpc.get("grpc_servicer_functions"):
        c.fail("spec.serveConfigV2.grpc_options.grpc_servicer_functions", "Serve's gRPC proxy listens on every "
               "interface (Ray 2.60 binds [::]): the local target keeps every port on 127.0.0.1 (use HTTP)")
    if (spec.get("upgradeStrategy") or {}).get("type") == "NewClusterWithIncrementalUpgrade":
        c.warn("spec.upgradeStrategy.type", "NewClusterWithIncrementalUpgrade shifts traffic through a Gateway on "
               "Kubernetes; the local target has none and switches it at once when the new cluster is ready (as "
               "NewCluster)")
