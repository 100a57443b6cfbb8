"""The users service's own database (SQLite, or Postgres: services.common.database): accounts
(with their password hashes), refresh tokens (only their hashes) and the failure counts of
sign-in and sign-up (table `sign_in_failures`, for both; see services.users.throttle)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from services.common.clock import from_micros, to_micros
from services.common.database import Database, Migrations
from services.common.sql import Connection, Row
from services.users.domain import AddOutcome, User
from services.users.sessions import Credentials, RefreshToken, Renewal
from services.users.throttle import ThrottleKey

# Append-only: migrations[i] takes the schema from version i to i + 1 (see common.database),
# once per backend: the same versions, each in its own dialect.
SQLITE_MIGRATIONS: list[str] = [
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
    """
    -- PHC-format Argon2id hash; NULL for an account created without a password (it cannot
    -- sign in).
    ALTER TABLE users ADD COLUMN password_hash TEXT;
    CREATE TABLE refresh_tokens (
        -- SHA-256 (hex) of the token; the token itself is never stored.
        token_hash TEXT PRIMARY KEY,
        -- Every token descended from one sign-in: presenting a used one revokes them all.
        family_id TEXT NOT NULL,
        user_id TEXT NOT NULL REFERENCES users (user_id),
        expire_time_us INTEGER NOT NULL,
        used INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family_id);
    CREATE INDEX refresh_tokens_by_expiry ON refresh_tokens (expire_time_us);
    CREATE TABLE sign_in_failures (
        -- "account:<normalised email>" or "address:<ip or IPv6 /64>".
        throttle_key TEXT PRIMARY KEY,
        failures INTEGER NOT NULL,
        last_failure_us INTEGER NOT NULL
    );
    CREATE INDEX sign_in_failures_by_age ON sign_in_failures (last_failure_us);
    """,
]

POSTGRES_MIGRATIONS: list[str] = [
    """
    CREATE TABLE users (
        user_id TEXT PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        display_name TEXT NOT NULL,
        create_time_us BIGINT NOT NULL,
        request_id TEXT UNIQUE
    );
    """,
    """
    ALTER TABLE users ADD COLUMN password_hash TEXT;
    CREATE TABLE refresh_tokens (
        token_hash TEXT PRIMARY KEY,
        family_id TEXT NOT NULL,
        user_id TEXT NOT NULL REFERENCES users (user_id),
        expire_time_us BIGINT NOT NULL,
        used INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family_id);
    CREATE INDEX refresh_tokens_by_expiry ON refresh_tokens (expire_time_us);
    CREATE TABLE sign_in_failures (
        throttle_key TEXT PRIMARY KEY,
        failures INTEGER NOT NULL,
        last_failure_us BIGINT NOT NULL
    );
    CREATE INDEX sign_in_failures_by_age ON sign_in_failures (last_failure_us);
    """,
]

MIGRATIONS = Migrations(sqlite=SQLITE_MIGRATIONS, postgres=POSTGRES_MIGRATIONS)

_COLUMNS = "user_id, email, display_name, create_time_us"


def _user(row: Row) -> User:
    return User(
        user_id=row["user_id"],
        email=row["email"],
        display_name=row["display_name"],
        create_time=from_micros(row["create_time_us"]),
    )


class SqlUserStore:
    """UserStore on its database (an SQLite file or Postgres); every method is one short
    transaction."""

    def __init__(self, database: Database) -> None:
        self._db = database

    @classmethod
    async def open(cls, location: Path | str) -> SqlUserStore:
        """Open (creating and migrating if needed) the database at `location`: a file's path
        or a postgresql:// URL."""
        return cls(await Database.open(location, MIGRATIONS))

    async def close(self) -> None:
        """Close the database."""
        await self._db.close()

    async def add(
        self, user: User, request_id: str, password_hash: str | None = None
    ) -> tuple[AddOutcome, User]:
        """See UserStore.add. One write transaction, so the checks and the insert cannot
        interleave with another CreateUser."""

        def add(db: Connection) -> tuple[AddOutcome, User]:
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
                "INSERT INTO users (user_id, email, display_name, create_time_us, request_id,"
                " password_hash) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    user.user_id,
                    user.email,
                    user.display_name,
                    to_micros(user.create_time),
                    request_id or None,
                    password_hash,
                ),
            )
            return AddOutcome.CREATED, user

        return await self._db.write(add)

    async def get(self, user_id: str) -> User | None:
        """See UserStore.get."""

        def get(db: Connection) -> User | None:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM users WHERE user_id = ?", (user_id,)
            ).fetchone()
            return None if row is None else _user(row)

        return await self._db.read(get)

    async def password_hash(self, user_id: str) -> str | None:
        """See UserStore.password_hash."""

        def read(db: Connection) -> str | None:
            row = db.execute(
                "SELECT password_hash FROM users WHERE user_id = ?", (user_id,)
            ).fetchone()
            return None if row is None else row["password_hash"]

        return await self._db.read(read)

    async def credentials(self, email: str) -> Credentials | None:
        """See SessionStore.credentials."""

        def read(db: Connection) -> Credentials | None:
            row = db.execute(
                "SELECT user_id, password_hash FROM users WHERE email = ?", (email,)
            ).fetchone()
            return None if row is None else Credentials(row["user_id"], row["password_hash"])

        return await self._db.read(read)

    async def begin_attempt(self, keys: Sequence[ThrottleKey], now: datetime) -> timedelta:
        """See AttemptStore.begin_attempt. Check and count in one write transaction, so
        parallel attempts see each other's counts."""
        now_us = to_micros(now)
        oldest = now - max(key.policy.forget_after for key in keys)

        def begin(db: Connection) -> timedelta:
            db.execute(
                "DELETE FROM sign_in_failures WHERE last_failure_us < ?", (to_micros(oldest),)
            )
            counts: list[int] = []
            wait = timedelta(0)
            for key in keys:
                row = db.execute(
                    "SELECT failures, last_failure_us FROM sign_in_failures WHERE throttle_key = ?",
                    (key.key,),
                ).fetchone()
                failures = 0
                if row is not None and now - from_micros(row["last_failure_us"]) < (
                    key.policy.forget_after
                ):
                    failures = row["failures"]
                    last = from_micros(row["last_failure_us"])
                    wait = max(wait, key.policy.wait(failures, last, now))
                counts.append(failures)
            if wait > timedelta(0):
                return wait
            db.executemany(
                "INSERT INTO sign_in_failures (throttle_key, failures, last_failure_us)"
                " VALUES (?, ?, ?) ON CONFLICT (throttle_key) DO UPDATE"
                " SET failures = excluded.failures, last_failure_us = excluded.last_failure_us",
                [(key.key, count + 1, now_us) for key, count in zip(keys, counts, strict=True)],
            )
            return timedelta(0)

        return await self._db.write(begin)

    async def attempt_succeeded(self, keys: Sequence[ThrottleKey]) -> None:
        """See AttemptStore.attempt_succeeded."""

        def succeed(db: Connection) -> None:
            for key in keys:
                if key.clear_on_success:
                    db.execute("DELETE FROM sign_in_failures WHERE throttle_key = ?", (key.key,))
                else:
                    db.execute(
                        "UPDATE sign_in_failures"
                        " SET failures = CASE WHEN failures > 0 THEN failures - 1 ELSE 0 END"
                        " WHERE throttle_key = ?",
                        (key.key,),
                    )

        await self._db.write(succeed)

    async def add_refresh_token(self, token: RefreshToken, now: datetime) -> None:
        """See SessionStore.add_refresh_token."""

        def add(db: Connection) -> None:
            db.execute("DELETE FROM refresh_tokens WHERE expire_time_us < ?", (to_micros(now),))
            db.execute(
                "INSERT INTO refresh_tokens (token_hash, family_id, user_id, expire_time_us)"
                " VALUES (?, ?, ?, ?)",
                (token.token_hash, token.family_id, token.user_id, to_micros(token.expire_time)),
            )

        await self._db.write(add)

    async def renew(
        self, token_hash: str, replacement_hash: str, expire_time: datetime, now: datetime
    ) -> tuple[Renewal, str]:
        """See SessionStore.renew."""

        def renew(db: Connection) -> tuple[Renewal, str]:
            row = db.execute(
                "SELECT family_id, user_id, expire_time_us, used FROM refresh_tokens"
                " WHERE token_hash = ?",
                (token_hash,),
            ).fetchone()
            if row is None or row["expire_time_us"] <= to_micros(now):
                return Renewal.INVALID, ""
            if row["used"]:
                db.execute("DELETE FROM refresh_tokens WHERE family_id = ?", (row["family_id"],))
                return Renewal.REUSED, ""
            db.execute("UPDATE refresh_tokens SET used = 1 WHERE token_hash = ?", (token_hash,))
            db.execute(
                "INSERT INTO refresh_tokens (token_hash, family_id, user_id, expire_time_us)"
                " VALUES (?, ?, ?, ?)",
                (replacement_hash, row["family_id"], row["user_id"], to_micros(expire_time)),
            )
            return Renewal.RENEWED, row["user_id"]

        return await self._db.write(renew)
