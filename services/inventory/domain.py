"""Inventory domain: products, stock and reservations, as plain data and pure rules.

Stock model. A product has `on_hand` units (physical stock not yet sold) and `held` units (the
sum of its HELD reservations); `available = on_hand - held`. Reserving raises `held`;
committing a reservation sells the units (both `on_hand` and `held` drop); releasing a HELD
reservation drops the hold; releasing a COMMITTED one (a cancelled, paid order) puts the units
back on hand. The store enforces `0 <= held <= on_hand` with a CHECK constraint, so no bug or
race can ever show negative stock.

Duplicate SKUs in one request are rejected rather than merged: a caller that sends the same
SKU twice most likely has a bug, and merging would make the reservation differ from the request.

Nothing here imports grpc; `servicer.py` converts to and from the contract.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.common import paging
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    PreconditionViolation,
    Validator,
)
from services.common.money import Money, is_currency_code

# Bounds that keep one request (and one transaction) small.
MAX_ITEMS = 100
MAX_ID_LENGTH = 128


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
    """A quantity of one product."""

    sku: str
    quantity: int


@dataclass(frozen=True)
class Reservation:
    """The stock held (or once held) for one order; items keep the order they were requested in."""

    order_id: str
    items: tuple[ReservationItem, ...]
    status: ReservationStatus
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True)
class StockChange:
    """How one product's counters move when a reservation changes state."""

    sku: str
    on_hand_delta: int
    held_delta: int


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


def same_items(a: Iterable[ReservationItem], b: Iterable[ReservationItem]) -> bool:
    """True when two item lists reserve the same quantities, whatever their order."""
    return sorted(a, key=lambda i: i.sku) == sorted(b, key=lambda i: i.sku)


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


# --- seed catalog --------------------------------------------------------------------------------


def parse_catalog(document: Any) -> list[Product]:
    """The products of a seed catalog document (parsed JSON): `{"products": [{"sku", "name",
    "description", "price": {"currency_code", "minor_units"}, "on_hand"}, ...]}`.

    Raises ValueError naming the first bad entry: a broken catalog must stop the service at
    start rather than seed half a shop.
    """
    if not isinstance(document, dict) or not isinstance(document.get("products"), list):
        raise ValueError('seed catalog: expected an object with a "products" list')
    products: list[Product] = []
    seen: set[str] = set()
    for index, entry in enumerate(document["products"]):
        where = f"seed catalog products[{index}]"
        try:
            price = entry["price"]
            product = Product(
                sku=str(entry["sku"]),
                name=str(entry["name"]),
                description=str(entry.get("description", "")),
                price=Money(str(price["currency_code"]), int(price["minor_units"])),
                on_hand=int(entry["on_hand"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{where}: missing or malformed field ({error})") from None
        if not product.sku.strip() or product.sku in seen:
            raise ValueError(f"{where}: empty or duplicate sku {product.sku!r}")
        if not is_currency_code(product.price.currency_code) or product.price.minor_units < 0:
            raise ValueError(f"{where}: price must be a currency code and minor_units >= 0")
        if product.on_hand < 0:
            raise ValueError(f"{where}: on_hand must be >= 0")
        seen.add(product.sku)
        products.append(product)
    return products


# --- paging --------------------------------------------------------------------------------------


def page_request(requested_size: int, token: str) -> tuple[int, int]:
    """The (offset, limit) a ListProducts request asks for, with every violation listed."""
    check = Validator()
    size, offset = paging.checked_page(check, requested_size, token)
    check.raise_if_invalid("invalid ListProducts request")
    return offset, size
