"""Services started inside the test process, on temporary Unix sockets: the real servers,
wiring and stores, without the mesh."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common.config import ServiceConfig
from services.common.server import App, RunningService, start

Build = Callable[[ServiceConfig], Awaitable[App]]


@dataclass
class ServiceRunner:
    """Starts services in this process; the fixture stops every one of them at teardown."""

    socket_dir: Path
    data_dir: Path
    running: list[RunningService]
    databases: Callable[[str], str] | None = None
    """service -> the URL of its Postgres database (the same one each time it is asked);
    None: every service on its SQLite file in data_dir."""

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
            database_url=None if self.databases is None else self.databases(service),
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
