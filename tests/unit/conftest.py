"""Fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.orders_world import World


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """The orders saga's world (see tests.support.orders_world) on a fresh store file."""
    opened = World(tmp_path / "orders.db")
    await opened.open()
    yield opened
    await opened.close()
