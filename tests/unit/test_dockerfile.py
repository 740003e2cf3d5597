"""The Dockerfile and .dockerignore, read as text (no Docker engine is needed, or used).

These check the image's contract with manifests/deployment.yaml (user, paths, port, entrypoint) and
that the build context holds what `pip wheel .` needs. They do not build the image.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
STATE_VOLUME = "/var/lib/ray-gitops"


def stages() -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per stage; continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        if not pending and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        pending += raw.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        lines.append(pending)
        pending = ""
    result: list[list[tuple[str, str]]] = [[]]
    for line in lines:
        instruction, _, args = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            result.append([])
        result[-1].append((instruction.upper(), args.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1]


def args_of(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    return [args for name, args in stage if name == instruction]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in args_of(final_stage(), "ENV"):
        env.update(pair.split("=", 1) for pair in shlex.split(args))
    return env


def deployment_container() -> tuple[dict, dict]:
    deployment = yaml.safe_load((REPO / "manifests" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_both_stages_start_from_the_same_slim_python_311_base() -> None:
    [preamble, builder, final] = stages()
    [base_arg] = args_of(preamble, "ARG")
    assert re.fullmatch(r"BASE_IMAGE=python:3\.11-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base_arg)
    assert args_of(builder, "FROM") == ["${BASE_IMAGE} AS builder"]
    assert args_of(final, "FROM") == ["${BASE_IMAGE}"]


def test_the_wheel_is_installed_without_the_local_extra_and_the_final_stage_builds_nothing() -> None:
    [_, builder, final] = stages()
    builder_runs = " ".join(args_of(builder, "RUN"))
    assert "pip wheel" in builder_runs and "venv --without-pip /opt/ray-gitops" in builder_runs
    assert re.search(r"install --only-binary=:all: /wheels/ray_gitops-\*\.whl(?!\[)", builder_runs), builder_runs
    assert "[local" not in builder_runs and "ray[" not in builder_runs
    final_runs = " ".join(args_of(final, "RUN"))
    assert "pip install" not in final_runs and "pip uninstall --yes --no-cache-dir pip setuptools wheel" in final_runs
    for tool in ("gcc", "build-essential", "python3-dev", "make", "g++"):
        assert not re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", final_runs), tool
    assert re.search(r"apt-get install -y --no-install-recommends [^&]*\bgit\b", final_runs)
    assert "openssh-client" in final_runs and "rm -rf /var/lib/apt/lists/*" in final_runs
    assert args_of(final, "COPY") == ["--from=builder /opt/ray-gitops /opt/ray-gitops"]


def test_the_image_runs_ray_gitops_run_as_the_numeric_non_root_user_the_deployment_sets() -> None:
    final = final_stage()
    [user] = args_of(final, "USER")
    uid, gid = (int(part) for part in user.split(":"))
    assert uid != 0 and gid != 0
    pod, _ = deployment_container()
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
    assert pod["securityContext"]["fsGroup"] == gid
    assert [json.loads(args) for args in args_of(final, "ENTRYPOINT")] == [["ray-gitops"]]
    assert [json.loads(args) for args in args_of(final, "CMD")] == [["run"]]
    assert not args_of(final, "HEALTHCHECK")  # Kubernetes probes instead (see the Dockerfile's comment)


def test_every_path_the_image_writes_is_on_the_state_volume_and_the_deployment_agrees() -> None:
    env = image_env()
    assert args_of(final_stage(), "VOLUME") == [f'["{STATE_VOLUME}"]']
    for name in ("HOME", "XDG_CACHE_HOME", "RAY_GITOPS_STATE_DIR"):
        assert env[name] == STATE_VOLUME or env[name].startswith(STATE_VOLUME + "/"), name
    assert env["RAY_GITOPS_METRICS_ADDRESS"] == "0.0.0.0:9464"
    assert args_of(final_stage(), "EXPOSE") == ["9464"]
    assert env["PATH"].startswith("/opt/ray-gitops/bin:")
    _, container = deployment_container()
    deployment_env = {e["name"]: e["value"] for e in container["env"]}
    for name in set(env) & set(deployment_env):
        assert deployment_env[name] == env[name], name
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {STATE_VOLUME, "/tmp"}


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories wins."""
    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
            out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        return re.compile(out)

    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if any(regex(pattern.lstrip("!")).fullmatch(c) for c in candidates):
            excluded = not negated
    return excluded


def test_the_build_context_holds_the_package_sources_and_nothing_else() -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sent = {entry.name for entry in REPO.iterdir() if not dockerignored(entry.name, patterns)}
    assert sent == {"pyproject.toml", "README.md", "reconciler"}
    sources = [p.relative_to(REPO).as_posix() for p in (REPO / "reconciler").rglob("*.py")]
    assert sources and not [s for s in sources if dockerignored(s, patterns)]
    assert dockerignored("reconciler/__pycache__/cli.cpython-311.pyc", patterns)
    assert dockerignored(".venv/bin/python", patterns) and dockerignored(".git/HEAD", patterns)
