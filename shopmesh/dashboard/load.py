"""The dashboard's load generator: at most one `shopmesh load` run at a time, inside the
dashboard's own event loop, started and stopped from the page, its live snapshot shown there."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from shopmesh.gatewayclient import GatewayTarget
from shopmesh.observe.load import LoadRun, LoadSettings


class LoadBusy(Exception):
    """A run is under way: one at a time."""


class LoadControl:
    """Starts, stops and reports the load run against the gateway at `gateway`."""

    def __init__(self, gateway: GatewayTarget) -> None:
        self._gateway = gateway
        self._run: LoadRun | None = None
        self._task: asyncio.Task[object] | None = None
        self._failure: str | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, settings: LoadSettings) -> dict[str, Any]:
        """Start a run with `settings`; LoadBusy while one runs. Its first snapshot."""
        if self.running:
            raise LoadBusy("a load run is under way: stop it first")
        self._run = LoadRun(self._gateway, settings)
        self._failure = None
        self._task = asyncio.create_task(self._run.run())
        self._task.add_done_callback(self._finished)
        return self.snapshot()

    def stop(self) -> dict[str, Any]:
        """End the run under way now (nothing happens without one); its snapshot."""
        if self._run is not None:
            self._run.stop()
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        """The current or last run as plain JSON data (`run` is None before the first)."""
        run = None if self._run is None else asdict(self._run.snapshot())
        return {"run": run, "failure": self._failure}

    async def close(self) -> None:
        """Stop the run under way and wait until its calls are over."""
        self.stop()
        if self._task is not None:
            # wait(), not await: a failure is already kept by _finished.
            await asyncio.wait([self._task])

    def _finished(self, task: asyncio.Task[object]) -> None:
        # A run fails only through a bug of the load itself (LoadRun.run says so): show it.
        if not task.cancelled() and task.exception() is not None:
            self._failure = repr(task.exception())
