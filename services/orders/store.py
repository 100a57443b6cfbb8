"""The orders database (SQLite, or Postgres: services.common.database): orders, their items, saga
state, idempotency keys and the transactional outbox of order events.

`save` writes an order, its saga state and (for a final state) its outbox event in one
transaction, so an event never exists without the state change it reports, and a state change
never loses its event.

Leases: on Postgres several orders replicas share one database, and each saga must be driven by
one replica at a time. A store belongs to one replica (`owner`) and every saga row names the
replica driving it and until when (`lease_ttl` from its last write). `create` leases the new
saga to its owner; `claim` takes a saga whose lease is its own or has lapsed; every `save` is
fenced: it renews the owner's lease, or raises LeaseLost (writing nothing) once another replica
has taken the saga over, so a replica that stalled past its lease never overwrites the new
driver's progress. A saga that reaches DONE lets its lease go at once (a cancellation may claim
it from any replica). A replica that dies simply stops renewing: after `lease_ttl` the recovery
sweep of another (`claim_in_flight`) takes its sagas. Leases are read against the replicas' own
clocks: keep `lease_ttl` well above their skew (the default 15 s is; NTP keeps it to
milliseconds), and above the longest single step (a downstream call is cut off after 5 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

from services.common.clock import from_micros, now_micros, to_micros
from services.common.database import Database
from services.common.errors import AlreadyExists
from services.common.money import Money
from services.common.sql import Connection, Row
from services.orders.domain import (
    LeaseLost,
    Order,
    OrderCursor,
    OrderEvent,
    OrderEventType,
    OrderItem,
    OrderStatus,
    SagaState,
    SagaStep,
)
from services.orders.schema import MIGRATIONS

DEFAULT_LEASE_TTL = timedelta(seconds=15)
# The outbox relay's turn (services.common.database.Database.exclusive).
RELAY_TURN = "orders-outbox-relay"


def replica_id() -> str:
    """A name for this process that no other replica has, now or after a restart."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


class SqlOrderStore:
    """OrderRepository and the relay's Outbox on its database (see module docstring), on
    behalf of the replica `owner`."""

    def __init__(
        self,
        database: Database,
        *,
        owner: str | None = None,
        lease_ttl: timedelta = DEFAULT_LEASE_TTL,
        clock: Callable[[], int] = now_micros,
    ) -> None:
        self._db = database
        self.owner = owner or replica_id()
        self._lease_us = int(lease_ttl / timedelta(microseconds=1))
        self._clock = clock

    @classmethod
    async def open(
        cls,
        location: Path | str,
        *,
        owner: str | None = None,
        lease_ttl: timedelta = DEFAULT_LEASE_TTL,
        clock: Callable[[], int] = now_micros,
    ) -> SqlOrderStore:
        """Open (creating and migrating if needed) the database at `location`: a file's path
        or a postgresql:// URL. `clock` (epoch microseconds) times the leases."""
        database = await Database.open(location, MIGRATIONS)
        return cls(database, owner=owner, lease_ttl=lease_ttl, clock=clock)

    async def close(self) -> None:
        """Close the database."""
        await self._db.close()

    # --- orders ------------------------------------------------------------------------

    async def create(
        self, idempotency_key: str, fingerprint: str, order: Order, saga: SagaState
    ) -> Order:
        """Store a new order under `idempotency_key`, its saga leased to this replica, or
        return the order the key names (its lease unchanged).

        Raises AlreadyExists(IDEMPOTENCY_KEY_REUSED) when the key was used with a different
        request (another `fingerprint`).
        """

        def create(db: Connection) -> Order:
            row = db.execute(
                "SELECT order_id, fingerprint FROM idempotency_keys WHERE idempotency_key = ?",
                (idempotency_key,),
            ).fetchone()
            if row is not None:
                if row["fingerprint"] != fingerprint:
                    raise AlreadyExists(
                        "idempotency_key was already used for a different order request",
                        reason="IDEMPOTENCY_KEY_REUSED",
                        metadata={"idempotency_key": idempotency_key, "order_id": row["order_id"]},
                    )
                existing = _find_order(db, row["order_id"])
                if existing is None:
                    raise RuntimeError(f"idempotency key names missing order {row['order_id']}")
                return existing
            db.execute(
                "INSERT INTO orders (order_id, user_id, currency_code, status, total_minor,"
                " rejection_reason, cancel_reason, payment_id, create_time_us, update_time_us)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    order.order_id,
                    order.user_id,
                    order.currency_code,
                    order.status.value,
                    None if order.total is None else order.total.minor_units,
                    order.rejection_reason,
                    order.cancel_reason,
                    order.payment_id,
                    to_micros(order.create_time),
                    to_micros(order.update_time),
                ),
            )
            db.executemany(
                "INSERT INTO order_items (order_id, line, sku, quantity, unit_price_minor)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (order.order_id, line, item.sku, item.quantity, _unit_minor(item))
                    for line, item in enumerate(order.items)
                ],
            )
            db.execute(
                "INSERT INTO saga_state (order_id, step, payment_token, outcome, outcome_reason,"
                " last_error, origin, update_time_us, lease_owner, lease_expires_us)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    order.order_id,
                    *_saga_values(saga),
                    to_micros(order.update_time),
                    self.owner,
                    self._clock() + self._lease_us,
                ),
            )
            db.execute(
                "INSERT INTO idempotency_keys (idempotency_key, order_id, fingerprint,"
                " create_time_us) VALUES (?, ?, ?, ?)",
                (idempotency_key, order.order_id, fingerprint, to_micros(order.create_time)),
            )
            return order

        return await self._db.write(create)

    async def load(self, order_id: str) -> tuple[Order, SagaState] | None:
        """The order and its saga state (one snapshot), or None if there is no such order."""

        def load(db: Connection) -> tuple[Order, SagaState] | None:
            order = _find_order(db, order_id)
            if order is None:
                return None
            row = db.execute(
                "SELECT step, payment_token, outcome, outcome_reason, last_error, origin"
                " FROM saga_state WHERE order_id = ?",
                (order_id,),
            ).fetchone()
            saga = SagaState(
                step=SagaStep(row["step"]),
                payment_token=row["payment_token"],
                outcome=None if row["outcome"] is None else OrderStatus(row["outcome"]),
                outcome_reason=row["outcome_reason"],
                last_error=row["last_error"],
                origin=json.loads(row["origin"]),
            )
            return order, saga

        return await self._db.read(load)

    async def save(
        self,
        order: Order,
        saga: SagaState,
        event: OrderEvent | None = None,
        *,
        stalled: bool = False,
    ) -> None:
        """Store the order's mutable fields, its saga state and `event` in one transaction,
        renewing this replica's lease; LeaseLost, and nothing written, if another replica
        holds the saga now. The lease is let go (this replica stays its owner, so it may take
        it back at once) when the saga is DONE, or `stalled`: nobody drives it until a request
        or a sweep, of any replica, claims it."""

        def save(db: Connection) -> None:
            now = self._clock()
            idle = stalled or saga.step is SagaStep.DONE
            expires = now if idle else now + self._lease_us
            # Fenced first, so a lost lease writes nothing.
            fenced = db.execute(
                "UPDATE saga_state SET step = ?, payment_token = ?, outcome = ?,"
                " outcome_reason = ?, last_error = ?, origin = ?, update_time_us = ?,"
                " lease_expires_us = ? WHERE order_id = ? AND lease_owner = ?",
                (
                    *_saga_values(saga),
                    to_micros(order.update_time),
                    expires,
                    order.order_id,
                    self.owner,
                ),
            ).rowcount
            if fenced != 1:
                if _find_order(db, order.order_id) is None:
                    raise RuntimeError(f"order {order.order_id} does not exist")
                raise LeaseLost(order.order_id)
            updated = db.execute(
                "UPDATE orders SET status = ?, total_minor = ?, rejection_reason = ?,"
                " cancel_reason = ?, payment_id = ?, update_time_us = ? WHERE order_id = ?",
                (
                    order.status.value,
                    None if order.total is None else order.total.minor_units,
                    order.rejection_reason,
                    order.cancel_reason,
                    order.payment_id,
                    to_micros(order.update_time),
                    order.order_id,
                ),
            ).rowcount
            if updated != 1:
                raise RuntimeError(f"order {order.order_id} does not exist")
            db.executemany(
                "UPDATE order_items SET unit_price_minor = ? WHERE order_id = ? AND line = ?",
                [
                    (_unit_minor(item), order.order_id, line)
                    for line, item in enumerate(order.items)
                ],
            )
            if event is not None:
                db.execute(
                    "INSERT INTO outbox (event_id, order_id, user_id, event_type, reason,"
                    " currency_code, total_minor, occur_time_us, origin)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        event.event_id,
                        event.order_id,
                        event.user_id,
                        event.type.value,
                        event.reason,
                        event.total.currency_code,
                        event.total.minor_units,
                        to_micros(event.occur_time),
                        json.dumps(dict(event.origin)),
                    ),
                )

        await self._db.write(save)

    async def claim(self, order_id: str) -> bool:
        """Lease the saga of `order_id` to this replica if its lease is this replica's own or
        has lapsed (or it is DONE); False if another replica holds it, or there is no such
        order."""

        def claim(db: Connection) -> bool:
            now = self._clock()
            # A DONE saga is claimed without holding it: nothing drives it until a
            # cancellation's first write, which the fence settles.
            return (
                db.execute(
                    "UPDATE saga_state SET lease_owner = ?,"
                    " lease_expires_us = CASE WHEN step = 'DONE' THEN ? ELSE ? END"
                    " WHERE order_id = ? AND (lease_owner = ? OR lease_expires_us <= ?)",
                    (self.owner, now, now + self._lease_us, order_id, self.owner, now),
                ).rowcount
                == 1
            )

        return await self._db.write(claim)

    async def claim_in_flight(self, limit: int, after: str | None = None) -> list[str]:
        """Lease to this replica up to `limit` sagas that have not reached DONE and that no
        other replica holds (their lease lapsed, or it is this replica's), oldest order first,
        after order `after` (the last of the previous page); returns their order ids. Nothing
        is written when there is nothing to claim (the sweep of every replica asks often)."""
        page = (
            ""
            if after is None
            else (
                " AND (o.create_time_us, o.order_id) >"
                " (SELECT create_time_us, order_id FROM orders WHERE order_id = ?)"
            )
        )
        sql = (
            "SELECT s.order_id FROM saga_state s JOIN orders o USING (order_id)"
            " WHERE s.step <> 'DONE' AND (s.lease_owner = ? OR s.lease_expires_us <= ?)"
            f"{page} ORDER BY o.create_time_us, o.order_id LIMIT ?"
        )

        def claimable(db: Connection) -> list[str]:
            parameters = (self.owner, self._clock(), *(() if after is None else (after,)), limit)
            return [row["order_id"] for row in db.execute(sql, parameters).fetchall()]

        def claim(db: Connection) -> list[str]:
            # Read again inside the write: another replica may have claimed some meanwhile.
            order_ids = claimable(db)
            expires = self._clock() + self._lease_us
            db.executemany(
                "UPDATE saga_state SET lease_owner = ?, lease_expires_us = ? WHERE order_id = ?",
                [(self.owner, expires, order_id) for order_id in order_ids],
            )
            return order_ids

        if not await self._db.read(claimable):
            return []
        return await self._db.write(claim)

    async def in_flight(self) -> list[str]:
        """Ids of orders whose saga has not reached DONE, oldest first, whoever drives them."""

        def in_flight(db: Connection) -> list[str]:
            rows = db.execute(
                "SELECT s.order_id FROM saga_state s JOIN orders o USING (order_id)"
                " WHERE s.step <> 'DONE' ORDER BY o.create_time_us, o.order_id"
            ).fetchall()
            return [row["order_id"] for row in rows]

        return await self._db.read(in_flight)

    async def list_for_user(
        self, user_id: str, after: OrderCursor | None, limit: int
    ) -> list[Order]:
        """Up to `limit` of a user's orders, newest first, after `after` (one snapshot)."""

        def list_page(db: Connection) -> list[Order]:
            if after is None:
                rows = db.execute(
                    "SELECT * FROM orders WHERE user_id = ?"
                    " ORDER BY create_time_us DESC, order_id DESC LIMIT ?",
                    (user_id, limit),
                ).fetchall()
            else:
                # Row values compare left to right: older, or as old with a smaller id.
                rows = db.execute(
                    "SELECT * FROM orders WHERE user_id = ?"
                    " AND (create_time_us, order_id) < (?, ?)"
                    " ORDER BY create_time_us DESC, order_id DESC LIMIT ?",
                    (user_id, to_micros(after.create_time), after.order_id, limit),
                ).fetchall()
            items = _items(db, [row["order_id"] for row in rows])
            return [_order(row, items.get(row["order_id"], [])) for row in rows]

        return await self._db.read(list_page)

    # --- outbox ------------------------------------------------------------------------

    def relay_turn(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Held by a relay for each pass, so one replica's relay delivers at a time."""
        return self._db.exclusive(RELAY_TURN)

    async def pending_events(self, limit: int) -> list[OrderEvent]:
        """Up to `limit` undelivered events, in the order they were written."""

        def pending(db: Connection) -> list[OrderEvent]:
            rows = db.execute(
                "SELECT * FROM outbox WHERE state = 'PENDING' ORDER BY sequence LIMIT ?",
                (limit,),
            ).fetchall()
            return [
                OrderEvent(
                    event_id=row["event_id"],
                    order_id=row["order_id"],
                    user_id=row["user_id"],
                    type=OrderEventType(row["event_type"]),
                    reason=row["reason"],
                    total=Money(row["currency_code"], row["total_minor"]),
                    occur_time=from_micros(row["occur_time_us"]),
                    origin=json.loads(row["origin"]),
                )
                for row in rows
            ]

        return await self._db.read(pending)

    async def mark_delivered(self, event_ids: list[str]) -> None:
        """Record that the consumer acknowledged `event_ids`, in one transaction."""
        delivered_us = now_micros()

        def mark(db: Connection) -> None:
            db.executemany(
                "UPDATE outbox SET state = 'DELIVERED', attempts = attempts + 1,"
                " delivered_time_us = ? WHERE event_id = ?",
                [(delivered_us, event_id) for event_id in event_ids],
            )

        await self._db.write(mark)

    async def record_failure(self, event_ids: list[str], error: str, *, give_up: bool) -> None:
        """Record a failed delivery of `event_ids`; `give_up` parks them as FAILED (a consumer
        that refuses them for good) so they stop blocking the events behind them."""

        def record(db: Connection) -> None:
            db.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?,"
                " state = CASE WHEN ? THEN 'FAILED' ELSE state END WHERE event_id = ?",
                [(error, give_up, event_id) for event_id in event_ids],
            )

        await self._db.write(record)


def _find_order(db: Connection, order_id: str) -> Order | None:
    row = db.execute("SELECT * FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    if row is None:
        return None
    return _order(row, _items(db, [order_id]).get(order_id, []))


def _items(db: Connection, order_ids: Sequence[str]) -> dict[str, list[Row]]:
    if not order_ids:
        return {}
    placeholders = ", ".join("?" * len(order_ids))
    rows = db.execute(
        f"SELECT * FROM order_items WHERE order_id IN ({placeholders}) ORDER BY line",
        tuple(order_ids),
    ).fetchall()
    grouped: dict[str, list[Row]] = {}
    for row in rows:
        grouped.setdefault(row["order_id"], []).append(row)
    return grouped


def _unit_minor(item: OrderItem) -> int | None:
    return None if item.unit_price is None else item.unit_price.minor_units


def _saga_values(saga: SagaState) -> tuple[str, str, str | None, str, str, str]:
    return (
        saga.step.value,
        saga.payment_token,
        None if saga.outcome is None else saga.outcome.value,
        saga.outcome_reason,
        saga.last_error,
        json.dumps(dict(saga.origin)),
    )


def _order(row: Row, item_rows: list[Row]) -> Order:
    currency = row["currency_code"]
    items = tuple(
        OrderItem(
            sku=item["sku"],
            quantity=item["quantity"],
            unit_price=None
            if item["unit_price_minor"] is None
            else Money(currency, item["unit_price_minor"]),
        )
        for item in item_rows
    )
    return Order(
        order_id=row["order_id"],
        user_id=row["user_id"],
        items=items,
        currency_code=currency,
        status=OrderStatus(row["status"]),
        create_time=from_micros(row["create_time_us"]),
        update_time=from_micros(row["update_time_us"]),
        total=None if row["total_minor"] is None else Money(currency, row["total_minor"]),
        rejection_reason=row["rejection_reason"],
        cancel_reason=row["cancel_reason"],
        payment_id=row["payment_id"],
    )
