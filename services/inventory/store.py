"""The inventory's own database (SQLite, or Postgres: services.common.database): products with
their stock counters, and reservations.

The store holds no business rules. Each reservation change is one write transaction that
loads the reservation and products, asks the domain's decision (services.inventory.domain
`Decide`) what to do, and writes that, so concurrent reservations (in this process or in other
processes on the same database) are serialized and can never oversell. CHECK constraints repeat the
invariants (`0 <= held <= on_hand`, `quantity > 0`) so even a bug cannot store negative stock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from services.common.clock import from_micros, to_micros
from services.common.database import Database, Migrations
from services.common.money import Money
from services.common.sql import Connection, Row
from services.inventory.domain import (
    Decide,
    Product,
    Reservation,
    ReservationStatus,
    ReservedItem,
    StockChange,
)

# Both backends' version 1 -> 2: lines reserved before it get their product's price now.
_PRICE_RESERVED_LINES = """
    UPDATE reservation_items SET
        currency_code = (
            SELECT currency_code FROM products WHERE products.sku = reservation_items.sku
        ),
        unit_price_minor = (
            SELECT price_minor_units FROM products WHERE products.sku = reservation_items.sku
        );
"""

SQLITE_MIGRATIONS: tuple[str, ...] = (
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
    # Each reserved line's unit price, as the product cost when it was reserved, so ReserveStock
    # answers with the prices the checkout saga prices its order from (and its replay with the
    # same ones). Lines reserved before this migration get their product's price now: the
    # closest the database knows, and no order reads those (orders priced them itself then).
    """
    ALTER TABLE reservation_items ADD COLUMN currency_code TEXT;
    ALTER TABLE reservation_items ADD COLUMN unit_price_minor INTEGER
        CHECK (unit_price_minor >= 0);
    """
    + _PRICE_RESERVED_LINES,
)

POSTGRES_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE products (
        sku TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        currency_code TEXT NOT NULL,
        price_minor_units BIGINT NOT NULL CHECK (price_minor_units >= 0),
        on_hand BIGINT NOT NULL,
        held BIGINT NOT NULL DEFAULT 0,
        CHECK (held >= 0 AND held <= on_hand)
    );
    CREATE TABLE reservations (
        order_id TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status IN ('HELD', 'COMMITTED', 'RELEASED')),
        create_time_us BIGINT NOT NULL,
        update_time_us BIGINT NOT NULL
    );
    CREATE TABLE reservation_items (
        order_id TEXT NOT NULL REFERENCES reservations (order_id),
        position INTEGER NOT NULL,
        sku TEXT NOT NULL REFERENCES products (sku),
        quantity BIGINT NOT NULL CHECK (quantity > 0),
        PRIMARY KEY (order_id, position),
        UNIQUE (order_id, sku)
    );
    """,
    """
    ALTER TABLE reservation_items ADD COLUMN currency_code TEXT;
    ALTER TABLE reservation_items ADD COLUMN unit_price_minor BIGINT
        CHECK (unit_price_minor >= 0);
    """
    + _PRICE_RESERVED_LINES,
)

MIGRATIONS = Migrations(sqlite=SQLITE_MIGRATIONS, postgres=POSTGRES_MIGRATIONS)

_PRODUCT_COLUMNS = "sku, name, description, currency_code, price_minor_units, on_hand, held"


def _product(row: Row) -> Product:
    return Product(
        sku=row["sku"],
        name=row["name"],
        description=row["description"],
        price=Money(row["currency_code"], row["price_minor_units"]),
        on_hand=row["on_hand"],
        held=row["held"],
    )


class SqlInventoryStore:
    """InventoryStore on its database, an SQLite file or Postgres (see
    services.common.database for durability)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    @classmethod
    async def open(cls, location: Path | str) -> SqlInventoryStore:
        """Open (creating and migrating if needed) the database at `location`: a file's path
        or a postgresql:// URL."""
        return cls(await Database.open(location, MIGRATIONS))

    async def close(self) -> None:
        """Close the database; the store cannot be used afterwards."""
        await self._db.close()

    # --- catalog ---------------------------------------------------------------------------

    async def seed(self, products: Sequence[Product]) -> bool:
        """See InventoryStore.seed: two processes starting together seed once."""

        def seed(db: Connection) -> bool:
            if db.execute("SELECT 1 FROM products LIMIT 1").fetchone() is not None:
                return False
            db.executemany(
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

        return await self._db.write(seed)

    async def get_product(self, sku: str) -> Product | None:
        """See InventoryStore.get_product."""

        def get(db: Connection) -> Product | None:
            row = db.execute(
                f"SELECT {_PRODUCT_COLUMNS} FROM products WHERE sku = ?", (sku,)
            ).fetchone()
            return None if row is None else _product(row)

        return await self._db.read(get)

    async def list_products(self, after_sku: str | None, limit: int) -> list[Product]:
        """See InventoryStore.list_products."""

        def list_page(db: Connection) -> list[Product]:
            # Two statements rather than `? IS NULL OR sku > ?`: Postgres cannot tell the type
            # of a parameter that is only tested for NULL.
            if after_sku is None:
                rows = db.execute(
                    f"SELECT {_PRODUCT_COLUMNS} FROM products ORDER BY sku LIMIT ?", (limit,)
                ).fetchall()
            else:
                rows = db.execute(
                    f"SELECT {_PRODUCT_COLUMNS} FROM products WHERE sku > ? ORDER BY sku LIMIT ?",
                    (after_sku, limit),
                ).fetchall()
            return [_product(row) for row in rows]

        return await self._db.read(list_page)

    # --- reservations ----------------------------------------------------------------------

    async def get_reservation(self, order_id: str) -> Reservation | None:
        """See InventoryStore.get_reservation."""
        return await self._db.read(lambda db: _find_reservation(db, order_id))

    async def change_reservation(
        self, order_id: str, skus: Sequence[str], decide: Decide
    ) -> Reservation:
        """See InventoryStore.change_reservation; nothing is written when `decide` raises."""

        def change(db: Connection) -> Reservation:
            current = _find_reservation(db, order_id)
            decided = decide(current, _products(db, skus))
            reservation = decided.reservation
            if current is None:
                _insert(db, reservation)
            elif reservation != current:
                db.execute(
                    "UPDATE reservations SET status = ?, update_time_us = ? WHERE order_id = ?",
                    (reservation.status.value, to_micros(reservation.update_time), order_id),
                )
            _apply(db, decided.stock)
            return reservation

        return await self._db.write(change)


def _insert(db: Connection, reservation: Reservation) -> None:
    db.execute(
        "INSERT INTO reservations (order_id, status, create_time_us, update_time_us)"
        " VALUES (?, ?, ?, ?)",
        (
            reservation.order_id,
            reservation.status.value,
            to_micros(reservation.create_time),
            to_micros(reservation.update_time),
        ),
    )
    db.executemany(
        "INSERT INTO reservation_items"
        " (order_id, position, sku, quantity, currency_code, unit_price_minor)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (
                reservation.order_id,
                position,
                item.sku,
                item.quantity,
                item.unit_price.currency_code,
                item.unit_price.minor_units,
            )
            for position, item in enumerate(reservation.items)
        ],
    )


def _apply(db: Connection, changes: Iterable[StockChange]) -> None:
    db.executemany(
        "UPDATE products SET on_hand = on_hand + ?, held = held + ? WHERE sku = ?",
        [(c.on_hand_delta, c.held_delta, c.sku) for c in changes],
    )


def _products(db: Connection, skus: Sequence[str]) -> dict[str, Product]:
    if not skus:
        return {}
    placeholders = ", ".join("?" * len(skus))
    rows = db.execute(
        f"SELECT {_PRODUCT_COLUMNS} FROM products WHERE sku IN ({placeholders})", tuple(skus)
    ).fetchall()
    return {row["sku"]: _product(row) for row in rows}


def _find_reservation(db: Connection, order_id: str) -> Reservation | None:
    row = db.execute(
        "SELECT status, create_time_us, update_time_us FROM reservations WHERE order_id = ?",
        (order_id,),
    ).fetchone()
    if row is None:
        return None
    items = db.execute(
        "SELECT sku, quantity, currency_code, unit_price_minor FROM reservation_items"
        " WHERE order_id = ? ORDER BY position",
        (order_id,),
    ).fetchall()
    return Reservation(
        order_id=order_id,
        items=tuple(
            ReservedItem(
                item["sku"],
                item["quantity"],
                Money(item["currency_code"], item["unit_price_minor"]),
            )
            for item in items
        ),
        status=ReservationStatus(row["status"]),
        create_time=from_micros(row["create_time_us"]),
        update_time=from_micros(row["update_time_us"]),
    )
