"""Fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.orders_world import World


@pytest.fixture
async def world(db_location: Path | str) -> AsyncIterator[World]:
    """The orders saga's world (see tests.support.orders_world) on a fresh store, per backend."""
    opened = World(db_location)
    await opened.open()
    yield opened
    await opened.close()
