"""SQLite plumbing for the per-service stores: durable WAL mode and versioned migrations.

Each service owns one SQLite file and no other service opens it. Stores call `open_database`
with their ordered list of migrations; PRAGMA user_version records how many have run, so a
store created by an older version is brought up to date on start.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

_WAL_SWITCH_SECONDS = 5.0


def open_database(path: Path | str, migrations: Sequence[str]) -> sqlite3.Connection:
    """Open (creating if needed) the database at `path` and apply pending `migrations`.

    `migrations[i]` is a SQL script that takes the schema from version i to i + 1. Never edit a
    released migration; append a new one. ":memory:" is accepted for tests.
    """
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: transactions are explicit (see `transaction`), never implicit.
    connection = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA busy_timeout=5000")
    _enable_wal(connection)
    # FULL: a committed transaction survives power loss, which the saga and outbox rely on.
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA foreign_keys=ON")
    # One transaction per migration, the version read inside it: of two processes migrating
    # one file at once (inventory replicas), the second sees the first's work and skips it.
    while True:
        with transaction(connection):
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > len(migrations):
                raise RuntimeError(
                    f"{path} has schema version {version}, newer than this code knows "
                    f"({len(migrations)})"
                )
            if version == len(migrations):
                return connection
            for statement in _statements(migrations[version]):
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version={version + 1}")


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


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): the write lock is taken up front, so two
    writers never deadlock upgrading from a read lock."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
