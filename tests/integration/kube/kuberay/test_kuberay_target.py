"""The Kubernetes target (plan, dry-run, apply) on objects the real KubeRay operator has written to.

KubeRay 1.6.2 adds its finalizer to a RayJob with an update that writes the whole spec back, in its
own spelling (`scaleStrategy: {}`, `template.metadata: {}`), taking over the atomic
`rayClusterSpec.workerGroupSpecs` and `headGroupSpec.template.metadata`.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kuberay_kit import get, managers, raycluster_spec, wait_until
from target_kit import Kit, desired

from reconciler.model import Action, Outcome

pytestmark = [pytest.mark.kube, pytest.mark.operator]
OPERATOR = "kuberay-operator"


@pytest.fixture
def kit(kuberay: Any, kuberay_namespace: str) -> Any:
    k = Kit(kuberay.plane, kuberay_namespace)
    yield k
    k.close()


def test_a_rayjob_the_operator_wrote_back_is_in_sync_and_takes_a_label_change_in_place(kit: Kit) -> None:
    doc = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "job"},
           "spec": {"entrypoint": "python -c 'print(1)'", "rayClusterSpec": raycluster_spec(replicas=1)}}
    obj = desired(doc, kit.namespace)
    assert kit.sync(obj)[1] == Outcome.SUBMITTED
    live = wait_until("the operator's finalizer on RayJob job",
                      lambda: get(kit.api_client, kit.namespace, "RayJob", "job"),
                      lambda o: o["metadata"].get("finalizers") == ["ray.io/rayjob-finalizer"])
    taken = managers(live)[(OPERATOR, "Update", "")]
    assert ".spec.rayClusterSpec.workerGroupSpecs" in taken, taken
    assert live["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["scaleStrategy"] == {}, "the operator's spelling"
    kit.caught_up(obj)

    item = kit.plan(obj)
    assert item.action == Action.NOOP, f"the operator's write-back is not a change of the run: {item.reason}"

    labelled = copy.deepcopy(doc)
    labelled["metadata"]["labels"] = {"team": "ml"}
    item, outcome = kit.sync(desired(labelled, kit.namespace, revision="r2"))

    assert (item.action, outcome) == (Action.UPDATE, Outcome.CONFIGURED), item.reason
    assert kit.conflicts("RayJob") == 0, "no 409 conflict with kuberay-operator"
    after = get(kit.api_client, kit.namespace, "RayJob", "job")
    assert after["metadata"]["labels"]["team"] == "ml"
    assert (after["metadata"]["uid"], after["spec"]) == (live["metadata"]["uid"], live["spec"]), (
        "the same RayJob, its spec untouched")
    kit.caught_up(desired(labelled, kit.namespace, revision="r2"))
    assert kit.plan(desired(labelled, kit.namespace, revision="r2")).action == Action.NOOP
