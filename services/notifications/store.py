"""The notifications service's own database (SQLite, or Postgres: services.common.database):
recorded events and their notifications.

An event and its notification are written in one transaction, so after a crash either both
exist or neither does; the events table's primary key is what makes publishing idempotent
across restarts.

Every notification has a sequence number (`seq`, since the first schema version), increasing in
commit order: writes run one transaction at a time on either backend (SQLite's write lock;
on Postgres the database-wide advisory lock every write takes, services.common.postgres), and
each takes the next number, so a snapshot that holds sequence N holds every one below it.
Cursors (ListNotifications pages, WatchNotifications resumes) and the feed of live
notifications rely on that; nothing deletes notifications, so no number is ever reused (SQLite
gives an INTEGER PRIMARY KEY the highest one plus one).

On Postgres a transaction that stores new notifications also sends NOTIFY on NOTIFY_CHANNEL
with the highest sequence it stored: every replica's feed (services.notifications.feed) learns
at commit that there is something to read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from services.common.clock import from_micros, to_micros
from services.common.database import Database, Migrations, is_postgres
from services.common.listen import notify
from services.common.sql import Connection, Row
from services.notifications.domain import (
    ListQuery,
    NewEvent,
    Notification,
    NotificationPage,
    OrderEvent,
    OrderEventType,
    RecordOutcome,
    StoredNotification,
)

NOTIFY_CHANNEL = "shopmesh_notifications"

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


def _stored(row: Row) -> StoredNotification:
    return StoredNotification(row["seq"], _notification(row))


def _record(
    db: Connection, entry: NewEvent, row: tuple[object, ...]
) -> tuple[RecordOutcome, Notification, int | None]:
    """One entry of record_all, inside its transaction; the sequence it stored, if any."""
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
        return outcome, _notification(first), None
    db.execute(
        "INSERT INTO events (event_id, fingerprint, order_id, user_id, type, reason,"
        " total_currency_code, total_minor_units, occur_time_us)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        row,
    )
    notification = entry.notification
    inserted = db.execute(
        "INSERT INTO notifications (notification_id, event_id, user_id, order_id,"
        " event_type, title, body, create_time_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " RETURNING seq",
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
    ).fetchone()
    return RecordOutcome.CREATED, notification, int(inserted["seq"])


class SqlNotificationStore:
    """NotificationStore on its database, an SQLite file or Postgres (see
    services.common.database for durability)."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._notifies = is_postgres(database.path)

    @classmethod
    async def open(cls, location: Path | str) -> SqlNotificationStore:
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
            last: int | None = None
            for entry, row in zip(entries, rows, strict=True):
                outcome, notification, sequence = _record(db, entry, row)
                outcomes.append((outcome, notification))
                if outcome is RecordOutcome.CONFLICT:
                    raise _Conflict(outcomes)
                last = sequence if sequence is not None else last
            if self._notifies and last is not None:
                # Rolled back with this write's savepoint if a later statement fails it.
                notify(db, NOTIFY_CHANNEL, str(last))
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

    async def after(self, sequence: int, limit: int) -> list[StoredNotification]:
        """Up to `limit` notifications of every user with a sequence above `sequence`, oldest
        first: what the feed hands to watchers next."""

        def read(db: Connection) -> list[StoredNotification]:
            rows = db.execute(
                f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (sequence, limit),
            ).fetchall()
            return [_stored(row) for row in rows]

        return await self._db.read(read)

    async def user_after(self, user_id: str, sequence: int, limit: int) -> list[StoredNotification]:
        """Up to `limit` of `user_id`'s notifications with a sequence above `sequence`, oldest
        first: what a resumed watch replays."""

        def read(db: Connection) -> list[StoredNotification]:
            rows = db.execute(
                f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications"
                " WHERE user_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (user_id, sequence, limit),
            ).fetchall()
            return [_stored(row) for row in rows]

        return await self._db.read(read)

    async def last_sequence(self) -> int:
        """The highest sequence stored, 0 when there is none."""

        def read(db: Connection) -> int:
            row = db.execute("SELECT COALESCE(MAX(seq), 0) AS last FROM notifications").fetchone()
            return int(row["last"])

        return await self._db.read(read)
