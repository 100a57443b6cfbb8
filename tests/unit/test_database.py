"""The shared store API (services.common.database): migrations, durability settings, read and
write transactions, reads that never wait for a write, and group commit (writes queued behind a
running batch share one COMMIT)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import stat
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from services.common.database import Database
from services.common.group_commit import MAX_BATCH, WriteStats
from services.common.sql import Connection
from tests.support.databases import queued_together, writer_held
from tests.support.paths import ROOT

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


def _version(connection: Connection) -> int:
    version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    return version


def _file_version(path: Path) -> int:
    with closing(sqlite3.connect(path)) as connection:
        return _version(connection)


def _insert(name: str) -> Callable[[Connection], None]:
    def insert(db: Connection) -> None:
        db.execute("INSERT INTO items VALUES (?, ?)", (name, name.title()))

    return insert


def _count(table: str) -> Callable[[Connection], int]:
    def count(db: Connection) -> int:
        total: int = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        return total

    return count


def _names(db: Connection) -> list[str]:
    return [row["id"] for row in db.execute("SELECT id FROM items ORDER BY id")]


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
    def settings(db: Connection) -> tuple[str, int, int]:
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
    def insert_then_fail(db: Connection) -> None:
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
    def count_twice(db: Connection) -> tuple[int, int]:
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


# --- group commit ----------------------------------------------------------------------------


async def test_a_write_on_an_idle_database_commits_alone(database: Database) -> None:
    await database.write(_insert("mug"))

    assert database.write_stats == WriteStats(commits=1, changes=1)
    assert await database.read(_count("items")) == 1


async def test_writes_queued_behind_a_running_batch_share_one_commit(database: Database) -> None:
    outcomes = await queued_together(database, [_insert(f"item{n}") for n in range(10)])

    assert outcomes == [None] * 10
    # The held write's batch, then one batch for all ten.
    assert database.write_stats == WriteStats(commits=2, changes=11)
    assert await database.read(_count("items")) == 10


async def test_a_batch_takes_at_most_max_batch_writes(database: Database) -> None:
    outcomes = await queued_together(
        database, [_insert(f"item{n:03}") for n in range(MAX_BATCH + 1)]
    )

    assert outcomes == [None] * (MAX_BATCH + 1)
    assert database.write_stats == WriteStats(commits=3, changes=MAX_BATCH + 2)
    assert await database.read(_count("items")) == MAX_BATCH + 1


async def test_each_write_of_a_batch_gets_its_own_result(database: Database) -> None:
    def insert_and_count(name: str) -> Callable[[Connection], tuple[str, int]]:
        def insert(db: Connection) -> tuple[str, int]:
            _insert(name)(db)
            return name, _count("items")(db)

        return insert

    names = [f"item{n}" for n in range(5)]
    results = await queued_together(database, [insert_and_count(name) for name in names])

    # In the order they were queued, each seeing the writes of its batch before it.
    assert results == [(name, n + 1) for n, name in enumerate(names)]
    assert database.write_stats == WriteStats(commits=2, changes=6)


async def test_a_raising_write_fails_alone_and_the_rest_of_its_batch_commits(
    database: Database,
) -> None:
    failure = KeyError("boom")

    def insert_then_fail(db: Connection) -> None:
        _insert("cup")(db)
        raise failure

    def sees_the_cup(db: Connection) -> bool:
        _insert("plate")(db)
        return bool(db.execute("SELECT count(*) FROM items WHERE id = 'cup'").fetchone()[0])

    mug, cup, plate = await queued_together(
        database, [_insert("mug"), insert_then_fail, sees_the_cup]
    )

    assert mug is None
    assert cup is failure
    assert plate is False  # the plate's change did not see the cup
    assert await database.read(_names) == ["mug", "plate"]
    # The trigger's rows of the cup went with it.
    assert await database.read(_count("events")) == 2
    assert database.write_stats == WriteStats(commits=2, changes=3)


async def test_a_failed_commit_fails_every_write_of_its_batch(database: Database) -> None:
    # A deferred foreign key is checked at COMMIT, so one bad note fails the whole batch there.
    await database.write(
        lambda db: db.execute(
            "CREATE TABLE notes (item_id TEXT NOT NULL"
            " REFERENCES items(id) DEFERRABLE INITIALLY DEFERRED)"
        )
    )

    def note_on_a_ghost(db: Connection) -> None:
        db.execute("INSERT INTO notes VALUES ('ghost')")

    outcomes = await queued_together(database, [_insert("mug"), note_on_a_ghost, _insert("cup")])

    assert [type(outcome) for outcome in outcomes] == [sqlite3.IntegrityError] * 3
    assert {str(outcome) for outcome in outcomes} == {"FOREIGN KEY constraint failed"}
    assert await database.read(_count("items")) == 0
    assert database.write_stats == WriteStats(commits=2, changes=2)
    # The writer rolled the failed batch back and carries on.
    await database.write(_insert("plate"))
    assert await database.read(_names) == ["plate"]


async def test_a_write_that_rolls_back_the_whole_transaction_fails_those_before_it(
    database: Database,
) -> None:
    # RAISE(ROLLBACK) ends the batch's transaction, savepoints and all.
    await database.write(
        lambda db: db.execute(
            "CREATE TRIGGER no_ghosts BEFORE INSERT ON items WHEN new.id = 'ghost'"
            " BEGIN SELECT RAISE(ROLLBACK, 'no ghosts'); END"
        )
    )

    mug, ghost, cup = await queued_together(
        database, [_insert(name) for name in ["mug", "ghost", "cup"]]
    )

    assert isinstance(ghost, sqlite3.IntegrityError)
    assert str(ghost) == "no ghosts"
    # The mug's write was rolled back with the ghost's, so it is not acknowledged; the cup's
    # had not run yet: it went to the next batch.
    assert mug is ghost
    assert cup is None
    assert await database.read(_names) == ["cup"]
    assert database.write_stats == WriteStats(commits=3, changes=3)


async def test_a_write_that_ends_its_transaction_itself_is_refused(database: Database) -> None:
    def commit_early(db: Connection) -> None:
        _insert("mug")(db)
        db.execute("COMMIT")

    with pytest.raises(RuntimeError, match="must not run BEGIN, COMMIT"):
        await database.write(commit_early)

    await database.write(_insert("cup"))
    assert await database.read(_count("items")) == 2


async def test_a_cancelled_write_queued_behind_a_batch_waits_for_its_commit(
    database: Database,
) -> None:
    async with writer_held(database):
        waiting = asyncio.create_task(database.write(_insert("mug")))
        await asyncio.sleep(0)  # let the task start: it queues the write before it waits
        waiting.cancel()
        for _ in range(3):
            await asyncio.sleep(0)
        # Cancelled, but its write has not run: the task does not end before it has.
        assert not waiting.done()
    async with asyncio.timeout(WAIT):
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert await database.read(_names) == ["mug"]
    assert database.write_stats == WriteStats(commits=2, changes=2)


async def test_close_commits_the_writes_queued_before_it(path: Path) -> None:
    database = await Database.open(path, MIGRATIONS)
    async with writer_held(database):
        queued = [asyncio.create_task(database.write(_insert(f"item{n}"))) for n in range(3)]
        await asyncio.sleep(0)  # let the tasks queue their writes
        closing_down = asyncio.create_task(database.close())
    async with asyncio.timeout(WAIT):
        await asyncio.gather(*queued, closing_down)

    with closing(sqlite3.connect(path)) as connection:
        assert connection.execute("SELECT count(*) FROM items").fetchone()[0] == 3


async def test_acknowledged_writes_survive_the_process_being_killed(path: Path) -> None:
    # 200 writes in flight; the writer kills itself (SIGKILL) after the 20th acknowledgement.
    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.killed_writer",
        str(path),
        "200",
        "20",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(WAIT):
        printed, _ = await writer.communicate()

    assert writer.returncode == -signal.SIGKILL
    acknowledged = {int(number) for number in printed.split()}
    assert len(acknowledged) == 20
    with closing(sqlite3.connect(path)) as connection:
        stored = {number for (number,) in connection.execute("SELECT id FROM acknowledged")}
    assert acknowledged <= stored
