"""The demo's examples, as README's loop uses them with `make demo`: copied into environments/local/ of this
repository, they render and validate on the local target, and the RayService deploys the Serve application that
examples/serve-hello/ holds."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

from reconciler.pipeline.render import render
from reconciler.pipeline.source import DirectoryTree
from reconciler.targets.local import serve
from tests.memory import TARGETS

ROOT = Path(__file__).parent.parent.parent


def demo_repository(tmp_path: Path) -> DirectoryTree:
    """The repository after the loop's steps 1-3: two workers, the pi job and the hello RayService committed."""
    shutil.copytree(ROOT / "environments" / "local", tmp_path / "environments" / "local")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    cluster = tmp_path / "environments" / "local" / "raycluster.yaml"
    assert "replicas: 1\n" in cluster.read_text()
    cluster.write_text(cluster.read_text().replace("replicas: 1\n", "replicas: 2\n", 1))
    for example in ("rayjob-pi.yaml", "rayservice-hello.yaml"):
        shutil.copy(tmp_path / "examples" / example, tmp_path / "environments" / "local" / example)
    return DirectoryTree(tmp_path)


def top_level_names(path: Path) -> set[str]:
    """The names a module binds at its top level, variables and classes (read, not imported: no Ray needed)."""
    body = ast.parse(path.read_text()).body
    return ({node.name for node in body if isinstance(node, ast.ClassDef)}
            | {target.id for node in body if isinstance(node, ast.Assign) for target in node.targets
               if isinstance(target, ast.Name)})


def test_the_demo_with_the_serve_example_is_valid_on_the_local_target(tmp_path: Path) -> None:
    rendered = render(demo_repository(tmp_path), "local", "", TARGETS)

    assert rendered.spec.target.kind == "local"
    assert sorted((d.ref.kind, d.ref.name) for d in rendered.objects) == [
        ("RayCluster", "demo"), ("RayJob", "pi"), ("RayService", "hello")]
    assert all(d.warnings == () for d in rendered.objects), [d.warnings for d in rendered.objects]


def test_the_serve_example_deploys_the_application_of_examples_serve_hello(tmp_path: Path) -> None:
    rendered = render(demo_repository(tmp_path), "local", "", TARGETS)
    (service,) = (d for d in rendered.objects if d.ref.kind == "RayService")

    body = serve.config(service.manifest["spec"]["serveConfigV2"], 8000, lambda path: tmp_path / path)
    (app,) = body["applications"]
    assert app["import_path"] == "hello:app"
    module, _, attribute = app["import_path"].partition(":")
    working_dir = Path(app["runtime_env"]["working_dir"].removeprefix("local://"))
    assert working_dir == tmp_path / "examples" / "serve-hello"
    names = top_level_names(working_dir / f"{module}.py")
    assert attribute in names, f"{app['import_path']} names nothing in {working_dir}/{module}.py"
    assert {d["name"] for d in app["deployments"]} <= names, "each deployment the config sets up is a class there"
    assert body["http_options"] == {"host": "127.0.0.1", "port": 8000}
