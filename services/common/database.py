"""The one store API of every service: a database behind `await db.read(fn)` and
`await db.write(fn)`, never blocking the event loop. The database is an SQLite file (the
default), or a Postgres database when the service is given a `postgresql://` URL
(services.common.postgres): the same contract below holds on both, and a store's `fn` runs the
SQL both understand (services.common.sql) on either.

Each service owns one SQLite file (WAL, synchronous=FULL) and no other service opens it. The
file is created 0600 (SQLite gives its -wal and -shm files the database's mode): what a
service stores is nobody else's to read, whoever starts it and with whatever umask.

- Writes run on ONE writer connection on one dedicated thread, with group commit: the writer
  takes every write queued while its previous batch was running (at most MAX_BATCH) and runs
  them in ONE `BEGIN IMMEDIATE ... COMMIT`, so they share one fsync. Each `fn` runs in its own
  SAVEPOINT: released if it returns, rolled back to (and released) if it raises, so a write
  that raises leaves the others of its batch intact, and none of them sees what it did. A
  `write()` returns only after its batch's COMMIT has returned; if the COMMIT fails, every
  write of the batch fails with that error (none is acknowledged). A write on an idle database
  starts at once: nothing waits to collect a batch. One writer per database also means writes
  never contend with each other inside a process. `write_stats` counts commits and writes, so
  tests and benchmarks see how many writes shared each fsync.
- Reads run on a small pool of reader connections on their own threads, each `fn` inside a
  deferred `BEGIN ... COMMIT`: a multi-statement read sees one consistent snapshot, and WAL lets
  it proceed while the writer holds the write lock or waits on an fsync.
- `fn` runs on a database thread: it gets a services.common.sql `Connection` (on SQLite an
  `sqlite3.Connection`, rows `sqlite3.Row`), must be a plain function, and must not touch the
  event loop.
- A write's `fn` shares its transaction with the other writes of its batch, so it must leave
  the transaction alone: no BEGIN, COMMIT, END, ROLLBACK, SAVEPOINT or RELEASE statements, and
  no PRAGMA that holds for the rest of a transaction (defer_foreign_keys). A deferred
  constraint it violates fails the COMMIT, hence its whole batch; and whatever ends the
  transaction inside one `fn` (RAISE(ROLLBACK) or ON CONFLICT ROLLBACK in a schema, a full
  disk) fails the writes of the batch that ran before it, while those after it go to the next
  batch. No store's `fn` does any of this. An `fn` runs once: nothing retries it.

Schema versions: `migrations[i]` is a SQL script taking the schema from version i to i + 1
(or, for what SQL cannot compute, a function of the writer connection); PRAGMA user_version
records how many have run. Never edit a released migration; append one. Once migrations have
run, the WAL is checkpointed into the file and emptied: a migration that scrubs data (payments'
tokens) leaves no old page behind in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from services.common.group_commit import GroupCommit, WriteStats
from services.common.sql import Connection
from services.common.turns import LocalTurns, Turns

T = TypeVar("T")
Migration = str | Callable[[Connection], None]
"""A SQL script, or a function that migrates through the connection it is given (inside the
migration's transaction)."""

# Reads are short: a few reader connections let reads proceed side by side (and past a write
# waiting on the disk) without a thread per request on a small machine.
DEFAULT_READERS = 4
# How long a writer waits for another process's write lock before failing "database is locked".
BUSY_TIMEOUT_MS = 5000
_WAL_SWITCH_SECONDS = 5.0
PRIVATE_FILE = 0o600
PRIVATE_DIRECTORY = 0o700


@dataclass(frozen=True)
class Migrations:
    """A store's schema history on each backend: `sqlite[i]` and `postgres[i]` both take the
    schema from version i to i + 1, so a database of either kind at version N has the same
    tables (in its own dialect's types) and the same store code runs on it."""

    sqlite: Sequence[Migration]
    postgres: Sequence[Migration]

    def __post_init__(self) -> None:
        if len(self.sqlite) != len(self.postgres):
            raise ValueError(
                f"{len(self.sqlite)} SQLite migrations but {len(self.postgres)} Postgres ones: "
                "each version needs one of each"
            )

    def __len__(self) -> int:
        """The schema version every migration together reaches."""
        return len(self.sqlite)


def is_postgres(location: Path | str) -> bool:
    """Whether `location` names a Postgres database (a postgresql:// URL) rather than a file."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


class Engine(Protocol):
    """One backend's connections as a Database uses them: SQLite (below) or Postgres
    (services.common.postgres). Every method runs on a database thread."""

    def writer(self) -> contextlib.AbstractContextManager[Connection]:
        """The connection one batch of writes runs on (on the writer thread)."""
        ...

    def begin_write(self, connection: Connection) -> None:
        """Begin a write transaction that no other writer of the database runs beside."""
        ...

    def read(self, query: Callable[[Connection], T]) -> T:
        """Run `query` in one read-only snapshot transaction on a reader connection."""
        ...

    def version(self) -> int:
        """The schema version the database is at."""
        ...

    def close(self) -> None:
        """Close every connection."""
        ...


class Database:
    """One database: a writer thread and a pool of reader threads (see module docstring).

    Open it with `await Database.open(location, migrations)`, close it with `await db.close()`.
    """

    def __init__(
        self,
        path: Path | str,
        engine: Engine,
        write_thread: ThreadPoolExecutor,
        read_threads: ThreadPoolExecutor,
        turns: Turns | None = None,
    ) -> None:
        """Use `Database.open`: it creates the connections on the right threads."""
        self.path = path
        """The SQLite file, or the Postgres URL (which carries no password)."""
        self._engine = engine
        self._write_thread = write_thread
        self._writes = GroupCommit(engine, write_thread)
        self._read_threads = read_threads
        self._turns = turns or LocalTurns()
        self._closed = False

    @classmethod
    async def open(
        cls,
        location: Path | str,
        migrations: Migrations | Sequence[Migration],
        *,
        readers: int = DEFAULT_READERS,
        durable: bool = True,
    ) -> Database:
        """Open (creating if needed) the database at `location` and apply pending `migrations`.

        `location` is an SQLite file's path, or a `postgresql://` URL (is_postgres) of a
        database that exists (its role owns it: services.common.postgres). `migrations` is a
        Migrations, or a plain sequence for a database that is only ever SQLite.

        Several processes may open one new database at once (inventory replicas share one):
        it is migrated exactly once.

        `durable` (the default, and what every service needs): synchronous=FULL, a COMMIT that
        returned survives power loss; the saga, the outbox and every acknowledged RPC rely on
        it. `durable=False` is for data that may be lost but not corrupted (the trace
        collector's spans): synchronous=NORMAL, which in WAL mode fsyncs only at checkpoints,
        so the last commits before a power loss (not a process crash) may be gone, and the
        file is never corrupt. (On Postgres: synchronous_commit on, or off.)
        """
        if readers < 1:
            raise ValueError("a Database needs at least one reader connection")
        if is_postgres(location):
            if not isinstance(migrations, Migrations):
                raise ValueError("a Postgres database needs Migrations with a Postgres list")
            # Imported here: a process that only ever opens SQLite files never loads psycopg.
            from services.common import postgres

            return await postgres.open_database(
                str(location), migrations.postgres, readers=readers, durable=durable
            )
        if isinstance(migrations, Migrations):
            migrations = migrations.sqlite
        path = location
        if str(path) == ":memory:":
            # Every connection to ":memory:" is a database of its own: readers would see none
            # of the writer's tables.
            raise ValueError("Database needs a file: several connections cannot share :memory:")
        path = Path(path)
        write_thread = ThreadPoolExecutor(1, thread_name_prefix=f"db-write-{path.name}")
        read_threads = ThreadPoolExecutor(readers, thread_name_prefix=f"db-read-{path.name}")
        loop = asyncio.get_running_loop()
        opened: list[sqlite3.Connection] = []
        try:
            writer = await loop.run_in_executor(
                write_thread, _open_writer, path, migrations, durable, opened
            )
            reader_connections = [
                await loop.run_in_executor(read_threads, _open_reader, path, opened)
                for _ in range(readers)
            ]
        except BaseException:
            await asyncio.to_thread(_release, opened, write_thread, read_threads)
            raise
        return cls(path, _SqliteEngine(writer, reader_connections), write_thread, read_threads)

    async def read(self, query: Callable[[Connection], T]) -> T:
        """Run `query(connection)` in one read transaction on a reader thread and return its
        result. Raises what `query` raises."""
        self._check_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_threads, self._engine.read, query)

    async def write(self, change: Callable[[Connection], T]) -> T:
        """Run `change(connection)` in a write transaction on the writer thread
        (shared with the writes queued beside it, see the module docstring): committed if it
        returns (its result is returned once the COMMIT has returned), rolled back if it raises.

        Once called, the write runs to its end even if the caller is cancelled, and the
        cancellation waits for that end: whoever cancelled the caller (and any lock the caller
        holds) never races with a write still in flight.
        """
        self._check_open()
        written = asyncio.wrap_future(self._writes.submit(change))
        try:
            # Shielded: cancelling the caller must not cancel a write that has not started.
            return await asyncio.shield(written)
        except asyncio.CancelledError:
            await _wait_for_end(written)
            raise

    def exclusive(self, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        """`async with db.exclusive(name):` waits for the turn `name` and holds it for the body:
        one holder at a time across every process on this database (services.common.turns)."""
        self._check_open()
        return self._turns.hold(name)

    @property
    def write_stats(self) -> WriteStats:
        """Commits and acknowledged writes so far: how well writes share their fsyncs."""
        return self._writes.stats()

    async def version(self) -> int:
        """The schema version the database is at (read from the database itself)."""
        self._check_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_threads, self._engine.version)

    async def close(self) -> None:
        """Finish the writes already submitted, then close every connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await self._turns.close()
        await asyncio.to_thread(self._release)

    def _release(self) -> None:
        for executor in (self._write_thread, self._read_threads):
            executor.shutdown(wait=True)
        self._engine.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"database {self.path} is closed")


class _SqliteEngine:
    """The Engine of an SQLite file: one writer connection, a queue of reader connections."""

    def __init__(self, writer: sqlite3.Connection, readers: Sequence[sqlite3.Connection]) -> None:
        self._writer = writer
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._reader_connections = tuple(readers)
        for reader in readers:
            self._readers.put(reader)

    def writer(self) -> contextlib.AbstractContextManager[Connection]:
        return contextlib.nullcontext(self._writer)

    def begin_write(self, connection: Connection) -> None:
        connection.execute("BEGIN IMMEDIATE")

    def read(self, query: Callable[[Connection], T]) -> T:
        # As many reader threads as connections, so a connection is always free here.
        connection = self._readers.get_nowait()
        try:
            with transaction(connection, "BEGIN"):
                return query(connection)
        finally:
            self._readers.put(connection)

    def version(self) -> int:
        return self.read(lambda db: int(db.execute("PRAGMA user_version").fetchone()[0]))

    def close(self) -> None:
        _release([self._writer, *self._reader_connections])


async def _wait_for_end(written: asyncio.Future[T]) -> None:
    """Wait until `written` is finished, whatever cancellations the waiting task receives.
    asyncio.wait neither raises the write's error nor cancels it."""
    while not written.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({written})


@contextlib.contextmanager
def transaction(connection: Connection, begin: str) -> Iterator[None]:
    """`begin` ... COMMIT, or ROLLBACK when the body (or the COMMIT itself) raises.

    BEGIN IMMEDIATE takes the write lock up front, so two writers (e.g. two processes on one
    file) never deadlock upgrading from a read lock; busy_timeout makes the second one wait.
    """
    connection.execute(begin)
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _connect(path: Path, opened: list[sqlite3.Connection]) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (see `_transaction`), never implicit.
    # check_same_thread=False: a connection is used by one thread at a time, but closed by
    # another.
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    opened.append(connection)
    connection.row_factory = sqlite3.Row
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return connection


def _open_writer(
    path: Path,
    migrations: Sequence[Migration],
    durable: bool,
    opened: list[sqlite3.Connection],
) -> sqlite3.Connection:
    path.parent.mkdir(mode=PRIVATE_DIRECTORY, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE))
    connection = _connect(path, opened)
    _enable_wal(connection)
    # FULL: a committed transaction survives power loss, which the saga and outbox rely on.
    # NORMAL (not durable): no fsync per commit, only at checkpoints (see `Database.open`).
    connection.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    connection.execute("PRAGMA foreign_keys=ON")
    if _migrate(connection, path, migrations):
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return connection


def _open_reader(path: Path, opened: list[sqlite3.Connection]) -> sqlite3.Connection:
    connection = _connect(path, opened)
    # A read that tries to write is a bug: fail it rather than let it bypass the writer.
    connection.execute("PRAGMA query_only=ON")
    return connection


def _release(connections: Sequence[sqlite3.Connection], *threads: ThreadPoolExecutor) -> None:
    for executor in threads:
        executor.shutdown(wait=True)
    for connection in connections:
        connection.close()


def _migrate(connection: sqlite3.Connection, path: Path, migrations: Sequence[Migration]) -> int:
    """Apply the pending migrations, one transaction each with the version read inside it: of
    two processes migrating one file at once, the second sees the first's work and skips it.
    Returns how many this call applied."""
    applied = 0
    while True:
        with transaction(connection, "BEGIN IMMEDIATE"):
            version: int = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > len(migrations):
                raise RuntimeError(
                    f"{path} has schema version {version}, newer than this code knows "
                    f"({len(migrations)})"
                )
            if version == len(migrations):
                return applied
            migration = migrations[version]
            if callable(migration):
                migration(connection)
            else:
                for statement in _statements(migration):
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version={version + 1}")
        applied += 1


def _enable_wal(connection: sqlite3.Connection) -> None:
    """Switch to WAL. Processes opening one new file together (inventory replicas) race for
    the lock this takes, and SQLite does not wait for it with busy_timeout: retry briefly."""
    deadline = time.monotonic() + _WAL_SWITCH_SECONDS
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _statements(script: str) -> Iterator[str]:
    # executescript() would COMMIT behind our back; run the statements one by one instead.
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()[:80]}")
