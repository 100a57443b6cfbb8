"""Looking into a service's own database from a test, through a second connection (the
service owns the database; the test only looks): an SQLite file, or a Postgres database's URL
(the store's own role, with `?` placeholders as the stores write them)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, closing
from pathlib import Path

import psycopg
import pytest

from services.common.database import Database, Migration, Migrations, is_postgres
from services.common.listen import APPLICATION_NAME
from services.common.postgres import placeholders
from services.common.sql import Connection

BOTH_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
"""The stores' backends, as pytest parameters (`-m "not postgres"` keeps SQLite alone)."""
ON_BOTH_BACKENDS = pytest.mark.parametrize(
    "services_backend",
    [
        "sqlite",
        pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.services_on_postgres]),
    ],
    indirect=True,
)
"""A test module's `pytestmark` that runs its in-process services on each backend. The
Postgres half is `make test-postgres` (marker services_on_postgres), not `make test`: it takes
about three minutes, and `make test` keeps the stores' own tests on both backends."""

INTEGRITY_ERRORS = (sqlite3.IntegrityError, psycopg.errors.IntegrityError)
"""What a violated constraint raises, on either backend."""


def _read_only(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)


def count_rows(location: Path | str, sql: str, parameters: tuple[object, ...] = ()) -> int:
    """Run a COUNT (or other one-number) query against a service's database (for a file, a
    plain connection: the file may be closed, with no WAL index for a read-only one to use)."""
    count = query(location, sql, parameters)[0][0]
    assert isinstance(count, int), count
    return count


def query(
    location: Path | str, sql: str, parameters: tuple[object, ...] = ()
) -> list[tuple[object, ...]]:
    """The rows of one statement (or none, for one that returns none), committed."""
    if is_postgres(location):
        with psycopg.connect(str(location), autocommit=True) as pg:
            cursor = pg.execute(placeholders(sql), parameters)
            return cursor.fetchall() if cursor.description else []
    with closing(sqlite3.connect(location, timeout=5)) as db, db:
        return [tuple(row) for row in db.execute(sql, parameters)]


def charges_per_order(db_path: Path) -> dict[str, int]:
    """order_id -> number of payments rows in the payments database file."""
    with closing(_read_only(db_path)) as db:
        rows = db.execute("SELECT order_id, COUNT(*) FROM payments GROUP BY order_id")
        return {str(order_id): int(count) for order_id, count in rows}


def files_containing(db_path: Path, needle: bytes) -> list[str]:
    """Which of a database's files (the database, its -wal and -shm) hold `needle` anywhere in
    their bytes, free pages and old WAL frames included."""
    files = [db_path, *(db_path.with_name(db_path.name + suffix) for suffix in ("-wal", "-shm"))]
    return [file.name for file in files if file.exists() and needle in file.read_bytes()]


def schema_version(location: Path | str) -> int:
    """The schema version a database records (SQLite's user_version, or shopmesh_schema)."""
    if is_postgres(location):
        return count_rows(location, "SELECT version FROM shopmesh_schema")
    return count_rows(location, "PRAGMA user_version")


def fail_on(location: Path | str, event: str, table: str, message: str) -> None:
    """Make every `event` (INSERT, UPDATE) on `table` fail with an integrity error carrying
    `message`, through a trigger in the database's own dialect."""
    name = f"fail_{event}_{table}".lower()
    if not is_postgres(location):
        query(
            location,
            f"CREATE TRIGGER {name} BEFORE {event} ON {table}"
            f" BEGIN SELECT RAISE(ABORT, '{message}'); END",
        )
        return
    query(
        location,
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" RAISE EXCEPTION '{message}' USING ERRCODE = 'integrity_constraint_violation';"
        f" END $$",
    )
    query(
        location,
        f"CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()",
    )


def open_together(
    location: Path | str, migrations: Migrations | Sequence[Migration], openers: int
) -> list[str]:
    """Open the database at `location` from `openers` threads released at the same instant,
    each with its own event loop as each replica process would have; their errors."""
    start = threading.Barrier(openers)
    errors: list[str] = []

    async def open_and_close() -> None:
        await (await Database.open(location, migrations)).close()

    def open_one() -> None:
        start.wait()
        try:
            asyncio.run(open_and_close())
        except Exception as error:
            errors.append(repr(error))

    threads = [threading.Thread(target=open_one) for _ in range(openers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


WRITER_WAIT = 5.0
"""How long a test waits for the writer thread to start or end a held write."""


@asynccontextmanager
async def writer_held(database: Database) -> AsyncIterator[None]:
    """Hold the writer thread inside a first write (which changes nothing) until the block
    ends: every write submitted inside the block queues behind it, for the next batch."""
    started, release = threading.Event(), threading.Event()

    def hold(db: Connection) -> None:
        started.set()
        if not release.wait(WRITER_WAIT):
            raise TimeoutError("the test never released the writer")

    holding = asyncio.create_task(database.write(hold))
    try:
        assert await asyncio.to_thread(started.wait, WRITER_WAIT), "the writer never started"
        yield
        # Let the tasks created in the block start: each queues its write before it waits.
        await asyncio.sleep(0)
    finally:
        release.set()
        async with asyncio.timeout(WRITER_WAIT):
            await holding


async def queued_together(
    database: Database, changes: Sequence[Callable[[Connection], object]]
) -> list[object]:
    """Submit `changes` while the writer is held, so that all of them are queued when the
    next batch starts; returns what each write returned or raised, in order."""
    async with writer_held(database):
        queued = [asyncio.create_task(database.write(change)) for change in changes]
    async with asyncio.timeout(WRITER_WAIT):
        return await asyncio.gather(*queued, return_exceptions=True)


def cut_listening_connections(url: str, channel: str) -> int:
    """Terminate every connection that services.common.listen holds on `channel` of the
    Postgres database at `url`, as a fast shutdown of the server would; how many were cut."""
    with psycopg.connect(url, autocommit=True) as admin:
        cut = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            (f"{APPLICATION_NAME} {channel}",),
        ).fetchall()
    return sum(1 for (terminated,) in cut if terminated)
