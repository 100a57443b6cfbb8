"""Fixtures shared by every test: in-process services on temporary Unix sockets (the
machinery is tests/support/services.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from grpc import aio

# Before any test module imports it, so its asserts report values like a test's own do.
pytest.register_assert_rewrite("tests.support")

from tests.support.services import ServiceRunner  # noqa: E402  (after the registration)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short temporary directory for Unix sockets (paths must stay under ~100 bytes, which
    pytest's tmp_path does not guarantee)."""
    path = Path(tempfile.mkdtemp(prefix="sm-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def services(socket_dir: Path, tmp_path: Path) -> AsyncIterator[ServiceRunner]:
    """Start services with `await services.start("users", build)`; all stop at teardown."""
    runner = ServiceRunner(socket_dir, tmp_path, [])
    try:
        yield runner
    finally:
        for service in reversed(runner.running):
            await service.stop(0)


@pytest.fixture
async def channels() -> AsyncIterator[Callable[[str], aio.Channel]]:
    """Open client channels with `channels(address)`; all are closed at teardown."""
    opened: list[aio.Channel] = []

    def open_channel(address: str) -> aio.Channel:
        channel = aio.insecure_channel(address)
        opened.append(channel)
        return channel

    yield open_channel
    for channel in opened:
        await channel.close()
