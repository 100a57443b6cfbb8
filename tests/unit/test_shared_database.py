"""Replicas of one service share its SQLite file (the two inventory replicas of the local mesh):
opening a new file from several connections at once must migrate it exactly once."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from services.inventory.store import MIGRATIONS
from tests.support.databases import open_together

ROUNDS = 10


def test_connections_opening_a_new_file_together_migrate_it_once(tmp_path: Path) -> None:
    for round_number in range(ROUNDS):
        path = tmp_path / f"shared-{round_number}.db"

        assert open_together(path, MIGRATIONS, openers=3) == []

        with closing(sqlite3.connect(path)) as connection:
            assert connection.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
