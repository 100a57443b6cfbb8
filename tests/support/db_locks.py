"""The check that a service keeps serving while another connection holds its database's write
lock: reads and health checks answer promptly while a write waits, and the write completes
once the lock is released. No sleeps: the write is known to have reached the database through
WriteWatch, which the `database_writes` fixture (tests/integration/conftest.py) patches in."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TypeVar

import psycopg
from grpc import aio
from grpc_health.v1 import health_pb2

from services.common.database import is_postgres
from services.common.postgres import WRITE_LOCK
from shopmesh.local.health import health_check

T = TypeVar("T")

# Far below SQLite's busy timeout (5 s): were writes run on the event loop, a write waiting for
# the lock would freeze every call that long.
PROMPTLY = 2.0
# Bound on every other wait, so a broken test fails instead of hanging.
WAIT = 10.0


class WriteWatch:
    """How many Database.write calls each database file has received in this process."""

    def __init__(self) -> None:
        self._calls: Counter[Path | str] = Counter()
        self._changed = asyncio.Event()

    def record(self, path: Path | str) -> None:
        """Count one write call on `path` (called on the event loop, before the write runs)."""
        self._calls[path] += 1
        self._changed.set()

    def calls(self, path: Path | str) -> int:
        """Write calls `path` has received so far."""
        return self._calls[path]

    async def wait_for(self, path: Path | str, count: int) -> None:
        """Return once `path` has received `count` write calls; bound it with a timeout."""
        while self._calls[path] < count:
            self._changed.clear()
            await self._changed.wait()


@contextmanager
def write_lock_held(path: Path | str) -> Iterator[None]:
    """Hold the write lock of the database at `path` from a second connection: an SQLite
    file's, or the advisory lock every writer of a Postgres database takes."""
    if is_postgres(path):
        with psycopg.connect(str(path), autocommit=True) as pg:
            pg.execute("SELECT pg_advisory_lock(%s)", (WRITE_LOCK,))
            yield
        return
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")


async def serves_while_a_write_waits(
    *,
    db_path: Path | str,
    channel: aio.Channel,
    writes: WriteWatch,
    read: Callable[[], Awaitable[object]],
    write: Callable[[], Awaitable[T]],
) -> T:
    """With `db_path`'s write lock held elsewhere, start `write` (an RPC that writes) and wait
    until it has reached the database; `read` (an RPC that only reads) and a health Check on
    `channel` must then answer within PROMPTLY while the write waits. Releases the lock and
    returns what the write answered."""

    async def run_write() -> T:
        return await write()

    before = writes.calls(db_path)
    waiting: asyncio.Task[T] | None = None
    try:
        with write_lock_held(db_path):
            waiting = asyncio.create_task(run_write())
            await asyncio.wait_for(writes.wait_for(db_path, before + 1), WAIT)
            await asyncio.wait_for(read(), PROMPTLY)
            check = health_check(channel)
            health = await asyncio.wait_for(check(health_pb2.HealthCheckRequest()), PROMPTLY)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            assert not waiting.done(), "the write went through while the lock was held"
        return await asyncio.wait_for(waiting, WAIT)
    finally:
        # On a failed check, end the write too, and retrieve whatever it raised.
        if waiting is not None:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
