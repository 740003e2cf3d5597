"""Which environments may skip their interval's reconcile (`reconcile._quiet`): what moves them must reach the
daemon through a watch or Git, whatever their health."""
from __future__ import annotations

from typing import Any

import pytest

from reconciler.model import DesiredObject, EnvironmentSpec, Health, ObjectRef, RenderedEnvironment, TargetSpec
from reconciler.pipeline.reconcile import _quiet


class Watching:
    """A target that watches every environment (or none)."""

    def __init__(self, watches: bool = True) -> None:
        self._watches = watches

    def watches(self, spec: EnvironmentSpec[Any]) -> bool:
        return self._watches


class NotWatching:
    """A target without watches (the local target)."""


def obj(kind: str, **spec: Any) -> DesiredObject:
    manifest = {"apiVersion": "ray.io/v1", "kind": kind, "metadata": {"name": "x", "namespace": "ns"}, "spec": spec}
    return DesiredObject(ObjectRef("ray.io", kind, "ns", "x"), manifest, "environments/p/objects.yaml", 0)


def rendered(*objects: DesiredObject) -> RenderedEnvironment[Any]:
    return RenderedEnvironment(EnvironmentSpec("p", TargetSpec("kubernetes", {})), objects)


@pytest.mark.parametrize(("target", "objects", "health", "quiet"), [
    pytest.param(Watching(), [obj("RayCluster")], Health.HEALTHY, True, id="Healthy, watched"),
    pytest.param(Watching(), [obj("RayCluster"), obj("RayJob")], Health.PROGRESSING, True,
                 id="Progressing, or a run in progress: its status wakes it"),
    pytest.param(Watching(), [obj("RayJob")], Health.DEGRADED, True, id="Degraded: nothing moves by itself"),
    pytest.param(Watching(), [obj("RayCluster", upgradeStrategy={"type": "Recreate"})], Health.PROGRESSING, False,
                 id="Progressing through a Recreate's grace: time alone moves it"),
    pytest.param(Watching(), [obj("RayCluster", upgradeStrategy={"type": "Recreate"})], Health.HEALTHY, True,
                 id="Recreate, Healthy"),
    pytest.param(Watching(), [obj("RayCluster"), obj("RayCronJob")], Health.HEALTHY, False,
                 id="a RayCronJob: slots come from the clock"),
    pytest.param(Watching(), [obj("RayService")], Health.HEALTHY, False, id="a RayService"),
    pytest.param(Watching(watches=False), [obj("RayCluster")], Health.HEALTHY, False, id="not watched"),
    pytest.param(NotWatching(), [obj("RayCluster")], Health.HEALTHY, False, id="a target without watches"),
])
def test_quiet(target: Any, objects: list[DesiredObject], health: Health, quiet: bool) -> None:
    assert _quiet(rendered(*objects), target, health) is quiet
