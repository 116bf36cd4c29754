"""The house style's static checks, as tests: ruff and mypy (strict) stay clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "tool,args",
    [
        ("ruff", ["check", "sandbox", "tests", "helpers/switchboard.py", "helpers/condor-job-wrapper"]),
        ("mypy", []),
        ("mypy", ["--strict", "helpers/condor-job-wrapper"]),
    ],
)
def test_static_check_is_clean(tool: str, args: list[str]) -> None:
    exe = BIN / tool
    if not exe.exists():
        pytest.skip(f"{tool} is not installed in this environment")
    p = subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
