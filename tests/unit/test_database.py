"""The shared store API (services.common.database): migrations, durability settings, read and
write transactions, and reads that never wait for a write."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from services.common.database import Database

MIGRATIONS = [
    "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT NOT NULL);",
    """
    CREATE TABLE events (id INTEGER PRIMARY KEY, item_id TEXT NOT NULL REFERENCES items(id));
    CREATE TRIGGER item_added AFTER INSERT ON items BEGIN
        INSERT INTO events (item_id) VALUES (new.id);
    END;
    """,
]
# Bounds every wait on a database thread, so a broken test fails instead of hanging.
WAIT = 5.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "store.db"


@pytest.fixture
async def database(path: Path) -> AsyncIterator[Database]:
    opened = await Database.open(path, MIGRATIONS)
    yield opened
    await opened.close()


def _version(connection: sqlite3.Connection) -> int:
    version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    return version


def _file_version(path: Path) -> int:
    with closing(sqlite3.connect(path)) as connection:
        return _version(connection)


def _insert(name: str) -> Callable[[sqlite3.Connection], None]:
    def insert(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO items VALUES (?, ?)", (name, name.title()))

    return insert


def _count(table: str) -> Callable[[sqlite3.Connection], int]:
    def count(db: sqlite3.Connection) -> int:
        total: int = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        return total

    return count


@contextmanager
def write_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """Hold the database's write lock from another connection, as another process would."""
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        try:
            yield other
        finally:
            other.execute("ROLLBACK")


# --- migrations and settings -----------------------------------------------------------------


async def test_open_creates_the_file_and_applies_every_migration(
    database: Database, path: Path
) -> None:
    assert await asyncio.to_thread(path.exists)
    assert _file_version(path) == len(MIGRATIONS)
    await database.write(lambda db: db.execute("INSERT INTO items VALUES ('mug', 'Mug')"))
    rows = await database.read(lambda db: db.execute("SELECT item_id FROM events").fetchall())
    assert [row["item_id"] for row in rows] == ["mug"]


async def test_the_file_and_its_wal_and_shm_are_private_whatever_the_umask(path: Path) -> None:
    previous = os.umask(0o022)
    try:
        database = await Database.open(path, MIGRATIONS)
    finally:
        os.umask(previous)
    try:
        await database.write(lambda db: db.execute("INSERT INTO items VALUES ('mug', 'Mug')"))
        modes = {
            file.name: stat.S_IMODE(file.stat().st_mode)
            for file in [path.parent, *path.parent.iterdir()]
        }
    finally:
        await database.close()
    assert modes == {"data": 0o700, "store.db": 0o600, "store.db-wal": 0o600, "store.db-shm": 0o600}


async def test_writes_are_durable_wal_with_foreign_keys(database: Database) -> None:
    def settings(db: sqlite3.Connection) -> tuple[str, int, int]:
        return (
            db.execute("PRAGMA journal_mode").fetchone()[0],
            db.execute("PRAGMA synchronous").fetchone()[0],
            db.execute("PRAGMA foreign_keys").fetchone()[0],
        )

    assert await database.write(settings) == ("wal", 2, 1)  # 2 is FULL


async def test_a_database_opened_not_durable_syncs_only_at_checkpoints(path: Path) -> None:
    database = await Database.open(path, MIGRATIONS, durable=False)
    try:
        synchronous = await database.write(lambda db: db.execute("PRAGMA synchronous").fetchone())
    finally:
        await database.close()
    assert synchronous[0] == 1  # NORMAL


async def test_reopening_an_up_to_date_database_changes_nothing(path: Path) -> None:
    first = await Database.open(path, MIGRATIONS)
    await first.write(lambda db: db.execute("INSERT INTO items VALUES ('mug', 'Mug')"))
    await first.close()

    # Re-running migration 0 would fail (the table exists), so this also proves it is skipped.
    reopened = await Database.open(path, MIGRATIONS)
    try:
        rows = await reopened.read(lambda db: db.execute("SELECT id FROM items").fetchall())
        assert [row["id"] for row in rows] == ["mug"]
    finally:
        await reopened.close()
    assert _file_version(path) == len(MIGRATIONS)


async def test_a_new_migration_runs_once_on_an_older_database(path: Path) -> None:
    await (await Database.open(path, MIGRATIONS[:1])).close()
    assert _file_version(path) == 1

    upgraded = await Database.open(path, MIGRATIONS)
    try:
        assert await upgraded.read(_count("events")) == 0
    finally:
        await upgraded.close()
    assert _file_version(path) == 2


async def test_a_database_from_newer_code_is_refused(path: Path) -> None:
    await (await Database.open(path, MIGRATIONS)).close()

    with pytest.raises(RuntimeError, match="schema version 2, newer than this code knows \\(1\\)"):
        await Database.open(path, MIGRATIONS[:1])


async def test_a_failing_migration_leaves_the_previous_version_intact(path: Path) -> None:
    broken = [MIGRATIONS[0], "CREATE TABLE half (id INTEGER);\nINSERT INTO nowhere VALUES (1);"]

    with pytest.raises(sqlite3.OperationalError, match="no such table: nowhere"):
        await Database.open(path, broken)

    assert _file_version(path) == 1
    with closing(sqlite3.connect(path)) as connection:
        tables = connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        assert [name for (name,) in tables] == ["items"]


async def test_an_incomplete_migration_statement_is_reported(path: Path) -> None:
    with pytest.raises(ValueError, match="incomplete SQL statement"):
        await Database.open(path, ["CREATE TABLE items (id TEXT"])


async def test_an_in_memory_database_is_refused() -> None:
    with pytest.raises(ValueError, match=":memory:"):
        await Database.open(":memory:", MIGRATIONS)


# --- transactions ----------------------------------------------------------------------------


async def test_a_write_that_raises_is_rolled_back(database: Database) -> None:
    def insert_then_fail(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO items VALUES ('mug', 'Mug')")
        raise KeyError("boom")

    with pytest.raises(KeyError):
        await database.write(insert_then_fail)

    assert await database.read(_count("items")) == 0
    # The writer is usable again: the failed write left no transaction open.
    await database.write(lambda db: db.execute("INSERT INTO items VALUES ('cup', 'Cup')"))
    assert await database.read(_count("items")) == 1


async def test_a_read_sees_one_snapshot_across_its_statements(
    database: Database, path: Path
) -> None:
    def count_twice(db: sqlite3.Connection) -> tuple[int, int]:
        before: int = db.execute("SELECT count(*) FROM items").fetchone()[0]
        # Another connection commits between the two statements of this one read.
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("INSERT INTO items VALUES ('mug', 'Mug')")
        after: int = db.execute("SELECT count(*) FROM items").fetchone()[0]
        return before, after

    assert await database.read(count_twice) == (0, 0)
    assert await database.read(_count("items")) == 1


async def test_a_read_cannot_write(database: Database) -> None:
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        await database.read(lambda db: db.execute("INSERT INTO items VALUES ('mug', 'Mug')"))


async def test_reads_do_not_wait_for_a_write_waiting_on_the_lock(
    database: Database, path: Path
) -> None:
    await database.write(lambda db: db.execute("INSERT INTO items VALUES ('mug', 'Mug')"))
    with write_lock(path):
        waiting = asyncio.create_task(database.write(_insert("cup")))
        async with asyncio.timeout(WAIT):
            assert await database.read(_count("items")) == 1
        assert not waiting.done()
    async with asyncio.timeout(WAIT):
        await waiting
    assert await database.read(_count("items")) == 2


async def test_a_cancelled_write_still_finishes_before_the_cancellation_returns(
    database: Database, path: Path
) -> None:
    with write_lock(path):
        waiting = asyncio.create_task(database.write(_insert("mug")))
        await asyncio.sleep(0)  # let the task start: it submits the write before it waits
        waiting.cancel()
    async with asyncio.timeout(WAIT):
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert await database.read(_count("items")) == 1


async def test_a_closed_database_refuses_calls(path: Path) -> None:
    database = await Database.open(path, MIGRATIONS)
    await database.close()
    await database.close()  # closing twice is harmless

    with pytest.raises(RuntimeError, match="closed"):
        await database.read(_count("items"))
    with pytest.raises(RuntimeError, match="closed"):
        await database.write(_insert("mug"))
