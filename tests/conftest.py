"""Fixtures shared by every test: in-process services on temporary Unix sockets."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpc import aio

from services.common.config import ServiceConfig
from services.common.server import App, RunningService, start

# Before any test module imports it, so its asserts report values like a test's own do.
pytest.register_assert_rewrite("tests.helpers")

Build = Callable[[ServiceConfig], Awaitable[App]]


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short temporary directory for Unix sockets (paths must stay under ~100 bytes, which
    pytest's tmp_path does not guarantee)."""
    path = Path(tempfile.mkdtemp(prefix="sm-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class ServiceRunner:
    """Starts services in this process; the fixture stops every one of them at teardown."""

    socket_dir: Path
    data_dir: Path
    running: list[RunningService]

    def config(
        self, service: str, upstreams: Mapping[str, str] | None = None, db_path: Path | None = None
    ) -> ServiceConfig:
        """The config `start` would use: a socket in socket_dir, a database in data_dir."""
        return ServiceConfig(
            service=service,
            listen=f"unix:{self.socket_dir / service}.sock",
            db_path=db_path or self.data_dir / f"{service}.db",
            upstreams=dict(upstreams or {}),
            grace_seconds=0.0,
        )

    async def start(
        self,
        service: str,
        build: Build,
        upstreams: Mapping[str, str] | None = None,
        db_path: Path | None = None,
    ) -> RunningService:
        """Build and start `service`; restarting one after `stop` reuses its socket and DB."""
        config = self.config(service, upstreams, db_path)
        running = await start(config, await build(config))
        self.running.append(running)
        return running

    async def stop(self, service: RunningService, grace: float = 0.0) -> None:
        """Stop one service now (e.g. to test that callers survive it being down)."""
        self.running.remove(service)
        await service.stop(grace)


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
