"""Inventory domain: products, stock and reservations, their rules, and `Inventory`, the
service's behaviour over an async InventoryStore.

Stock model. A product has `on_hand` units (physical stock not yet sold) and `held` units (the
sum of its HELD reservations); `available = on_hand - held`. Reserving raises `held`;
committing a reservation sells the units (both `on_hand` and `held` drop); releasing a HELD
reservation drops the hold; releasing a COMMITTED one (a cancelled, paid order) puts the units
back on hand. The store enforces `0 <= held <= on_hand` with a CHECK constraint, so no bug or
race can ever show negative stock.

No overselling, across processes too: every reservation change is decided inside the store's
write transaction (the store loads the reservation and products there, calls the decision
`Inventory` passes in, and writes what it returns), so the check and the hold are one atomic
step against the current counters.

Duplicate SKUs in one request are rejected rather than merged: a caller that sends the same
SKU twice most likely has a bug, and merging would make the reservation differ from the request.

Prices. A reservation records each product's price as it was when the stock was reserved, read
in the same transaction as the stock it holds, so the checkout saga prices an order from its
reservation instead of asking for every product first, and a repeated ReserveStock answers
with the prices of the first call (its idempotent answer does not change under a price change).

Nothing here imports grpc; `servicer.py` converts to and from the contract.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from services.common.clock import utc_now
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    PreconditionViolation,
    Validator,
)
from services.common.money import Money
from services.common.paging import Cursors

# Bounds that keep one request (and one transaction) small.
MAX_ITEMS = 100
MAX_ID_LENGTH = 128
# ListProducts pages by the SKU of the last product served.
CURSORS = Cursors("ListProducts", (str,))


class ReservationStatus(enum.Enum):
    """Where a reservation is in its life cycle; the values are what the store writes."""

    HELD = "HELD"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"


@dataclass(frozen=True)
class Product:
    """A catalog entry with its stock counters."""

    sku: str
    name: str
    description: str
    price: Money
    on_hand: int
    held: int = 0

    @property
    def available(self) -> int:
        """Units that can still be reserved."""
        return self.on_hand - self.held


@dataclass(frozen=True)
class ReservationItem:
    """A quantity of one product, as a ReserveStock request asks for it."""

    sku: str
    quantity: int


@dataclass(frozen=True)
class ReservedItem:
    """A line of a stored reservation: a quantity of one product and the price of one unit
    when it was reserved."""

    sku: str
    quantity: int
    unit_price: Money


@dataclass(frozen=True)
class Reservation:
    """The stock held (or once held) for one order; items keep the order they were requested in."""

    order_id: str
    items: tuple[ReservedItem, ...]
    status: ReservationStatus
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True)
class StockChange:
    """How one product's counters move when a reservation changes state."""

    sku: str
    on_hand_delta: int
    held_delta: int


@dataclass(frozen=True)
class ReservationChange:
    """What one write transaction applies, as the domain decided it: the order's reservation
    as it is to be stored (new, with a new status, or unchanged) and how product counters move.
    The items of a stored reservation never change."""

    reservation: Reservation
    stock: tuple[StockChange, ...] = ()


# Decides, inside the store's write transaction, what a request does to an order's reservation,
# given the reservation as stored (None if the order has none) and the products the request
# names. Raising a DomainError writes nothing. Runs on the database's writer thread: it must be
# quick and must not touch the event loop.
Decide = Callable[[Reservation | None, Mapping[str, Product]], ReservationChange]


@dataclass(frozen=True)
class ProductPage:
    """One page of the catalog by SKU, and the token of the next page ("" on the last)."""

    products: tuple[Product, ...]
    next_page_token: str


class InventoryStore(Protocol):
    """Persistence the inventory domain needs (implemented by services.inventory.store)."""

    async def seed(self, products: Sequence[Product]) -> bool:
        """Insert `products` if the catalog is empty (checked in the same write transaction);
        returns whether it did."""
        ...

    async def get_product(self, sku: str) -> Product | None:
        """The product with `sku`, or None."""
        ...

    async def list_products(self, after_sku: str | None, limit: int) -> list[Product]:
        """Up to `limit` products ordered by SKU, after `after_sku` (None: from the first)."""
        ...

    async def get_reservation(self, order_id: str) -> Reservation | None:
        """The order's reservation, or None."""
        ...

    async def change_reservation(
        self, order_id: str, skus: Sequence[str], decide: Decide
    ) -> Reservation:
        """In one write transaction: load the order's reservation and the products `skus`
        name, call `decide`, store what it returns; the stored reservation."""
        ...


# --- validation --------------------------------------------------------------------------------


def _check_id(validator: Validator, value: str, field_path: str) -> None:
    if validator.require(bool(value.strip()), field_path, "must not be empty"):
        validator.require(
            len(value) <= MAX_ID_LENGTH, field_path, f"must be at most {MAX_ID_LENGTH} characters"
        )


def validate_sku(sku: str) -> None:
    """Raise InvalidArgument unless `sku` can name a product (GetProduct)."""
    validator = Validator()
    _check_id(validator, sku, "sku")
    validator.raise_if_invalid("invalid GetProduct request")


def validate_order_id(order_id: str, rpc: str) -> None:
    """Raise InvalidArgument unless `order_id` can name a reservation (Commit/Release/Get)."""
    validator = Validator()
    _check_id(validator, order_id, "order_id")
    validator.raise_if_invalid(f"invalid {rpc} request")


def validate_reservation(order_id: str, items: Sequence[ReservationItem]) -> None:
    """Raise InvalidArgument listing every problem of a ReserveStock request."""
    validator = Validator()
    _check_id(validator, order_id, "order_id")
    if validator.require(bool(items), "items", "must contain at least one item"):
        validator.require(
            len(items) <= MAX_ITEMS, "items", f"must contain at most {MAX_ITEMS} items"
        )
    first_index: dict[str, int] = {}
    for index, item in enumerate(items):
        sku_path = f"items[{index}].sku"
        _check_id(validator, item.sku, sku_path)
        if item.sku in first_index:
            validator.require(
                False, sku_path, f"duplicates items[{first_index[item.sku]}].sku; merge them"
            )
        else:
            first_index[item.sku] = index
        validator.require(item.quantity > 0, f"items[{index}].quantity", "must be > 0")
    validator.raise_if_invalid("invalid ReserveStock request")


# --- errors --------------------------------------------------------------------------------------


def product_not_found(skus: Iterable[str]) -> NotFound:
    """The error for SKUs that name no product."""
    listed = ",".join(skus)
    return NotFound(
        f"no product with SKU {listed}", reason="PRODUCT_NOT_FOUND", metadata={"skus": listed}
    )


def reservation_not_found(order_id: str) -> NotFound:
    """The error for an order that has no reservation."""
    return NotFound(
        f"order {order_id} has no reservation",
        reason="RESERVATION_NOT_FOUND",
        metadata={"order_id": order_id},
    )


# --- rules ---------------------------------------------------------------------------------------


def same_items(reserved: Iterable[ReservedItem], requested: Iterable[ReservationItem]) -> bool:
    """True when a request asks for the quantities a reservation holds, whatever their order
    (its prices are the reservation's own: a request has none)."""
    return sorted((i.sku, i.quantity) for i in reserved) == sorted(
        (i.sku, i.quantity) for i in requested
    )


def replay(existing: Reservation, items: Sequence[ReservationItem]) -> Reservation:
    """The answer to a repeated ReserveStock for an order that already has a reservation: the
    reservation itself, or ALREADY_EXISTS if the order id is reused for different items."""
    if not same_items(existing.items, items):
        raise AlreadyExists(
            f"order {existing.order_id} already reserved different items",
            reason="IDEMPOTENCY_KEY_REUSED",
            metadata={"order_id": existing.order_id},
        )
    return existing


def check_stock(items: Sequence[ReservationItem], products: Mapping[str, Product]) -> None:
    """Raise unless every item names a product with enough available units.

    Unknown SKUs are reported first (NOT_FOUND), since no stock level makes them reservable;
    otherwise every short item is listed (FAILED_PRECONDITION INSUFFICIENT_STOCK).
    """
    unknown = [item.sku for item in items if item.sku not in products]
    if unknown:
        raise product_not_found(unknown)
    short = [item for item in items if item.quantity > products[item.sku].available]
    if short:
        skus = ",".join(item.sku for item in short)
        raise FailedPrecondition(
            f"not enough stock for {skus}",
            reason="INSUFFICIENT_STOCK",
            metadata={"skus": skus},
            violations=[
                PreconditionViolation(
                    type="STOCK",
                    subject=f"sku:{item.sku}",
                    description=(
                        f"requested {item.quantity}, available {products[item.sku].available}"
                    ),
                )
                for item in short
            ],
        )


def priced(
    items: Iterable[ReservationItem], products: Mapping[str, Product]
) -> tuple[ReservedItem, ...]:
    """The lines of a new reservation of `items` (all of them known products), each at its
    product's current price."""
    return tuple(ReservedItem(i.sku, i.quantity, products[i.sku].price) for i in items)


def hold(items: Iterable[ReservationItem]) -> list[StockChange]:
    """The counter changes of a new reservation."""
    return [StockChange(item.sku, 0, item.quantity) for item in items]


def commit(reservation: Reservation) -> tuple[ReservationStatus, list[StockChange]]:
    """The status after CommitReservation and the counter changes it makes.

    HELD -> COMMITTED sells the held units; COMMITTED stays as it is (a retry);
    RELEASED cannot be committed because its units may already be sold to someone else.
    """
    match reservation.status:
        case ReservationStatus.HELD:
            changes = [StockChange(i.sku, -i.quantity, -i.quantity) for i in reservation.items]
            return ReservationStatus.COMMITTED, changes
        case ReservationStatus.COMMITTED:
            return ReservationStatus.COMMITTED, []
        case ReservationStatus.RELEASED:
            raise FailedPrecondition(
                f"the reservation of order {reservation.order_id} was released",
                reason="RESERVATION_RELEASED",
                metadata={"order_id": reservation.order_id},
            )


def release(reservation: Reservation) -> tuple[ReservationStatus, list[StockChange]]:
    """The status after ReleaseStock and the counter changes it makes.

    HELD -> RELEASED drops the hold; COMMITTED -> RELEASED puts the sold units back on hand;
    RELEASED stays as it is (a retry) and returns nothing twice.
    """
    match reservation.status:
        case ReservationStatus.HELD:
            return ReservationStatus.RELEASED, [
                StockChange(i.sku, 0, -i.quantity) for i in reservation.items
            ]
        case ReservationStatus.COMMITTED:
            return ReservationStatus.RELEASED, [
                StockChange(i.sku, i.quantity, 0) for i in reservation.items
            ]
        case ReservationStatus.RELEASED:
            return ReservationStatus.RELEASED, []


# --- paging --------------------------------------------------------------------------------------


def page_request(requested_size: int, token: str) -> tuple[str | None, int]:
    """The (SKU to start after, page size) a ListProducts request asks for, with every
    violation listed."""
    check = Validator()
    size, key = CURSORS.checked_page(check, requested_size, token)
    check.raise_if_invalid("invalid ListProducts request")
    if key is None:
        return None, size
    (after_sku,) = key
    assert isinstance(after_sku, str)  # CURSORS' shape; tells the type checker
    return after_sku, size


# --- the service ---------------------------------------------------------------------------------


class Inventory:
    """The inventory service's behaviour: the catalog, and reservations that never oversell.

    Validation and rules live here; the store only loads and writes (see the module docstring).
    """

    def __init__(self, store: InventoryStore, clock: Callable[[], datetime] = utc_now) -> None:
        self._store = store
        self._clock = clock

    async def list_products(self, page_size: int, page_token: str) -> ProductPage:
        """One page of the catalog in SKU order; InvalidArgument for a bad size or token."""
        after_sku, size = page_request(page_size, page_token)
        # One product more than the page tells whether another page follows.
        products = await self._store.list_products(after_sku, size + 1)
        page = tuple(products[:size])
        more = len(products) > size
        return ProductPage(page, CURSORS.token((page[-1].sku,)) if more else "")

    async def get_product(self, sku: str) -> Product:
        """The product with `sku`; NotFound PRODUCT_NOT_FOUND."""
        validate_sku(sku)
        product = await self._store.get_product(sku)
        if product is None:
            raise product_not_found([sku])
        return product

    async def reserve(self, order_id: str, items: Sequence[ReservationItem]) -> Reservation:
        """Hold `items` for `order_id`, all or nothing, each at its product's current price;
        a repeat returns the first reservation (with its prices).

        Raises InvalidArgument, AlreadyExists (IDEMPOTENCY_KEY_REUSED), NotFound
        (PRODUCT_NOT_FOUND) or FailedPrecondition (INSUFFICIENT_STOCK); nothing is written
        when it raises.
        """
        validate_reservation(order_id, items)

        def decide(
            current: Reservation | None, products: Mapping[str, Product]
        ) -> ReservationChange:
            if current is not None:
                return ReservationChange(replay(current, items))
            check_stock(items, products)
            now = self._clock()
            lines = priced(items, products)
            held = Reservation(order_id, lines, ReservationStatus.HELD, now, now)
            return ReservationChange(held, tuple(hold(items)))

        return await self._store.change_reservation(order_id, [item.sku for item in items], decide)

    async def commit(self, order_id: str) -> Reservation:
        """Mark the order's reservation sold; see `commit` (the rule) for the states."""
        validate_order_id(order_id, "CommitReservation")
        return await self._transition(order_id, commit)

    async def release(self, order_id: str) -> Reservation:
        """Give the order's reserved units back; see `release` (the rule) for the states."""
        validate_order_id(order_id, "ReleaseStock")
        return await self._transition(order_id, release)

    async def get_reservation(self, order_id: str) -> Reservation:
        """The order's reservation; NotFound RESERVATION_NOT_FOUND."""
        validate_order_id(order_id, "GetReservation")
        reservation = await self._store.get_reservation(order_id)
        if reservation is None:
            raise reservation_not_found(order_id)
        return reservation

    async def _transition(
        self,
        order_id: str,
        rule: Callable[[Reservation], tuple[ReservationStatus, list[StockChange]]],
    ) -> Reservation:
        def decide(current: Reservation | None, _: Mapping[str, Product]) -> ReservationChange:
            if current is None:
                raise reservation_not_found(order_id)
            status, changes = rule(current)
            if status is current.status:
                return ReservationChange(current)
            updated = replace(current, status=status, update_time=self._clock())
            return ReservationChange(updated, tuple(changes))

        return await self._store.change_reservation(order_id, (), decide)
