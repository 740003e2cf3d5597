"""The benchmarks still run against today's code (twice a redesign broke them unseen): each on a tiny input."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import kube_scale  # noqa: E402
import render_plan  # noqa: E402


def test_render_plan_prints_both_ratios(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(render_plan, "CLUSTERS", 3)
    render_plan.main()
    out = capsys.readouterr().out
    assert "3 RayClusters" in out and "ratio python/C" in out and "ratio steady/create" in out


def test_kube_scale_gives_kubectl_the_objects_ray_gitops_applies(tmp_path: Path) -> None:
    repo, files = tmp_path / "repo", tmp_path / "files"
    repo.mkdir()
    files.mkdir()
    kube_scale.write_repo(repo, 2, "d-")
    kube_scale.rendered_files(repo, files, 2, "k-")

    docs = list(yaml.safe_load_all((files / "e001.yaml").read_text()))
    assert sorted((d["kind"], d["metadata"]["name"], d["metadata"]["namespace"]) for d in docs) == [
        ("RayCluster", "train", "k-001"), ("RayJob", "batch", "k-001"), ("RayJob", "nightly", "k-001")]
    assert all(d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "ray-gitops" for d in docs)
    assert "namespace: d-001" in (repo / "environments" / "e001" / "environment.yaml").read_text()
