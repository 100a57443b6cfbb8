"""Turns: background work that one process at a time may do on a database (the orders outbox
relay's pass), held as `async with database.exclusive(name):`.

- On Postgres, where several replicas share the database, a turn is a session advisory lock
  (`pg_try_advisory_lock`) on a connection of its own: whoever holds it, in whichever process,
  the others wait. A process that dies holding it releases it at once, with its connection
  (a machine that dies, within about 25 s: HELD_CONNECTION's keepalives): nothing waits for a
  lease to lapse. Waiting is polling, with a short backoff (a turn is held
  for one pass of work, milliseconds to seconds): no connection sits blocked in the server, and
  cancelling a waiter is immediate.
- On SQLite a database has one process (the topology refuses more than one replica of the
  services that take turns), so a turn is an asyncio lock.

If the turn's connection breaks while it is held, the server has let the turn go: another
process may start its pass before this one notices. Work done in turns must tolerate that
(the relay does: its consumer dedupes events, and every pass starts from the oldest one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

log = logging.getLogger(__name__)

# The first key of every turn's two-key advisory lock (its second key: hashtext of the turn's
# name). Two-key locks never collide with the one-key locks of services.common.postgres.
TURN_CLASS = 0x7475726E  # "turn"
HELD_CONNECTION: dict[str, Any] = {
    "connect_timeout": 10,
    # Our side notices a server gone silent...
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    # ...and the server a holder whose machine died (not only its process): without it, a
    # session (and the turn it holds) outlives a dead node for the kernel's ~2 h default.
    "options": "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3",
}
"""libpq settings of a connection held open for long (a turn's, a LISTEN): a dead peer is
noticed within about 25 s either way. (Unix-socket connections, the local mesh's, end with
their process anyway.)"""
_FIRST_RETRY_SECONDS = 0.01
_MAX_RETRY_SECONDS = 0.25


class Turns(Protocol):
    """Where a Database's turns are held."""

    def hold(self, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Wait for the turn `name`, hold it for the body of the `async with`."""
        ...

    async def close(self) -> None:
        """Let every turn go and release what holding them needs."""
        ...


class LocalTurns:
    """Turns among the tasks of one process."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        async with self._locks.setdefault(name, asyncio.Lock()):
            yield

    async def close(self) -> None:
        self._locks.clear()


class AdvisoryTurns:
    """Turns among every process on one Postgres database (see module docstring)."""

    def __init__(self, url: str) -> None:
        self._url = url
        # One thread owns the connection: psycopg connections are not for concurrent use, and
        # a release queued after a try always runs after it.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="db-turns")
        self._connection: Any = None
        self._held: set[str] = set()
        self._local = LocalTurns()

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        # Tasks of this process queue here; the advisory lock only settles it between processes.
        async with self._local.hold(name):
            delay = _FIRST_RETRY_SECONDS
            try:
                while not await loop.run_in_executor(self._thread, self._try, name):
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _MAX_RETRY_SECONDS)
                yield
            finally:
                # Also after a cancelled try: this runs after it on the one thread, and
                # releases what it may have taken.
                await asyncio.shield(loop.run_in_executor(self._thread, self._release, name))

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._disconnect)
        self._thread.shutdown(wait=True)

    def _try(self, name: str) -> bool:
        import psycopg

        for attempt in (1, 2):
            if self._connection is None or self._connection.closed:
                self._held.clear()
                self._connection = psycopg.connect(self._url, autocommit=True, **HELD_CONNECTION)
            try:
                row = self._connection.execute(
                    "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (TURN_CLASS, name)
                ).fetchone()
                break
            except psycopg.OperationalError:
                # A connection the server dropped (a restart) is found out on use: once more
                # on a new one before giving up.
                self._disconnect()
                if attempt == 2:
                    raise
        if row[0]:
            self._held.add(name)
        return bool(row[0])

    def _release(self, name: str) -> None:
        import psycopg

        if name not in self._held:
            return
        self._held.discard(name)
        try:
            self._connection.execute(
                "SELECT pg_advisory_unlock(%s, hashtext(%s))", (TURN_CLASS, name)
            )
        except psycopg.OperationalError:
            # The connection is gone, and the server released the lock with it.
            log.warning(
                "the connection holding a turn broke; reconnecting next time", extra={"turn": name}
            )
            self._disconnect()

    def _disconnect(self) -> None:
        self._held.clear()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None
