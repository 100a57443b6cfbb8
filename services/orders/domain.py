"""Orders domain: the order model, request validation and the checkout saga.

The saga is an orchestrator over *ports* (the Protocols below): it never talks gRPC itself, so
it runs in unit tests against small in-memory fakes, and the gRPC adapters live in
`services.orders.clients`. Ports raise the domain errors of `services.common.errors`:
NotFound / FailedPrecondition (with the downstream ErrorInfo reason) for business outcomes, and
Unavailable when the dependency could not be reached.

Checkout: VALIDATE_USER -> PRICE_ITEMS -> RESERVE_STOCK -> CHARGE_PAYMENT -> COMMIT_RESERVATION
-> CONFIRMED. A business failure ends the order REJECTED, after the compensations the steps so
far need (REFUND_PAYMENT, then RELEASE_STOCK). Cancelling a CONFIRMED order runs the same two
compensations and ends it CANCELLED.

The step about to run is stored before it runs, and each downstream call is idempotent per
order, so after a crash (or an Unavailable dependency) re-running the stored step is always
safe: that is all recovery does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from services.common.clock import utc_now
from services.common.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
    Unavailable,
    Validator,
)
from services.common.money import Money, is_currency_code
from services.common.paging import decode_token, encode_token, page_size

log = logging.getLogger(__name__)

DEFAULT_CURRENCY = "USD"
MAX_ITEMS = 50
MAX_QUANTITY = 1000
MAX_KEY_LENGTH = 255
MAX_CANCEL_REASON_LENGTH = 500
# A saga that has not reached the charge step after this long is compensated instead of resumed:
# nobody wants a checkout to go through hours after they gave up on it.
DEFAULT_PENDING_TIMEOUT = timedelta(minutes=15)


class OrderStatus(StrEnum):
    """Where an order is in its life cycle (mirrors shop.orders.v1.OrderStatus)."""

    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"


class SagaStep(StrEnum):
    """The step the saga runs next. Stored before the step runs; DONE once the order is final."""

    VALIDATE_USER = "VALIDATE_USER"
    PRICE_ITEMS = "PRICE_ITEMS"
    RESERVE_STOCK = "RESERVE_STOCK"
    CHARGE_PAYMENT = "CHARGE_PAYMENT"
    COMMIT_RESERVATION = "COMMIT_RESERVATION"
    # Compensations, run in this order, towards SagaState.outcome.
    REFUND_PAYMENT = "REFUND_PAYMENT"
    RELEASE_STOCK = "RELEASE_STOCK"
    DONE = "DONE"


# Steps before any charge can exist: an expired saga there is compensated, not resumed. From
# CHARGE_PAYMENT on, only replaying the (idempotent) charge tells whether money was taken, so
# those sagas are always driven forward.
_BEFORE_CHARGE = (SagaStep.VALIDATE_USER, SagaStep.PRICE_ITEMS, SagaStep.RESERVE_STOCK)


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


class UsersPort(Protocol):
    """What the saga needs from users."""

    async def get_user(self, user_id: str) -> None:
        """Return if the user exists; NotFound(USER_NOT_FOUND) if not; Unavailable."""


class InventoryPort(Protocol):
    """What the saga needs from inventory. Every mutation is idempotent per order id."""

    async def get_product(self, sku: str) -> Money:
        """The unit price of `sku`; NotFound(PRODUCT_NOT_FOUND); Unavailable."""

    async def reserve(self, order_id: str, items: Sequence[OrderItem]) -> None:
        """Hold stock for all items or none; FailedPrecondition(INSUFFICIENT_STOCK),
        NotFound(PRODUCT_NOT_FOUND); Unavailable."""

    async def release(self, order_id: str) -> None:
        """Give the order's stock back; NotFound(RESERVATION_NOT_FOUND); Unavailable."""

    async def commit(self, order_id: str) -> None:
        """Mark the held stock sold; FailedPrecondition(RESERVATION_RELEASED),
        NotFound(RESERVATION_NOT_FOUND); Unavailable."""


class PaymentsPort(Protocol):
    """What the saga needs from payments."""

    async def charge(
        self, idempotency_key: str, order_id: str, amount: Money, payment_token: str
    ) -> str:
        """Charge and capture; returns the payment id. FailedPrecondition(CARD_DECLINED),
        InvalidArgument (unknown token); Unavailable. Idempotent per key."""

    async def refund(self, payment_id: str) -> None:
        """Refund in full, idempotently; NotFound(PAYMENT_NOT_FOUND); Unavailable."""


class OrderRepository(Protocol):
    """Durable storage of orders, saga state, idempotency keys and the outbox."""

    def create(
        self, idempotency_key: str, fingerprint: str, order: Order, saga: SagaState
    ) -> Order:
        """Store a new order under `idempotency_key`, or return the order the key already
        names; AlreadyExists(IDEMPOTENCY_KEY_REUSED) if the key came with another fingerprint."""

    def load(self, order_id: str) -> tuple[Order, SagaState] | None:
        """The order and its saga state, or None."""

    def save(self, order: Order, saga: SagaState, event: OrderEvent | None = None) -> None:
        """Store the order and saga state, and `event` in the outbox, in ONE transaction."""

    def in_flight(self) -> list[str]:
        """Ids of orders whose saga is not DONE, oldest first."""

    def list_for_user(self, user_id: str, offset: int, limit: int) -> list[Order]:
        """A user's orders, newest first."""


# --- the saga ----------------------------------------------------------------------------


class _KeyedLocks:
    """One asyncio.Lock per order id, dropped once nobody holds or waits for it: a request and
    the recovery loop never drive the same order at the same time."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def busy(self, key: str) -> bool:
        """True while some task holds or waits for `key`."""
        return key in self._locks

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold the lock of `key` for the body of the `async with`."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class OrderSaga:
    """Places, cancels, reads and recovers orders.

    `on_event` is called after every transaction that wrote an outbox event (the relay's wake
    up, so events go out at once instead of at the next poll).
    """

    def __init__(
        self,
        repository: OrderRepository,
        users: UsersPort,
        inventory: InventoryPort,
        payments: PaymentsPort,
        *,
        clock: Callable[[], datetime] = utc_now,
        new_id: Callable[[], str] = new_order_id,
        on_event: Callable[[], None] = lambda: None,
        pending_timeout: timedelta = DEFAULT_PENDING_TIMEOUT,
    ) -> None:
        self._repository = repository
        self._users = users
        self._inventory = inventory
        self._payments = payments
        self._clock = clock
        self._new_id = new_id
        self._on_event = on_event
        self._pending_timeout = pending_timeout
        self._locks = _KeyedLocks()

    # --- requests ----------------------------------------------------------------------

    async def place_order(self, request: PlaceOrderInput) -> Order:
        """Create the order (or find the one its idempotency key names) and drive its saga to
        the end. Raises Unavailable (reason ORDER_PENDING) if a dependency is unreachable."""
        now = self._clock()
        draft = Order(
            order_id=self._new_id(),
            user_id=request.user_id,
            items=request.items,
            currency_code=request.currency_code,
            status=OrderStatus.PENDING,
            create_time=now,
            update_time=now,
        )
        saga = SagaState(SagaStep.VALIDATE_USER, payment_token=request.payment_token)
        order = self._repository.create(request.idempotency_key, request.fingerprint(), draft, saga)
        return await self.resume(order.order_id)

    async def cancel_order(self, order_id: str, reason: str) -> Order:
        """Cancel a CONFIRMED order: refund, release, CANCELLED. Idempotent.

        The cancellation is stored before the refund, so once accepted it always completes.
        """
        v = Validator()
        v.require(bool(order_id), "order_id", "must not be empty")
        v.require(
            len(reason) <= MAX_CANCEL_REASON_LENGTH,
            "reason",
            f"must be at most {MAX_CANCEL_REASON_LENGTH} characters",
        )
        v.raise_if_invalid("invalid CancelOrder request")
        async with self._locks.hold(order_id):
            order, saga = self._load(order_id)
            if order.status is OrderStatus.CANCELLED:
                return order
            if saga.outcome is not OrderStatus.CANCELLED:
                if order.status is not OrderStatus.CONFIRMED:
                    raise _not_cancellable(order)
                order = replace(order, cancel_reason=reason, update_time=self._clock())
                saga = SagaState(
                    SagaStep.REFUND_PAYMENT,
                    outcome=OrderStatus.CANCELLED,
                    outcome_reason=reason,
                )
                self._repository.save(order, saga)
            return await self._run(order, saga)

    def get_order(self, order_id: str) -> Order:
        """One order; NotFound(ORDER_NOT_FOUND)."""
        v = Validator()
        v.require(bool(order_id), "order_id", "must not be empty")
        v.raise_if_invalid("invalid GetOrder request")
        return self._load(order_id)[0]

    def list_orders(
        self, user_id: str, requested_page_size: int, page_token: str
    ) -> tuple[list[Order], str]:
        """One page of a user's orders, newest first, and the next page's token ("" if last)."""
        v = Validator()
        v.require(bool(user_id), "user_id", "must not be empty")
        v.require(requested_page_size >= 0, "page_size", "must be >= 0")
        v.raise_if_invalid("invalid ListOrders request")
        size = page_size(requested_page_size)
        offset = decode_token(page_token)
        orders = self._repository.list_for_user(user_id, offset, size + 1)
        next_token = encode_token(offset + size) if len(orders) > size else ""
        return orders[:size], next_token

    # --- recovery ----------------------------------------------------------------------

    async def resume(self, order_id: str) -> Order:
        """Drive one order's saga from its stored step to the end (a no-op if it is DONE)."""
        async with self._locks.hold(order_id):
            order, saga = self._load(order_id)
            return await self._run(order, saga)

    async def recover(self, concurrency: int = 8) -> int:
        """Resume or compensate every in-flight order; returns how many reached their end.

        Up to `concurrency` orders run at once, so one order stuck on a hanging dependency does
        not hold up the rest. Orders a request is driving right now are skipped; the next pass
        sees them if they are still in flight. One order failing never stops the others.
        """
        limit = asyncio.Semaphore(concurrency)

        async def recover_one(order_id: str) -> bool:
            async with limit:
                if self._locks.busy(order_id):
                    return False
                try:
                    await self.resume(order_id)
                except Unavailable as error:
                    log.debug(
                        "order still waiting for a dependency",
                        extra={"order_id": order_id, "error": error.message},
                    )
                    return False
                except Exception:
                    log.exception("recovering order failed", extra={"order_id": order_id})
                    return False
                return True

        finished = await asyncio.gather(*map(recover_one, self._repository.in_flight()))
        return sum(finished)

    # --- the state machine -------------------------------------------------------------

    def _load(self, order_id: str) -> tuple[Order, SagaState]:
        loaded = self._repository.load(order_id)
        if loaded is None:
            raise NotFound(
                f"order {order_id!r} not found",
                reason="ORDER_NOT_FOUND",
                metadata={"order_id": order_id},
            )
        return loaded

    async def _run(self, order: Order, saga: SagaState) -> Order:
        """Run steps until DONE. A dependency failure stops here with the order at its step."""
        while saga.step is not SagaStep.DONE:
            try:
                order, saga = await self._step(order, saga)
            except DomainError as error:
                # Unavailable, or a downstream answer no step expects: either way the step did
                # not complete, so it stays stored and is retried by recovery or by the caller.
                if not isinstance(error, Unavailable):
                    log.error(
                        "unexpected answer from a dependency",
                        extra={
                            "order_id": order.order_id,
                            "step": saga.step.value,
                            "reason": error.reason,
                            "error": error.message,
                        },
                    )
                self._repository.save(order, replace(saga, last_error=error.message))
                cancelling = saga.outcome is OrderStatus.CANCELLED
                raise Unavailable(
                    f"order {order.order_id} is waiting at step {saga.step.value}: "
                    f"{error.message}; it will be resumed",
                    reason="CANCELLATION_PENDING" if cancelling else "ORDER_PENDING",
                    metadata={"order_id": order.order_id, "step": saga.step.value},
                ) from error
        return order

    async def _step(self, order: Order, saga: SagaState) -> tuple[Order, SagaState]:
        if saga.outcome is None and saga.step in _BEFORE_CHARGE and self._expired(order):
            if saga.step is SagaStep.RESERVE_STOCK:
                # The reserve call may have gone through before the saga stalled.
                return self._compensate(order, saga, CHECKOUT_EXPIRED, SagaStep.RELEASE_STOCK)
            return self._finish(order, saga, OrderStatus.REJECTED, CHECKOUT_EXPIRED)
        match saga.step:
            case SagaStep.VALIDATE_USER:
                return await self._validate_user(order, saga)
            case SagaStep.PRICE_ITEMS:
                return await self._price_items(order, saga)
            case SagaStep.RESERVE_STOCK:
                return await self._reserve_stock(order, saga)
            case SagaStep.CHARGE_PAYMENT:
                return await self._charge_payment(order, saga)
            case SagaStep.COMMIT_RESERVATION:
                return await self._commit_reservation(order, saga)
            case SagaStep.REFUND_PAYMENT:
                return await self._refund_payment(order, saga)
            case SagaStep.RELEASE_STOCK:
                return await self._release_stock(order, saga)
            case SagaStep.DONE:
                return order, saga

    def _expired(self, order: Order) -> bool:
        return self._clock() - order.create_time > self._pending_timeout

    async def _validate_user(self, order: Order, saga: SagaState) -> tuple[Order, SagaState]:
        try:
            await self._users.get_user(order.user_id)
        except NotFound:
            return self._finish(order, saga, OrderStatus.REJECTED, USER_NOT_FOUND)
        return self._advance(order, saga, SagaStep.PRICE_ITEMS)

    async def _price_items(self, order: Order, saga: SagaState) -> tuple[Order, SagaState]:
        priced: list[OrderItem] = []
        total = Money.zero(order.currency_code)
        for item in order.items:
            try:
                price = await self._inventory.get_product(item.sku)
            except NotFound:
                return self._finish(order, saga, OrderStatus.REJECTED, PRODUCT_NOT_FOUND)
            if price.currency_code != order.currency_code:
                return self._finish(order, saga, OrderStatus.REJECTED, CURRENCY_MISMATCH)
            priced.append(replace(item, unit_price=price))
            total += price.times(item.quantity)
        priced_order = replace(order, items=tuple(priced), total=total)
        return self._advance(priced_order, saga, SagaStep.RESERVE_STOCK)

    async def _reserve_stock(self, order: Order, saga: SagaState) -> tuple[Order, SagaState]:
        try:
            await self._inventory.reserve(order.order_id, order.items)
        except FailedPrecondition as error:
            # All-or-nothing: a refused reservation holds nothing, so nothing to compensate.
            return self._finish(order, saga, OrderStatus.REJECTED, error.reason)
        except NotFound:
            return self._finish(order, saga, OrderStatus.REJECTED, PRODUCT_NOT_FOUND)
        return self._advance(order, saga, SagaStep.CHARGE_PAYMENT)

    async def _charge_payment(self, order: Order, saga: SagaState) -> tuple[Order, SagaState]:
        total = order.total or Money.zero(order.currency_code)
        if total.minor_units == 0:
            # Nothing to charge (every item free): payments refuses zero amounts.
            return self._advance(order, saga, SagaStep.COMMIT_RESERVATION)
        try:
            payment_id = await self._payments.charge(
                charge_key(order.order_id), order.order_id, total, saga.payment_token
            )
        except FailedPrecondition as error:
            return self._compensate(order, saga, error.reason, SagaStep.RELEASE_STOCK)
        except InvalidArgument:
            return self._compensate(order, saga, PAYMENT_TOKEN_INVALID, SagaStep.RELEASE_STOCK)
        return self._advance(
            replace(order, payment_id=payment_id), saga, SagaStep.COMMIT_RESERVATION
        )

    async def _commit_reservation(self, order: Order, saga: SagaState) -> tuple[Order, SagaState]:
        try:
            await self._inventory.commit(order.order_id)
        except (FailedPrecondition, NotFound) as error:
            # The stock is gone (released behind our back): give the money back.
            return self._compensate(order, saga, error.reason, SagaStep.REFUND_PAYMENT)
        return self._finish(order, saga, OrderStatus.CONFIRMED)

    async def _refund_payment(self, order: Order, saga: SagaState) -> tuple[Order, SagaState]:
        if order.payment_id:
            try:
                await self._payments.refund(order.payment_id)
            except NotFound:
                log.warning(
                    "payment to refund does not exist",
                    extra={"order_id": order.order_id, "payment_id": order.payment_id},
                )
        return self._advance(order, saga, SagaStep.RELEASE_STOCK)

    async def _release_stock(self, order: Order, saga: SagaState) -> tuple[Order, SagaState]:
        try:
            await self._inventory.release(order.order_id)
        except NotFound:
            log.info("no reservation to release", extra={"order_id": order.order_id})
        outcome = saga.outcome or OrderStatus.REJECTED
        return self._finish(order, saga, outcome, saga.outcome_reason)

    # --- transitions (each one is one repository transaction) --------------------------

    def _advance(self, order: Order, saga: SagaState, step: SagaStep) -> tuple[Order, SagaState]:
        """Store the result of the step just run together with the next step."""
        order = replace(order, update_time=self._clock())
        saga = replace(saga, step=step, last_error="")
        self._repository.save(order, saga)
        return order, saga

    def _compensate(
        self, order: Order, saga: SagaState, reason: str, first: SagaStep
    ) -> tuple[Order, SagaState]:
        """Decide the order ends REJECTED with `reason`, once compensations from `first` on
        have run."""
        saga = replace(saga, outcome=OrderStatus.REJECTED, outcome_reason=reason)
        return self._advance(order, saga, first)

    def _finish(
        self, order: Order, saga: SagaState, status: OrderStatus, reason: str = ""
    ) -> tuple[Order, SagaState]:
        """Move the order to its final `status` and write its event in the same transaction."""
        now = self._clock()
        order = replace(
            order,
            status=status,
            update_time=now,
            rejection_reason=reason if status is OrderStatus.REJECTED else "",
        )
        event_type = OrderEventType(status.value)
        event = OrderEvent(
            event_id=event_id(order.order_id, event_type),
            order_id=order.order_id,
            user_id=order.user_id,
            type=event_type,
            reason=reason,
            total=order.total or Money.zero(order.currency_code),
            occur_time=now,
        )
        saga = SagaState(SagaStep.DONE, outcome=status, outcome_reason=reason)
        self._repository.save(order, saga, event)
        self._on_event()
        return order, saga


def _not_cancellable(order: Order) -> FailedPrecondition:
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
