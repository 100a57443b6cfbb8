"""The inventory's own SQLite database: products with their stock counters, and reservations.

Every state change runs in one BEGIN IMMEDIATE transaction that reads the counters, checks them
with the domain rules and writes them, so concurrent reservations (threads here, or other
processes on the same file) are serialized and can never oversell. CHECK constraints repeat the
invariants (`0 <= held <= on_hand`, `quantity > 0`) so even a bug cannot store negative stock.

Methods are synchronous and thread-safe: one lock serializes use of the single connection, so
the servicer may run them in worker threads without blocking the event loop.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path

from services.common.clock import from_micros, to_micros, utc_now
from services.common.money import Money
from services.common.sqlite import open_database, transaction
from services.inventory import domain
from services.inventory.domain import (
    Product,
    Reservation,
    ReservationItem,
    ReservationStatus,
    StockChange,
)

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE products (
        sku TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        currency_code TEXT NOT NULL,
        price_minor_units INTEGER NOT NULL CHECK (price_minor_units >= 0),
        -- Physical units not yet sold, and the part of them held by HELD reservations.
        on_hand INTEGER NOT NULL,
        held INTEGER NOT NULL DEFAULT 0,
        CHECK (held >= 0 AND held <= on_hand)
    ) STRICT;
    CREATE TABLE reservations (
        order_id TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status IN ('HELD', 'COMMITTED', 'RELEASED')),
        -- UTC epoch microseconds.
        create_time_us INTEGER NOT NULL,
        update_time_us INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE reservation_items (
        order_id TEXT NOT NULL REFERENCES reservations (order_id),
        -- Position in the request, so items come back in the order they were asked for.
        position INTEGER NOT NULL,
        sku TEXT NOT NULL REFERENCES products (sku),
        quantity INTEGER NOT NULL CHECK (quantity > 0),
        PRIMARY KEY (order_id, position),
        UNIQUE (order_id, sku)
    ) STRICT;
    """,
)

_PRODUCT_COLUMNS = "sku, name, description, currency_code, price_minor_units, on_hand, held"


def _product(row: sqlite3.Row) -> Product:
    return Product(
        sku=row["sku"],
        name=row["name"],
        description=row["description"],
        price=Money(row["currency_code"], row["price_minor_units"]),
        on_hand=row["on_hand"],
        held=row["held"],
    )


class InventoryStore:
    """Products, stock and reservations in one SQLite file."""

    def __init__(
        self, connection: sqlite3.Connection, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._db = connection
        self._clock = clock
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path | str, clock: Callable[[], datetime] = utc_now) -> InventoryStore:
        """Open (creating and migrating if needed) the database at `path`."""
        return cls(open_database(path, MIGRATIONS), clock)

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        with self._lock:
            self._db.close()

    # --- catalog ---------------------------------------------------------------------------

    def seed(self, products: Iterable[Product]) -> bool:
        """Insert `products` if the catalog is empty; returns whether it did.

        Checked inside the write transaction, so two processes starting together seed once.
        """
        with self._lock, transaction(self._db):
            if self._db.execute("SELECT 1 FROM products LIMIT 1").fetchone() is not None:
                return False
            self._db.executemany(
                f"INSERT INTO products ({_PRODUCT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        p.sku,
                        p.name,
                        p.description,
                        p.price.currency_code,
                        p.price.minor_units,
                        p.on_hand,
                        p.held,
                    )
                    for p in products
                ],
            )
            return True

    def get_product(self, sku: str) -> Product:
        """The product with `sku`; raises NotFound PRODUCT_NOT_FOUND."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_PRODUCT_COLUMNS} FROM products WHERE sku = ?", (sku,)
            ).fetchone()
        if row is None:
            raise domain.product_not_found([sku])
        return _product(row)

    def list_products(self, offset: int, limit: int) -> tuple[list[Product], bool]:
        """Up to `limit` products ordered by SKU starting at `offset`, and whether more follow."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_PRODUCT_COLUMNS} FROM products ORDER BY sku LIMIT ? OFFSET ?",
                (limit + 1, offset),
            ).fetchall()
        return [_product(row) for row in rows[:limit]], len(rows) > limit

    # --- reservations ----------------------------------------------------------------------

    def reserve(self, order_id: str, items: Sequence[ReservationItem]) -> Reservation:
        """Hold `items` for `order_id`, all or nothing; a repeat returns the first reservation.

        Raises AlreadyExists (IDEMPOTENCY_KEY_REUSED), NotFound (PRODUCT_NOT_FOUND) or
        FailedPrecondition (INSUFFICIENT_STOCK); nothing is written when it raises.
        """
        with self._lock, transaction(self._db):
            existing = self._find_reservation(order_id)
            if existing is not None:
                return domain.replay(existing, items)
            domain.check_stock(items, self._products([item.sku for item in items]))
            micros = to_micros(self._clock())
            self._db.execute(
                "INSERT INTO reservations (order_id, status, create_time_us, update_time_us)"
                " VALUES (?, ?, ?, ?)",
                (order_id, ReservationStatus.HELD.value, micros, micros),
            )
            self._db.executemany(
                "INSERT INTO reservation_items (order_id, position, sku, quantity)"
                " VALUES (?, ?, ?, ?)",
                [(order_id, pos, item.sku, item.quantity) for pos, item in enumerate(items)],
            )
            self._apply(domain.hold(items))
            return self._reservation(order_id)

    def commit(self, order_id: str) -> Reservation:
        """Mark the order's reservation sold; see domain.commit for the state rules."""
        return self._transition(order_id, domain.commit)

    def release(self, order_id: str) -> Reservation:
        """Give the order's reserved units back; see domain.release for the state rules."""
        return self._transition(order_id, domain.release)

    def get_reservation(self, order_id: str) -> Reservation:
        """The order's reservation; raises NotFound RESERVATION_NOT_FOUND."""
        with self._lock:
            return self._reservation(order_id)

    # --- helpers (called with the lock held) -------------------------------------------------

    def _transition(
        self,
        order_id: str,
        rule: Callable[[Reservation], tuple[ReservationStatus, list[StockChange]]],
    ) -> Reservation:
        with self._lock, transaction(self._db):
            current = self._reservation(order_id)
            status, changes = rule(current)
            if status is current.status:
                return current
            self._apply(changes)
            self._db.execute(
                "UPDATE reservations SET status = ?, update_time_us = ? WHERE order_id = ?",
                (status.value, to_micros(self._clock()), order_id),
            )
            return self._reservation(order_id)

    def _apply(self, changes: Iterable[StockChange]) -> None:
        self._db.executemany(
            "UPDATE products SET on_hand = on_hand + ?, held = held + ? WHERE sku = ?",
            [(c.on_hand_delta, c.held_delta, c.sku) for c in changes],
        )

    def _products(self, skus: Sequence[str]) -> dict[str, Product]:
        placeholders = ", ".join("?" * len(skus))
        rows = self._db.execute(
            f"SELECT {_PRODUCT_COLUMNS} FROM products WHERE sku IN ({placeholders})", skus
        ).fetchall()
        return {row["sku"]: _product(row) for row in rows}

    def _reservation(self, order_id: str) -> Reservation:
        reservation = self._find_reservation(order_id)
        if reservation is None:
            raise domain.reservation_not_found(order_id)
        return reservation

    def _find_reservation(self, order_id: str) -> Reservation | None:
        row = self._db.execute(
            "SELECT status, create_time_us, update_time_us FROM reservations WHERE order_id = ?",
            (order_id,),
        ).fetchone()
        if row is None:
            return None
        items = self._db.execute(
            "SELECT sku, quantity FROM reservation_items WHERE order_id = ? ORDER BY position",
            (order_id,),
        ).fetchall()
        return Reservation(
            order_id=order_id,
            items=tuple(ReservationItem(item["sku"], item["quantity"]) for item in items),
            status=ReservationStatus(row["status"]),
            create_time=from_micros(row["create_time_us"]),
            update_time=from_micros(row["update_time_us"]),
        )
