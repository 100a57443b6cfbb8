"""Looking into a service's own database file from a test, through a second, read-only
connection (the service owns the file; the test only looks)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path


def _read_only(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)


def count_rows(db_path: Path, sql: str, parameters: tuple[object, ...] = ()) -> int:
    """Run a COUNT (or other one-number) query against a service's database file (a plain
    connection: the file may be closed, with no WAL index for a read-only one to use)."""
    with closing(sqlite3.connect(db_path, timeout=5)) as db:
        count: int = db.execute(sql, parameters).fetchone()[0]
        return count


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
