"""The payments service's own database (SQLite, or Postgres: services.common.database): payments,
and every charge attempt under its idempotency key with the card it was for (a fingerprint,
brand and last four: never a token)."""

from __future__ import annotations

import functools
from datetime import datetime
from pathlib import Path

from services.common.clock import from_micros, to_micros
from services.common.database import Database, Migrations
from services.common.money import Money
from services.common.sql import Connection, Row
from services.payments.domain import (
    Card,
    ChargeAttempt,
    ChargeRecord,
    Decline,
    Payment,
    PaymentStatus,
    card_of,
)

SCHEMA_V1 = """
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
"""

_ATTEMPTS_WITH_CARDS = """
    -- One row per idempotency key: the request it stood for (its card, never its token) and its
    -- outcome, exactly one of a payment or a decline, so a replay returns the same result
    -- without charging again.
    CREATE TABLE charge_attempts_with_cards (
        idempotency_key TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        currency_code TEXT NOT NULL,
        minor_units INTEGER NOT NULL,
        card_fingerprint TEXT NOT NULL,
        card_brand TEXT NOT NULL,
        card_last4 TEXT NOT NULL,
        payment_id TEXT REFERENCES payments (payment_id),
        decline_code TEXT,
        decline_message TEXT,
        create_time_us INTEGER NOT NULL,
        CHECK ((payment_id IS NULL) != (decline_code IS NULL))
    )
"""
# The same two versions on Postgres (BIGINT for the 64-bit integers SQLite's INTEGER holds).
POSTGRES_SCHEMA_V1 = """
    CREATE TABLE payments (
        payment_id TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        currency_code TEXT NOT NULL,
        minor_units BIGINT NOT NULL CHECK (minor_units > 0),
        status TEXT NOT NULL CHECK (status IN ('CAPTURED', 'REFUNDED')),
        create_time_us BIGINT NOT NULL,
        update_time_us BIGINT NOT NULL
    );
    CREATE INDEX payments_order_id ON payments (order_id);
    CREATE TABLE charge_attempts (
        idempotency_key TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        currency_code TEXT NOT NULL,
        minor_units BIGINT NOT NULL,
        payment_token TEXT NOT NULL,
        payment_id TEXT REFERENCES payments (payment_id),
        decline_code TEXT,
        decline_message TEXT,
        create_time_us BIGINT NOT NULL,
        CHECK ((payment_id IS NULL) != (decline_code IS NULL))
    );
"""
_POSTGRES_ATTEMPTS_WITH_CARDS = """
    CREATE TABLE charge_attempts_with_cards (
        idempotency_key TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        currency_code TEXT NOT NULL,
        minor_units BIGINT NOT NULL,
        card_fingerprint TEXT NOT NULL,
        card_brand TEXT NOT NULL,
        card_last4 TEXT NOT NULL,
        payment_id TEXT REFERENCES payments (payment_id),
        decline_code TEXT,
        decline_message TEXT,
        create_time_us BIGINT NOT NULL,
        CHECK ((payment_id IS NULL) != (decline_code IS NULL))
    )
"""
_ATTEMPT_COLUMNS = (
    "idempotency_key, order_id, currency_code, minor_units, card_fingerprint, card_brand,"
    " card_last4, payment_id, decline_code, decline_message, create_time_us"
)


def _cards_instead_of_tokens(fingerprint_key: bytes, db: Connection) -> None:
    """Version 1 -> 2 on SQLite: every attempt keeps its card instead of its token. The table
    is rebuilt (SQLite's way of changing columns) with secure_delete on, so the old table's
    pages are zeroed as they are freed; the WAL is emptied after the migrations
    (common.database)."""
    db.execute("PRAGMA secure_delete=ON")
    _copy_with_cards(fingerprint_key, db, _ATTEMPTS_WITH_CARDS)
    db.execute("PRAGMA secure_delete=OFF")


def _cards_instead_of_tokens_postgres(fingerprint_key: bytes, db: Connection) -> None:
    """Version 1 -> 2 on Postgres: the table is rebuilt too, rather than its token column
    dropped (which would leave every token in the table's pages): DROP TABLE deletes the old
    table's files when the migration commits. (The server's write-ahead log still holds the
    old rows until its segments are recycled: no Postgres change scrubs that.)"""
    _copy_with_cards(fingerprint_key, db, _POSTGRES_ATTEMPTS_WITH_CARDS)


def _copy_with_cards(fingerprint_key: bytes, db: Connection, create_table: str) -> None:
    """Create the attempts table with cards (`create_table`), copy every attempt into it with
    its token's card, and put it in the old table's place."""
    db.execute(create_table)
    rows = db.execute(
        "SELECT idempotency_key, order_id, currency_code, minor_units, payment_token,"
        " payment_id, decline_code, decline_message, create_time_us FROM charge_attempts"
    ).fetchall()
    for row in rows:
        card = card_of(row["payment_token"], fingerprint_key)
        db.execute(
            f"INSERT INTO charge_attempts_with_cards ({_ATTEMPT_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row["idempotency_key"],
                row["order_id"],
                row["currency_code"],
                row["minor_units"],
                card.fingerprint,
                card.brand,
                card.last4,
                row["payment_id"],
                row["decline_code"],
                row["decline_message"],
                row["create_time_us"],
            ),
        )
    db.execute("DROP TABLE charge_attempts")
    db.execute("ALTER TABLE charge_attempts_with_cards RENAME TO charge_attempts")


def migrations(fingerprint_key: bytes) -> Migrations:
    """Every migration of the payments database, append-only: migrations[i] takes the schema
    from version i to i + 1 (see common.database), on each backend. Old tokens are
    fingerprinted with `fingerprint_key`."""
    # From version 3 on, each payment's owner; older payments have none (NULL), and
    # GetPayment answers nobody for them.
    owners = "ALTER TABLE payments ADD COLUMN owner_user_id TEXT;"
    return Migrations(
        sqlite=[
            SCHEMA_V1,
            # Version 1 kept each attempt's raw payment token; from version 2 on, its card.
            functools.partial(_cards_instead_of_tokens, fingerprint_key),
            owners,
        ],
        postgres=[
            POSTGRES_SCHEMA_V1,
            functools.partial(_cards_instead_of_tokens_postgres, fingerprint_key),
            owners,
        ],
    )


_PAYMENT_COLUMNS = (
    "payment_id, order_id, currency_code, minor_units, status, create_time_us, update_time_us,"
    " owner_user_id"
)


def _payment(row: Row) -> Payment:
    return Payment(
        payment_id=row["payment_id"],
        order_id=row["order_id"],
        amount=Money(row["currency_code"], row["minor_units"]),
        status=PaymentStatus(row["status"]),
        create_time=from_micros(row["create_time_us"]),
        update_time=from_micros(row["update_time_us"]),
        owner_user_id=row["owner_user_id"] or "",
    )


class SqlPaymentStore:
    """PaymentStore on its database (an SQLite file or Postgres); every write is one short
    transaction."""

    def __init__(self, database: Database) -> None:
        self._db = database

    @classmethod
    async def open(cls, location: Path | str, fingerprint_key: bytes) -> SqlPaymentStore:
        """Open (creating and migrating if needed) the database at `location` (a file's path
        or a postgresql:// URL); `fingerprint_key` is the one the domain fingerprints cards
        with."""
        return cls(await Database.open(location, migrations(fingerprint_key)))

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

        def record(db: Connection) -> tuple[bool, ChargeRecord]:
            stored = _attempt(db, attempt.idempotency_key)
            if stored is not None:
                return True, stored
            if payment is not None:
                db.execute(
                    f"INSERT INTO payments ({_PAYMENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        payment.payment_id,
                        payment.order_id,
                        payment.amount.currency_code,
                        payment.amount.minor_units,
                        payment.status.value,
                        to_micros(payment.create_time),
                        to_micros(payment.update_time),
                        payment.owner_user_id or None,
                    ),
                )
            db.execute(
                f"INSERT INTO charge_attempts ({_ATTEMPT_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    attempt.idempotency_key,
                    attempt.order_id,
                    attempt.amount.currency_code,
                    attempt.amount.minor_units,
                    attempt.card.fingerprint,
                    attempt.card.brand,
                    attempt.card.last4,
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

        def refund(db: Connection) -> Payment | None:
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


def _attempt(db: Connection, idempotency_key: str) -> ChargeRecord | None:
    row = db.execute(
        f"SELECT {_ATTEMPT_COLUMNS} FROM charge_attempts WHERE idempotency_key = ?",
        (idempotency_key,),
    ).fetchone()
    if row is None:
        return None
    attempt = ChargeAttempt(
        idempotency_key=idempotency_key,
        order_id=row["order_id"],
        amount=Money(row["currency_code"], row["minor_units"]),
        card=Card(row["card_fingerprint"], row["card_brand"], row["card_last4"]),
    )
    if row["payment_id"] is None:
        return ChargeRecord(attempt, None, Decline(row["decline_code"], row["decline_message"]))
    # The payment as it is now: a replay after a refund reports the refund.
    return ChargeRecord(attempt, _payment_by_id(db, row["payment_id"]), None)


def _payment_by_id(db: Connection, payment_id: str) -> Payment | None:
    row = db.execute(
        f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE payment_id = ?", (payment_id,)
    ).fetchone()
    return None if row is None else _payment(row)
