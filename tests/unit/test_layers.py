"""The import layers of `.importlinter` hold (stages import only downward)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stages_import_only_downward() -> None:
    tool = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(tool), "--config", str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
