"""Orders domain: the order model, the saga's stored state, request validation and the ports.

The checkout saga (`services.orders.saga`) orchestrates over *ports* (the Protocols below): it
never talks gRPC itself, so it runs in unit tests against small in-memory fakes, and the gRPC
adapters live in `services.orders.clients`. Ports raise the domain errors of
`services.common.errors`: NotFound / FailedPrecondition (with the downstream ErrorInfo reason)
for business outcomes, and Unavailable when the dependency could not be reached. The orders
service itself (`services.orders.service`) reads orders and hands changes to the saga.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from services.common.errors import (
    FailedPrecondition,
    NotFound,
    PreconditionViolation,
    Unavailable,
    Validator,
)
from services.common.money import Money, is_currency_code
from services.common.paging import Cursors, page_size

DEFAULT_CURRENCY = "USD"
MAX_ITEMS = 50
MAX_QUANTITY = 1000
MAX_KEY_LENGTH = 255
MAX_CANCEL_REASON_LENGTH = 500
# A saga that has not reached the charge step after this long is compensated instead of resumed:
# nobody wants a checkout to go through hours after they gave up on it.
DEFAULT_PENDING_TIMEOUT = timedelta(minutes=15)
# ListOrders pages by the (create_time, order_id) of the last order served: newer orders placed
# while a client pages sort before the cursor and never shift the next page.
CURSORS = Cursors("ListOrders", (datetime, str))


class OrderStatus(StrEnum):
    """Where an order is in its life cycle (mirrors shop.orders.v1.OrderStatus)."""

    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"


class SagaStep(StrEnum):
    """The step the saga runs next. Stored before the step runs; DONE once the order is final.

    A stored value keeps its meaning for good: orders written by an older version resume under
    the step they were stored at, so a step that changes what it does gets a new name.
    """

    VALIDATE_USER = "VALIDATE_USER"
    # Reserve the stock and price the items from the reservation's answer (one inventory call).
    RESERVE_AND_PRICE = "RESERVE_AND_PRICE"
    CHARGE_PAYMENT = "CHARGE_PAYMENT"
    COMMIT_RESERVATION = "COMMIT_RESERVATION"
    # Compensations, run in this order, towards SagaState.outcome.
    REFUND_PAYMENT = "REFUND_PAYMENT"
    RELEASE_STOCK = "RELEASE_STOCK"
    DONE = "DONE"
    # Stored only by versions that priced each item (GetProduct) before reserving; never stored
    # now, still resumed. PRICE_ITEMS: nothing priced or reserved yet. RESERVE_STOCK: the items
    # are priced (and their currency checked); the stock is to be reserved.
    PRICE_ITEMS = "PRICE_ITEMS"
    RESERVE_STOCK = "RESERVE_STOCK"


class OrderEventType(StrEnum):
    """What happened to an order (mirrors shop.notifications.v1.OrderEventType)."""

    CONFIRMED = "CONFIRMED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"


# Rejection reasons (Order.rejection_reason) this module decides itself; others are passed on
# from the downstream ErrorInfo (INSUFFICIENT_STOCK, CARD_DECLINED, RESERVATION_RELEASED...).
USER_NOT_FOUND = "USER_NOT_FOUND"
PRODUCT_NOT_FOUND = "PRODUCT_NOT_FOUND"
CURRENCY_MISMATCH = "CURRENCY_MISMATCH"
PAYMENT_TOKEN_INVALID = "PAYMENT_TOKEN_INVALID"
CHECKOUT_EXPIRED = "CHECKOUT_EXPIRED"


@dataclass(frozen=True)
class OrderItem:
    """One line of an order; `unit_price` is set once the saga has priced it."""

    sku: str
    quantity: int
    unit_price: Money | None = None


@dataclass(frozen=True)
class Order:
    """An order as the service returns it."""

    order_id: str
    user_id: str
    items: tuple[OrderItem, ...]
    currency_code: str
    status: OrderStatus
    create_time: datetime
    update_time: datetime
    total: Money | None = None
    rejection_reason: str = ""
    cancel_reason: str = ""
    payment_id: str = ""


@dataclass(frozen=True)
class SagaState:
    """The saga's own progress, stored beside its order.

    `outcome` is set once the saga knows how the order ends while compensations still have to
    run (REJECTED after a decline, CANCELLED during a cancellation); `outcome_reason` is the
    rejection reason or the customer's cancel reason. `payment_token` is only kept until the
    saga is DONE.
    """

    step: SagaStep
    payment_token: str = ""
    outcome: OrderStatus | None = None
    outcome_reason: str = ""
    last_error: str = ""
    origin: Mapping[str, str] = field(default_factory=dict)
    """Where the work on the order comes from (the placing or cancelling request's trace
    context and request id, as headers): a saga resumed later joins that request's trace."""


@dataclass(frozen=True)
class OrderEvent:
    """An order event, as written to the outbox and published to notifications."""

    event_id: str
    order_id: str
    user_id: str
    type: OrderEventType
    reason: str
    total: Money
    occur_time: datetime
    origin: Mapping[str, str] = field(default_factory=dict)
    """The trace context and request id of the step that wrote the event: its delivery by the
    outbox relay, later, shows in the same trace."""


@dataclass(frozen=True)
class OrderCursor:
    """Where a page of a user's orders (newest first) continues: after this order."""

    create_time: datetime
    order_id: str


@dataclass(frozen=True)
class ListOrdersQuery:
    """A validated ListOrders request; `after` is None for the first page."""

    user_id: str
    page_size: int
    after: OrderCursor | None


@dataclass(frozen=True)
class OrderPage:
    """One page of a user's orders, newest first, and the next page's token ("" if last)."""

    orders: tuple[Order, ...]
    next_page_token: str


@dataclass(frozen=True)
class PlaceOrderInput:
    """A validated PlaceOrder request (only sku and quantity of each item are used)."""

    idempotency_key: str
    user_id: str
    items: tuple[OrderItem, ...]
    payment_token: str
    currency_code: str = DEFAULT_CURRENCY

    def fingerprint(self) -> str:
        """A digest of everything but the key: the same key must come with the same request.

        Items are sorted so a retry that lists them in another order is the same request.
        """
        canonical = json.dumps(
            {
                "user_id": self.user_id,
                "items": sorted([item.sku, item.quantity] for item in self.items),
                "payment_token": self.payment_token,
                "currency_code": self.currency_code,
            },
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


def validate_place_order(
    idempotency_key: str,
    user_id: str,
    items: Sequence[tuple[str, int]],
    payment_token: str,
    currency_code: str,
) -> PlaceOrderInput:
    """Check a PlaceOrder request, listing every bad field; an empty currency means USD."""
    v = Validator()
    _require_text(v, idempotency_key, "idempotency_key")
    _require_text(v, user_id, "user_id")
    _require_text(v, payment_token, "payment_token")
    if v.require(bool(items), "items", "must contain at least one item"):
        v.require(len(items) <= MAX_ITEMS, "items", f"must contain at most {MAX_ITEMS} items")
    seen: set[str] = set()
    for index, (sku, quantity) in enumerate(items):
        if v.require(bool(sku.strip()), f"items[{index}].sku", "must not be empty"):
            v.require(sku not in seen, f"items[{index}].sku", f"repeats SKU {sku!r}")
            seen.add(sku)
        v.require(
            0 < quantity <= MAX_QUANTITY,
            f"items[{index}].quantity",
            f"must be between 1 and {MAX_QUANTITY}",
        )
    currency = currency_code or DEFAULT_CURRENCY
    v.require(
        is_currency_code(currency), "currency_code", "must be three upper-case letters, e.g. USD"
    )
    v.raise_if_invalid("invalid PlaceOrder request")
    return PlaceOrderInput(
        idempotency_key=idempotency_key,
        user_id=user_id,
        items=tuple(OrderItem(sku, quantity) for sku, quantity in items),
        payment_token=payment_token,
        currency_code=currency,
    )


def validate_order_id(order_id: str, rpc: str) -> str:
    """Check that an order id was given; raises InvalidArgument naming `rpc` otherwise."""
    v = Validator()
    v.require(bool(order_id), "order_id", "must not be empty")
    v.raise_if_invalid(f"invalid {rpc} request")
    return order_id


def validate_cancel_order(order_id: str, reason: str) -> None:
    """Check a CancelOrder request, listing every bad field."""
    v = Validator()
    v.require(bool(order_id), "order_id", "must not be empty")
    v.require(
        len(reason) <= MAX_CANCEL_REASON_LENGTH,
        "reason",
        f"must be at most {MAX_CANCEL_REASON_LENGTH} characters",
    )
    v.raise_if_invalid("invalid CancelOrder request")


def validate_list_orders(
    user_id: str, requested_page_size: int, page_token: str
) -> ListOrdersQuery:
    """Check a ListOrders request: user_id and page_size together, then the page token (a bad
    one alone is "page_token is not one this service issued")."""
    v = Validator()
    v.require(bool(user_id), "user_id", "must not be empty")
    v.require(requested_page_size >= 0, "page_size", "must be >= 0")
    v.raise_if_invalid("invalid ListOrders request")
    key = CURSORS.key(page_token)
    after = None
    if key is not None:
        create_time, order_id = key
        # CURSORS' shape; tells the type checker.
        assert isinstance(create_time, datetime)
        assert isinstance(order_id, str)
        after = OrderCursor(create_time, order_id)
    return ListOrdersQuery(user_id, page_size(requested_page_size), after)


def next_page_token(orders: Sequence[Order]) -> str:
    """The ListOrders token of the page after the last of `orders`."""
    last = orders[-1]
    return CURSORS.token((last.create_time, last.order_id))


def _require_text(v: Validator, value: str, field_path: str) -> None:
    if v.require(bool(value.strip()), field_path, "must not be empty"):
        v.require(
            len(value) <= MAX_KEY_LENGTH,
            field_path,
            f"must be at most {MAX_KEY_LENGTH} characters",
        )


def new_order_id() -> str:
    """A fresh order id: "ord_" + 32 hex digits."""
    return f"ord_{uuid.uuid4().hex}"


def charge_key(order_id: str) -> str:
    """The payments idempotency key of an order's charge: one charge per order, ever."""
    return f"{order_id}:charge"


def event_id(order_id: str, event_type: OrderEventType) -> str:
    """The id of an order's event of `event_type`. Deterministic, because an order has at most
    one event of each type: the outbox's unique index then rules out a duplicate event even if
    a transition were ever applied twice."""
    return f"{order_id}:{event_type.value.lower()}"


# --- ports -------------------------------------------------------------------------------


# Every call the saga makes is made for the order's shopper (`shopper`, the order's user_id),
# whether a request or the recovery sweep drives it: the adapters pass it on as the caller, so
# the services downstream answer as they would the shopper (users.GetUser reads only the
# caller's own account) and record whose data it is (payments keeps each payment's owner).


class UsersPort(Protocol):
    """What the saga needs from users."""

    async def get_user(self, user_id: str) -> None:
        """Return if the user exists, asking as that user; NotFound(USER_NOT_FOUND) if not;
        Unavailable."""


class InventoryPort(Protocol):
    """What the saga needs from inventory. Every mutation is idempotent per order id."""

    async def reserve(
        self, order_id: str, items: Sequence[OrderItem], *, shopper: str
    ) -> Mapping[str, Money]:
        """Hold stock for all items or none; the unit price of each item by SKU, as inventory
        priced it when it reserved (a repeat answers with the same prices).
        FailedPrecondition(INSUFFICIENT_STOCK, RESERVATION_RELEASED),
        NotFound(PRODUCT_NOT_FOUND); Unavailable; a plain DomainError(RESERVATION_UNPRICED)
        when inventory answers without a price for every item (it predates them)."""

    async def release(self, order_id: str, *, shopper: str) -> None:
        """Give the order's stock back; NotFound(RESERVATION_NOT_FOUND); Unavailable."""

    async def commit(self, order_id: str, *, shopper: str) -> None:
        """Mark the held stock sold; FailedPrecondition(RESERVATION_RELEASED),
        NotFound(RESERVATION_NOT_FOUND); Unavailable."""


class PaymentsPort(Protocol):
    """What the saga needs from payments."""

    async def charge(
        self,
        idempotency_key: str,
        order_id: str,
        amount: Money,
        payment_token: str,
        *,
        shopper: str,
    ) -> str:
        """Charge and capture, the payment owned by `shopper`; returns the payment id.
        FailedPrecondition(CARD_DECLINED), InvalidArgument (unknown token); Unavailable.
        Idempotent per key."""

    async def refund(self, payment_id: str, *, shopper: str) -> None:
        """Refund in full, idempotently; NotFound(PAYMENT_NOT_FOUND); Unavailable."""


class LeaseLost(Unavailable):
    """Another orders replica has taken the saga over (this one's lease lapsed): this one must
    stop driving it. UNAVAILABLE with reason ORDER_PENDING, as for any saga not finished yet."""

    def __init__(self, order_id: str) -> None:
        super().__init__(
            f"order {order_id} is being finished by another orders replica; it will be resumed",
            reason="ORDER_PENDING",
            metadata={"order_id": order_id},
        )


class OrderRepository(Protocol):
    """Durable storage of orders, saga state, idempotency keys and the outbox."""

    async def create(
        self, idempotency_key: str, fingerprint: str, order: Order, saga: SagaState
    ) -> Order:
        """Store a new order under `idempotency_key`, or return the order the key already
        names; AlreadyExists(IDEMPOTENCY_KEY_REUSED) if the key came with another fingerprint."""

    async def load(self, order_id: str) -> tuple[Order, SagaState] | None:
        """The order and its saga state, or None."""

    async def save(
        self,
        order: Order,
        saga: SagaState,
        event: OrderEvent | None = None,
        *,
        stalled: bool = False,
    ) -> None:
        """Store the order and saga state, and `event` in the outbox, in ONE transaction; a
        `stalled` saga's lease is let go (see claim)."""

    async def claim(self, order_id: str) -> bool:
        """Lease the order's saga to this replica unless another one holds it (False then, or
        if there is no such order). Every `save` renews the lease, or raises LeaseLost (an
        Unavailable) once another replica took the saga over."""

    async def claim_in_flight(self, limit: int, after: str | None = None) -> list[str]:
        """Lease up to `limit` sagas that are not DONE and that no other replica holds,
        oldest first, after order `after`; returns their order ids."""

    async def list_for_user(
        self, user_id: str, after: OrderCursor | None, limit: int
    ) -> list[Order]:
        """Up to `limit` of a user's orders, newest first, after `after` (None: the newest)."""


def order_not_found(order_id: str) -> NotFound:
    """The error for an order id that names no order, or someone else's: the same words, so
    the refusal never tells whether another shopper's order exists."""
    return NotFound(
        f"order {order_id!r} not found",
        reason="ORDER_NOT_FOUND",
        metadata={"order_id": order_id},
    )


async def load_order(repository: OrderRepository, order_id: str) -> tuple[Order, SagaState]:
    """The order and its saga state; NotFound(ORDER_NOT_FOUND) if there is no such order."""
    loaded = await repository.load(order_id)
    if loaded is None:
        raise order_not_found(order_id)
    return loaded


async def load_own_order(repository: OrderRepository, order_id: str, caller: str) -> Order:
    """The order if `caller` placed it; NotFound(ORDER_NOT_FOUND), exactly as for an order that
    does not exist, if there is none or it is someone else's."""
    loaded = await repository.load(order_id)
    if loaded is None or loaded[0].user_id != caller:
        raise order_not_found(order_id)
    return loaded[0]


def not_cancellable(order: Order) -> FailedPrecondition:
    """The error for cancelling an order that is not CONFIRMED."""
    return FailedPrecondition(
        f"order {order.order_id} is {order.status.value}; only CONFIRMED orders can be cancelled",
        reason="ORDER_NOT_CANCELLABLE",
        metadata={"order_id": order.order_id, "status": order.status.value},
        violations=[
            PreconditionViolation(
                type="ORDER_STATUS",
                subject=f"order:{order.order_id}",
                description=f"order is {order.status.value}, not CONFIRMED",
            )
        ],
    )
