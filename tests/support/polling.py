"""The one way tests wait: poll a condition with a deadline (never sleep to synchronize)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

CALL_TIMEOUT = 20.0
"""Seconds any one call may take in a test: far above every route budget of the topology (the
longest is PlaceOrder's 10 s), so whatever ends a call sooner is the mesh's doing."""


async def eventually(
    condition: Callable[[], Awaitable[bool]], within: float, what: str, interval: float = 0.05
) -> None:
    """Poll `condition` until it holds; fail naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


def eventually_sync(
    condition: Callable[[], bool], within: float, what: str, interval: float = 0.05
) -> None:
    """`eventually` for code without an event loop (subprocesses, files)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(interval)
