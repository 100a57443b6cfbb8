"""The dashboard's web application served for real (aiohttp on 127.0.0.1, port 0) over a fake
backend that records what the routes asked of the mesh, so a test sees whether a request got
through the guard, and with what."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from shopmesh.dashboard.app import create_app
from shopmesh.dashboard.load import LoadBusy
from shopmesh.envoy.faults import Fault
from shopmesh.observe.load import LoadSettings

TOKEN = "test-token-" + "x" * 32
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@dataclass
class FakeBackend:
    """Answers like the mesh would, and keeps every change it was asked for."""

    injected: list[tuple[str, Fault]] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    loads: list[LoadSettings] = field(default_factory=list)
    stops: int = 0
    windows: list[float] = field(default_factory=list)

    @property
    def services(self) -> Sequence[str]:
        return ("users", "payments")

    @property
    def changes(self) -> int:
        return len(self.injected) + len(self.cleared) + len(self.loads) + self.stops

    async def state(self, window: float) -> dict[str, Any]:
        self.windows.append(window)
        return {"window_seconds": window}

    async def traces(self, limit: int) -> dict[str, Any]:
        return {"traces": [], "note": None, "limit": limit}

    async def trace(self, trace_id: str) -> dict[str, Any] | None:
        return {"trace_id": trace_id, "spans": []} if trace_id == TRACE_ID else None

    async def inject(self, service: str, fault: Fault) -> None:
        self.injected.append((service, fault))

    async def clear(self, service: str) -> None:
        self.cleared.append(service)

    def start_load(self, settings: LoadSettings) -> dict[str, Any]:
        if self.loads:
            raise LoadBusy("a load run is under way: stop it first")
        self.loads.append(settings)
        return {"run": {"state": "running"}, "failure": None}

    def stop_load(self) -> dict[str, Any]:
        self.stops += 1
        return {"run": None, "failure": None}


@dataclass(frozen=True)
class ServedDashboard:
    backend: FakeBackend
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        return self.base


@contextlib.asynccontextmanager
async def served_dashboard() -> AsyncIterator[ServedDashboard]:
    """The dashboard for TOKEN on 127.0.0.1 (a free port), stopped when the block exits."""
    backend = FakeBackend()
    runner = web.AppRunner(create_app(backend, TOKEN))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = int(runner.addresses[0][1])
        yield ServedDashboard(backend, port)
    finally:
        await runner.cleanup()
