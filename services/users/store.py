"""The users service's own SQLite database: one row per account."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from services.common.clock import from_micros, to_micros
from services.common.database import Database
from services.users.domain import AddOutcome, User

# Append-only: migrations[i] takes the schema from version i to i + 1 (see common.database).
MIGRATIONS: list[str] = [
    """
    CREATE TABLE users (
        user_id TEXT PRIMARY KEY,
        -- Normalised (trimmed, lower-case), so plain equality is the uniqueness rule.
        email TEXT NOT NULL UNIQUE,
        display_name TEXT NOT NULL,
        create_time_us INTEGER NOT NULL,
        -- The idempotency key of the CreateUser call that created the row; NULL when none.
        request_id TEXT UNIQUE
    );
    """,
]

_COLUMNS = "user_id, email, display_name, create_time_us"


def _user(row: sqlite3.Row) -> User:
    return User(
        user_id=row["user_id"],
        email=row["email"],
        display_name=row["display_name"],
        create_time=from_micros(row["create_time_us"]),
    )


class SqliteUserStore:
    """UserStore on a SQLite file; every method is one short transaction."""

    def __init__(self, database: Database) -> None:
        self._db = database

    @classmethod
    async def open(cls, path: Path | str) -> SqliteUserStore:
        """Open (creating and migrating if needed) the database at `path`."""
        return cls(await Database.open(path, MIGRATIONS))

    async def close(self) -> None:
        """Close the database."""
        await self._db.close()

    async def add(self, user: User, request_id: str) -> tuple[AddOutcome, User]:
        """See UserStore.add. One write transaction, so the checks and the insert cannot
        interleave with another CreateUser."""

        def add(db: sqlite3.Connection) -> tuple[AddOutcome, User]:
            if request_id:
                row = db.execute(
                    f"SELECT {_COLUMNS} FROM users WHERE request_id = ?", (request_id,)
                ).fetchone()
                if row is not None:
                    return AddOutcome.REPLAYED, _user(row)
            row = db.execute(
                f"SELECT {_COLUMNS} FROM users WHERE email = ?", (user.email,)
            ).fetchone()
            if row is not None:
                return AddOutcome.EMAIL_TAKEN, _user(row)
            db.execute(
                "INSERT INTO users (user_id, email, display_name, create_time_us, request_id)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    user.user_id,
                    user.email,
                    user.display_name,
                    to_micros(user.create_time),
                    request_id or None,
                ),
            )
            return AddOutcome.CREATED, user

        return await self._db.write(add)

    async def get(self, user_id: str) -> User | None:
        """See UserStore.get."""

        def get(db: sqlite3.Connection) -> User | None:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM users WHERE user_id = ?", (user_id,)
            ).fetchone()
            return None if row is None else _user(row)

        return await self._db.read(get)
