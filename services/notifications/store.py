"""The notifications service's own database (SQLite, or Postgres: services.common.database):
recorded events and their notifications.

An event and its notification are written in one transaction, so after a crash either both
exist or neither does; the events table's primary key is what makes publishing idempotent
across restarts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from services.common.clock import from_micros, to_micros
from services.common.database import Database, Migrations
from services.common.sql import Connection, Row
from services.notifications.domain import (
    ListQuery,
    NewEvent,
    Notification,
    NotificationPage,
    OrderEvent,
    OrderEventType,
    RecordOutcome,
)

SQLITE_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE events (
        event_id TEXT PRIMARY KEY,
        -- Digest of every field below (domain.event_fingerprint): a re-published event is a
        -- duplicate when it matches, a reused id when it does not.
        fingerprint TEXT NOT NULL,
        order_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        type TEXT NOT NULL,
        reason TEXT NOT NULL,
        -- Both NULL when the event carried no total.
        total_currency_code TEXT,
        total_minor_units INTEGER,
        occur_time_us INTEGER NOT NULL
    );
    CREATE TABLE notifications (
        -- Insertion order: the stable cursor ListNotifications pages by (newest first).
        seq INTEGER PRIMARY KEY,
        notification_id TEXT NOT NULL UNIQUE,
        event_id TEXT NOT NULL UNIQUE REFERENCES events (event_id),
        user_id TEXT NOT NULL,
        order_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        title TEXT NOT NULL,
        body TEXT NOT NULL,
        create_time_us INTEGER NOT NULL
    );
    CREATE INDEX notifications_by_user ON notifications (user_id, seq);
    """,
)

POSTGRES_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE events (
        event_id TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        order_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        type TEXT NOT NULL,
        reason TEXT NOT NULL,
        total_currency_code TEXT,
        total_minor_units BIGINT,
        occur_time_us BIGINT NOT NULL
    );
    CREATE TABLE notifications (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        notification_id TEXT NOT NULL UNIQUE,
        event_id TEXT NOT NULL UNIQUE REFERENCES events (event_id),
        user_id TEXT NOT NULL,
        order_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        title TEXT NOT NULL,
        body TEXT NOT NULL,
        create_time_us BIGINT NOT NULL
    );
    CREATE INDEX notifications_by_user ON notifications (user_id, seq);
    """,
)

MIGRATIONS = Migrations(sqlite=SQLITE_MIGRATIONS, postgres=POSTGRES_MIGRATIONS)

_NOTIFICATION_COLUMNS = (
    "seq, notification_id, event_id, user_id, order_id, event_type, title, body, create_time_us"
)


def _notification(row: Row) -> Notification:
    return Notification(
        notification_id=row["notification_id"],
        user_id=row["user_id"],
        event_id=row["event_id"],
        order_id=row["order_id"],
        event_type=OrderEventType(row["event_type"]),
        title=row["title"],
        body=row["body"],
        create_time=from_micros(row["create_time_us"]),
    )


class _Conflict(Exception):
    """Raised inside a transaction to roll it back: an entry conflicts (see record_all)."""

    def __init__(self, outcomes: list[tuple[RecordOutcome, Notification]]) -> None:
        super().__init__("event id reused with different content")
        self.outcomes = outcomes


def _event_row(entry: NewEvent) -> tuple[object, ...]:
    """The events table's values for a validated entry."""
    event = entry.event
    if not isinstance(event.occur_time, datetime):
        raise ValueError("only a validated event can be recorded")
    total = event.total
    return (
        event.event_id,
        entry.fingerprint,
        event.order_id,
        event.user_id,
        event.type.value,
        event.reason,
        None if total is None else total.currency_code,
        None if total is None else total.minor_units,
        to_micros(event.occur_time),
    )


def _record(
    db: Connection, entry: NewEvent, row: tuple[object, ...]
) -> tuple[RecordOutcome, Notification]:
    """One entry of record_all, inside its transaction."""
    stored = db.execute(
        "SELECT fingerprint FROM events WHERE event_id = ?", (entry.event.event_id,)
    ).fetchone()
    if stored is not None:
        outcome = (
            RecordOutcome.DUPLICATE
            if stored["fingerprint"] == entry.fingerprint
            else RecordOutcome.CONFLICT
        )
        first = db.execute(
            f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications WHERE event_id = ?",
            (entry.event.event_id,),
        ).fetchone()
        return outcome, _notification(first)
    db.execute(
        "INSERT INTO events (event_id, fingerprint, order_id, user_id, type, reason,"
        " total_currency_code, total_minor_units, occur_time_us)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        row,
    )
    notification = entry.notification
    db.execute(
        "INSERT INTO notifications (notification_id, event_id, user_id, order_id,"
        " event_type, title, body, create_time_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            notification.notification_id,
            notification.event_id,
            notification.user_id,
            notification.order_id,
            notification.event_type.value,
            notification.title,
            notification.body,
            to_micros(notification.create_time),
        ),
    )
    return RecordOutcome.CREATED, notification


class SqliteNotificationStore:
    """NotificationStore on its database, an SQLite file or Postgres (see
    services.common.database for durability)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    @classmethod
    async def open(cls, location: Path | str) -> SqliteNotificationStore:
        """Open (creating or migrating) the database at `location`: a file's path or a
        postgresql:// URL."""
        return cls(await Database.open(location, MIGRATIONS))

    async def close(self) -> None:
        """Close the database."""
        await self._db.close()

    async def record(
        self, event: OrderEvent, fingerprint: str, notification: Notification
    ) -> tuple[RecordOutcome, Notification]:
        """`record_all` of one event: its outcome and stored notification."""
        outcomes = await self.record_all([NewEvent(event, fingerprint, notification)])
        return outcomes[0]

    async def record_all(
        self, entries: Sequence[NewEvent]
    ) -> list[tuple[RecordOutcome, Notification]]:
        """Store each new event with its notification, in order, in one transaction (one
        fsync for the lot), or nothing when an entry is a CONFLICT.

        Returns each entry's outcome: CREATED and its notification, or DUPLICATE / CONFLICT (as
        its fingerprint matches the stored one or not) and the notification recorded the
        first time (an id given twice is recorded by its first entry). A CONFLICT ends the
        list and rolls the transaction back.
        """
        rows = [_event_row(entry) for entry in entries]

        def record(db: Connection) -> list[tuple[RecordOutcome, Notification]]:
            outcomes = []
            for entry, row in zip(entries, rows, strict=True):
                outcome = _record(db, entry, row)
                outcomes.append(outcome)
                if outcome[0] is RecordOutcome.CONFLICT:
                    raise _Conflict(outcomes)
            return outcomes

        try:
            return await self._db.write(record)
        except _Conflict as conflict:
            return conflict.outcomes

    async def list_for_user(self, query: ListQuery) -> NotificationPage:
        """One page of `query.user_id`'s notifications, newest first, before `query.before`."""

        def list_page(db: Connection) -> list[Row]:
            # One row more than the page tells whether another page follows.
            rows: list[Row] = db.execute(
                f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications"
                " WHERE user_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                (
                    query.user_id,
                    query.before if query.before is not None else 2**63 - 1,
                    query.page_size + 1,
                ),
            ).fetchall()
            return rows

        rows = await self._db.read(list_page)
        page = rows[: query.page_size]
        more = len(rows) > query.page_size
        return NotificationPage(
            notifications=tuple(_notification(row) for row in page),
            next_cursor=page[-1]["seq"] if more else None,
        )
