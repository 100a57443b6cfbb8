"""The payments service's own SQLite database: payments, and every charge attempt under its
idempotency key."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

from services.common.clock import from_micros, to_micros
from services.common.database import Database
from services.common.money import Money
from services.payments.domain import ChargeAttempt, ChargeRecord, Decline, Payment, PaymentStatus

# Append-only: migrations[i] takes the schema from version i to i + 1 (see common.database).
MIGRATIONS: list[str] = [
    """
    CREATE TABLE payments (
        payment_id TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        currency_code TEXT NOT NULL,
        minor_units INTEGER NOT NULL CHECK (minor_units > 0),
        status TEXT NOT NULL CHECK (status IN ('CAPTURED', 'REFUNDED')),
        create_time_us INTEGER NOT NULL,
        update_time_us INTEGER NOT NULL
    );
    CREATE INDEX payments_order_id ON payments (order_id);
    -- One row per idempotency key: the request it stood for and its outcome, exactly one of a
    -- payment or a decline, so a replay returns the same result without charging again.
    CREATE TABLE charge_attempts (
        idempotency_key TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        currency_code TEXT NOT NULL,
        minor_units INTEGER NOT NULL,
        payment_token TEXT NOT NULL,
        payment_id TEXT REFERENCES payments (payment_id),
        decline_code TEXT,
        decline_message TEXT,
        create_time_us INTEGER NOT NULL,
        CHECK ((payment_id IS NULL) != (decline_code IS NULL))
    );
    """,
]

_PAYMENT_COLUMNS = (
    "payment_id, order_id, currency_code, minor_units, status, create_time_us, update_time_us"
)


def _payment(row: sqlite3.Row) -> Payment:
    return Payment(
        payment_id=row["payment_id"],
        order_id=row["order_id"],
        amount=Money(row["currency_code"], row["minor_units"]),
        status=PaymentStatus(row["status"]),
        create_time=from_micros(row["create_time_us"]),
        update_time=from_micros(row["update_time_us"]),
    )


class SqlitePaymentStore:
    """PaymentStore on a SQLite file; every write is one short transaction."""

    def __init__(self, database: Database) -> None:
        self._db = database

    @classmethod
    async def open(cls, path: Path | str) -> SqlitePaymentStore:
        """Open (creating and migrating if needed) the database at `path`."""
        return cls(await Database.open(path, MIGRATIONS))

    async def close(self) -> None:
        """Close the database."""
        await self._db.close()

    async def record_charge(
        self,
        attempt: ChargeAttempt,
        payment: Payment | None,
        decline: Decline | None,
        now: datetime,
    ) -> tuple[bool, ChargeRecord]:
        """See PaymentStore.record_charge. The payment and its idempotency record commit
        together, so a crash can never leave a charge without its key (or the reverse)."""

        def record(db: sqlite3.Connection) -> tuple[bool, ChargeRecord]:
            stored = _attempt(db, attempt.idempotency_key)
            if stored is not None:
                return True, stored
            if payment is not None:
                db.execute(
                    f"INSERT INTO payments ({_PAYMENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        payment.payment_id,
                        payment.order_id,
                        payment.amount.currency_code,
                        payment.amount.minor_units,
                        payment.status.value,
                        to_micros(payment.create_time),
                        to_micros(payment.update_time),
                    ),
                )
            db.execute(
                "INSERT INTO charge_attempts (idempotency_key, order_id, currency_code,"
                " minor_units, payment_token, payment_id, decline_code, decline_message,"
                " create_time_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    attempt.idempotency_key,
                    attempt.order_id,
                    attempt.amount.currency_code,
                    attempt.amount.minor_units,
                    attempt.payment_token,
                    None if payment is None else payment.payment_id,
                    None if decline is None else decline.code,
                    None if decline is None else decline.message,
                    to_micros(now),
                ),
            )
            return False, ChargeRecord(attempt, payment, decline)

        return await self._db.write(record)

    async def get(self, payment_id: str) -> Payment | None:
        """See PaymentStore.get."""
        return await self._db.read(lambda db: _payment_by_id(db, payment_id))

    async def refund(self, payment_id: str, now: datetime) -> Payment | None:
        """See PaymentStore.refund."""

        def refund(db: sqlite3.Connection) -> Payment | None:
            db.execute(
                "UPDATE payments SET status = ?, update_time_us = ?"
                " WHERE payment_id = ? AND status = ?",
                (
                    PaymentStatus.REFUNDED.value,
                    to_micros(now),
                    payment_id,
                    PaymentStatus.CAPTURED.value,
                ),
            )
            return _payment_by_id(db, payment_id)

        return await self._db.write(refund)


def _attempt(db: sqlite3.Connection, idempotency_key: str) -> ChargeRecord | None:
    row = db.execute(
        "SELECT order_id, currency_code, minor_units, payment_token, payment_id,"
        " decline_code, decline_message FROM charge_attempts WHERE idempotency_key = ?",
        (idempotency_key,),
    ).fetchone()
    if row is None:
        return None
    attempt = ChargeAttempt(
        idempotency_key=idempotency_key,
        order_id=row["order_id"],
        amount=Money(row["currency_code"], row["minor_units"]),
        payment_token=row["payment_token"],
    )
    if row["payment_id"] is None:
        return ChargeRecord(attempt, None, Decline(row["decline_code"], row["decline_message"]))
    # The payment as it is now: a replay after a refund reports the refund.
    return ChargeRecord(attempt, _payment_by_id(db, row["payment_id"]), None)


def _payment_by_id(db: sqlite3.Connection, payment_id: str) -> Payment | None:
    row = db.execute(
        f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE payment_id = ?", (payment_id,)
    ).fetchone()
    return None if row is None else _payment(row)
