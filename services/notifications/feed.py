"""The feed: hands every stored notification to this replica's hub exactly once, in sequence
order, read back from the store, whichever replica stored it.

It reads "everything after the hub's position" whenever it is woken: by this replica's own
publications once they commit, and on Postgres by the NOTIFY every publishing transaction
sends (services.notifications.store), through one LISTEN connection per replica
(services.common.listen). A wake-up says only that something may be new, so wake-ups that are
lost, repeated or merged change nothing: after a lost LISTEN connection the feed catches up
from its position as soon as it listens again. The store's sequences increase in commit order,
so a read never sees a notification while an earlier one is still to come.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from services.common.listen import listen
from services.notifications.domain import StoredNotification
from services.notifications.hub import NotificationHub

log = logging.getLogger(__name__)

# Notifications read per query while catching up.
BATCH = 500
MIN_RETRY_SECONDS = 0.1
MAX_RETRY_SECONDS = 5.0


class FeedStore(Protocol):
    """What the feed reads (services.notifications.store)."""

    async def after(self, sequence: int, limit: int) -> list[StoredNotification]:
        """Up to `limit` notifications with a sequence above `sequence`, oldest first."""
        ...


class Feed:
    """Reads new notifications from the store into the hub (see the module docstring): run
    `run` as a background task, and on Postgres `follow` too."""

    def __init__(self, store: FeedStore, hub: NotificationHub) -> None:
        self._store = store
        self._hub = hub
        self._woken = asyncio.Event()

    def wake(self, sequence: int | None = None) -> None:
        """Something was stored: up to `sequence` if known (a wake-up for what the hub has
        already is ignored), else read to be sure. Never blocks."""
        if sequence is None or sequence > self._hub.position:
            self._woken.set()

    async def run(self) -> None:
        """Catch up each time the feed is woken, until cancelled. A read that fails (the
        database restarting) is retried with backoff: the hub's position has not moved, so
        nothing is skipped."""
        retry = MIN_RETRY_SECONDS
        while True:
            await self._woken.wait()
            self._woken.clear()
            try:
                await self.catch_up()
            # Whatever the read raised, this task must live on: live watches depend on it.
            except Exception as error:
                log.warning(
                    "reading new notifications failed (%s); retrying in %.1fs", error, retry
                )
                self._woken.set()
                await asyncio.sleep(retry)
                retry = min(retry * 2, MAX_RETRY_SECONDS)
            else:
                retry = MIN_RETRY_SECONDS

    async def catch_up(self) -> None:
        """Publish every notification stored after the hub's position, in order."""
        while True:
            batch = await self._store.after(self._hub.position, BATCH)
            for stored in batch:
                self._hub.publish(stored)
            if len(batch) < BATCH:
                return

    async def follow(self, url: str, channel: str) -> None:
        """Wake the feed on every NOTIFY on `channel` of the Postgres database at `url`, and
        each time the LISTEN connection is (re)established, until cancelled."""
        async with contextlib.aclosing(listen(url, channel)) as wakeups:
            async for wakeup in wakeups:
                payload = wakeup.payload
                self.wake(int(payload) if payload is not None and payload.isdigit() else None)
