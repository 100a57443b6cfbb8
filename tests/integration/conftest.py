"""Fixtures of the integration tests (the in-process services themselves come from
tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from grpc import aio

from services.common.database import Database
from services.common.sql import Connection
from services.notifications.app import build as build_notifications
from shop.notifications.v1 import notifications_pb2_grpc
from tests.support.db_locks import WriteWatch
from tests.support.notifications import Notifications
from tests.support.processes import Launch, Launcher
from tests.support.services import ServiceRunner
from tests.support.shop import Shop, start_shop

T = TypeVar("T")


@pytest.fixture
def fast_orders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short recovery and relay intervals, so tests see background work within a second."""
    monkeypatch.setenv("SHOPMESH_ORDERS_RECOVERY_INTERVAL", "0.1")
    monkeypatch.setenv("SHOPMESH_ORDERS_RELAY_POLL_INTERVAL", "0.5")
    monkeypatch.setenv("SHOPMESH_ORDERS_RELAY_MAX_BACKOFF", "0.2")


@pytest.fixture
async def shop(
    services: ServiceRunner, channels: Callable[[str], aio.Channel], fast_orders: None
) -> Shop:
    """The five services, started with short orders intervals."""
    return await start_shop(services, channels)


@pytest.fixture
def database_writes(monkeypatch: pytest.MonkeyPatch) -> WriteWatch:
    """Counts every Database.write call in this process, per database file, so a test knows
    when a write has reached its database without sleeping."""
    watch = WriteWatch()
    original = Database.write

    async def write(self: Database, change: Callable[[Connection], T]) -> T:
        watch.record(self.path)
        return await original(self, change)

    monkeypatch.setattr(Database, "write", write)
    return watch


@pytest.fixture
async def notifications(
    services: ServiceRunner, channels: Callable[[str], aio.Channel]
) -> Notifications:
    """The notifications service alone, and a stub for it."""
    running = await services.start("notifications", build_notifications)
    channel = channels(running.address)
    return Notifications(running, channel, notifications_pb2_grpc.NotificationsServiceStub(channel))


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Start `python -m services.<service>` with exactly the given SHOPMESH_* variables
    (tests.support.processes); every process still running at teardown is killed."""
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.kill_all()
