"""Render + plan cost for a large environment, measured side by side.

Prints, for N RayClusters in one environment: render time with PyYAML's C loader (what
`parse.py` uses when libyaml is present) vs the pure-Python loader, and the steady-state plan
(no change) vs the first plan (everything to create). Run: `make bench` or `python bench/render_plan.py`.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reconciler.model import LiveObject  # noqa: E402
from reconciler.pipeline import parse, planner, render  # noqa: E402
from reconciler.pipeline.source import DirectoryTree  # noqa: E402
from tests.memory import TARGETS  # noqa: E402

CLUSTERS = 300
CLUSTER = (Path(__file__).resolve().parents[1] / "tests" / "testdata" / "raycluster.yaml").read_text()


def timed(fn, repeat: int = 5) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = Path(tmp) / "environments" / "bench"
        env.mkdir(parents=True)
        (env / "environment.yaml").write_text("apiVersion: gitops.ray.io/v1alpha1\nkind: Environment\n"
                                              "metadata: {name: bench}\nspec: {target: {local: {}}}\n")
        for i in range(CLUSTERS):
            (env / f"c{i}.yaml").write_text(CLUSTER.replace("REPLICAS", "2").replace("name: demo", f"name: c{i}"))
        tree = DirectoryTree(Path(tmp))
        fast = timed(lambda: render.render(tree, "bench", "", TARGETS))
        with mock.patch.object(parse, "_Loader", yaml.SafeLoader):
            slow = timed(lambda: render.render(tree, "bench", "", TARGETS))
        rendered = render.render(tree, "bench", "", TARGETS)
        live = {d.ref: LiveObject(d.ref, d.manifest, {"state": "ready"}) for d in rendered.objects}
        first = timed(lambda: planner.plan(rendered, {}, set(), {}))
        steady = timed(lambda: planner.plan(rendered, live, set(live), {}))
    print(f"{CLUSTERS} RayClusters, median of 5 runs")
    print(f"render, C loader      {fast * 1000:8.1f} ms")
    print(f"render, Python loader {slow * 1000:8.1f} ms   ratio python/C = {slow / fast:.1f}x")
    print(f"plan, all to create   {first * 1000:8.1f} ms")
    print(f"plan, steady state    {steady * 1000:8.1f} ms   ratio steady/create = {steady / first:.2f}")


if __name__ == "__main__":
    main()
