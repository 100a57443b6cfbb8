"""Fixtures for the contract tests: the pinned buf binary from the project's venv."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def buf() -> Path:
    """The buf installed by `make venv-dev` (PyPI buf-bin, pinned in requirements/dev.txt).

    Not whatever buf is on PATH: lint and breaking rules change between buf releases, so the
    tests use the same version as `make lint` and `make breaking`.
    """
    path = Path(sys.executable).parent / "buf"
    if not path.exists():
        pytest.fail(f"{path} not found: run `make venv-dev` (it installs the pinned buf-bin)")
    return path
