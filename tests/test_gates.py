"""Quality gates run as part of the test command: ruff (lint and format) and mypy --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize("check", [("ruff", "check", "."), ("ruff", "format", "--check", ".")])
def test_ruff(check: tuple[str, ...]) -> None:
    result = _run(*check)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_on_bus_and_backends() -> None:
    result = _run("mypy", "--strict", "bus", "backends")
    assert result.returncode == 0, result.stdout + result.stderr
