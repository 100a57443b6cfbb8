"""SQLite plumbing for the per-service stores: durable WAL mode and versioned migrations.

Each service owns one SQLite file and no other service opens it. Stores call `open_database`
with their ordered list of migrations; PRAGMA user_version records how many have run, so a
store created by an older version is brought up to date on start.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


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
    connection.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed transaction survives power loss, which the saga and outbox rely on.
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA busy_timeout=5000")
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > len(migrations):
        raise RuntimeError(
            f"{path} has schema version {version}, newer than this code knows ({len(migrations)})"
        )
    for number in range(version, len(migrations)):
        with transaction(connection):
            for statement in _statements(migrations[number]):
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version={number + 1}")
    return connection


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
