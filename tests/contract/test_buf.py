"""The contracts under proto/ pass buf's STANDARD lint rules and are `buf format` clean."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.contract

ROOT = Path(__file__).resolve().parents[2]


def _run(command: list[str | Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_buf_lint_is_clean(buf: Path) -> None:
    result = _run([buf, "lint"])

    assert result.returncode == 0, f"buf lint found problems:\n{result.stdout}{result.stderr}"


def test_buf_format_is_clean(buf: Path) -> None:
    result = _run([buf, "format", "--diff", "--exit-code"])

    assert result.returncode == 0, (
        f"protos are not buf-formatted (run `make fmt`):\n{result.stdout}{result.stderr}"
    )
