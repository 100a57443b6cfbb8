"""Replicas of one service share its SQLite file (the two inventory replicas of the local mesh):
opening a new file from several connections at once must migrate it exactly once."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

from services.common.database import Database
from services.inventory.store import MIGRATIONS

ROUNDS = 10


def open_together(path: Path, openers: int) -> list[str]:
    """Open `path` from `openers` threads released at the same instant; their errors."""
    start = threading.Barrier(openers)
    errors: list[str] = []

    async def open_and_close() -> None:
        await (await Database.open(path, MIGRATIONS)).close()

    def open_one() -> None:
        start.wait()
        try:
            # Each thread runs its own event loop, as each replica process would.
            asyncio.run(open_and_close())
        except sqlite3.Error as error:
            errors.append(repr(error))

    threads = [threading.Thread(target=open_one) for _ in range(openers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_connections_opening_a_new_file_together_migrate_it_once(tmp_path: Path) -> None:
    for round_number in range(ROUNDS):
        path = tmp_path / f"shared-{round_number}.db"

        assert open_together(path, openers=3) == []

        with closing(sqlite3.connect(path)) as connection:
            assert connection.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
