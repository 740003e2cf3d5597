"""The code's types and lint are checked with every test run: mypy and ruff, configured in pyproject.toml.

ruff checks `reconciler/`, `bench/` and `tests/`; mypy checks `reconciler/`, strict for the pipeline and the model.
mypy keeps its cache in the repository's `.mypy_cache/` (ignored by Git), so a second run takes a few seconds.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing_in_the_code_the_benchmarks_and_the_tests() -> None:
    result = _run("ruff", "check", "--no-cache", "--output-format", "concise", "reconciler", "bench", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_no_type_error() -> None:
    result = _run("mypy", "--cache-dir", str(ROOT / ".mypy_cache"), "reconciler")
    assert result.returncode == 0, result.stdout + result.stderr
