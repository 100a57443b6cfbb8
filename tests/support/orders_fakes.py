"""In-memory fakes of the orders saga's ports, with the idempotency the real services promise,
plus fault injection: a fault fires before a call takes effect (the request was lost) or after
it (the answer was lost, or the orders process died right then)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from services.common.money import Money
from services.orders.domain import OrderEvent, OrderItem
from services.orders.relay import EventRefused

T = TypeVar("T")


class Crash(BaseException):
    """The orders process dies here. A BaseException, so no `except Exception` swallows it."""


def unavailable(service: str = "dependency") -> Unavailable:
    """What an adapter raises when its upstream cannot be reached."""
    return Unavailable(f"{service} unreachable", reason="UPSTREAM_UNAVAILABLE")


@dataclass
class Fault:
    """Raise `error` on the next `times` calls, before or after the call takes effect."""

    error: BaseException
    after_effect: bool = False
    times: int = 1


@dataclass
class FakeDependency:
    """Shared fault injection and call counting; `shoppers` records whom each call was made
    for, as (method, shopper)."""

    faults: dict[str, Fault] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    shoppers: list[tuple[str, str]] = field(default_factory=list)

    def fail(
        self, method: str, error: BaseException, *, after: bool = False, times: int = 1
    ) -> None:
        """Make the next `times` calls of `method` raise `error`."""
        self.faults[method] = Fault(error, after, times)

    def _call(self, method: str, shopper: str, effect: Callable[[], T]) -> T:
        self.calls[method] += 1
        self.shoppers.append((method, shopper))
        fault = self.faults.get(method)
        if fault is not None and not fault.after_effect:
            self._consume(method, fault)
            raise fault.error
        result = effect()
        if fault is not None and fault.after_effect:
            self._consume(method, fault)
            raise fault.error
        return result

    def _consume(self, method: str, fault: Fault) -> None:
        fault.times -= 1
        if fault.times == 0:
            del self.faults[method]


@dataclass
class FakeUsers(FakeDependency):
    """Users: a set of known ids."""

    known: set[str] = field(default_factory=set)

    async def get_user(self, user_id: str) -> None:
        def effect() -> None:
            if user_id not in self.known:
                raise NotFound(f"user {user_id} not found", reason="USER_NOT_FOUND")

        self._call("get_user", user_id, effect)


@dataclass
class Reservation:
    items: tuple[tuple[str, int], ...]
    prices: Mapping[str, Money]
    status: str = "HELD"


@dataclass
class FakeInventory(FakeDependency):
    """Inventory: prices, available stock, reservations keyed by order id, each answering with
    the prices it was made at (a repeat too, whatever the products cost now)."""

    prices: dict[str, Money] = field(default_factory=dict)
    available: dict[str, int] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    effects: Counter[str] = field(default_factory=Counter)

    def add(self, sku: str, price: int, stock: int, currency: str = "USD") -> None:
        self.prices[sku] = Money(currency, price)
        self.available[sku] = stock

    async def reserve(
        self, order_id: str, items: Sequence[OrderItem], *, shopper: str
    ) -> Mapping[str, Money]:
        def effect() -> Mapping[str, Money]:
            if order_id in self.reservations:
                existing = self.reservations[order_id]
                if existing.status == "RELEASED":
                    raise FailedPrecondition("released", reason="RESERVATION_RELEASED")
                return existing.prices
            unknown = [i.sku for i in items if i.sku not in self.available]
            if unknown:
                raise NotFound("unknown products", reason="PRODUCT_NOT_FOUND")
            short = [i.sku for i in items if self.available[i.sku] < i.quantity]
            if short:
                raise FailedPrecondition("short", reason="INSUFFICIENT_STOCK")
            for item in items:
                self.available[item.sku] -= item.quantity
            prices = {i.sku: self.prices[i.sku] for i in items}
            self.reservations[order_id] = Reservation(
                tuple((i.sku, i.quantity) for i in items), prices
            )
            self.effects["reserve"] += 1
            return prices

        return self._call("reserve", shopper, effect)

    async def release(self, order_id: str, *, shopper: str) -> None:
        def effect() -> None:
            reservation = self._reservation(order_id)
            if reservation.status == "RELEASED":
                return
            for sku, quantity in reservation.items:
                self.available[sku] += quantity
            reservation.status = "RELEASED"
            self.effects["release"] += 1

        self._call("release", shopper, effect)

    async def commit(self, order_id: str, *, shopper: str) -> None:
        def effect() -> None:
            reservation = self._reservation(order_id)
            if reservation.status == "RELEASED":
                raise FailedPrecondition("released", reason="RESERVATION_RELEASED")
            if reservation.status == "HELD":
                reservation.status = "COMMITTED"
                self.effects["commit"] += 1

        self._call("commit", shopper, effect)

    def _reservation(self, order_id: str) -> Reservation:
        if order_id not in self.reservations:
            raise NotFound("no reservation", reason="RESERVATION_NOT_FOUND")
        return self.reservations[order_id]


DECLINED_TOKENS = {"tok_chargeDeclined", "tok_insufficientFunds"}


@dataclass
class FakePayments(FakeDependency):
    """Payments: charges keyed by idempotency key; declines for the declining test tokens."""

    charges: dict[str, str] = field(default_factory=dict)
    payments: dict[str, str] = field(default_factory=dict)
    amounts: dict[str, Money] = field(default_factory=dict)
    effects: Counter[str] = field(default_factory=Counter)

    async def charge(
        self,
        idempotency_key: str,
        order_id: str,
        amount: Money,
        payment_token: str,
        *,
        shopper: str,
    ) -> str:
        def effect() -> str:
            if payment_token in DECLINED_TOKENS:
                raise FailedPrecondition("declined", reason="CARD_DECLINED")
            if payment_token not in {"tok_visa", "tok_mastercard"}:
                raise InvalidArgument(
                    "bad token", violations=[FieldViolation("payment_token", "unknown")]
                )
            if idempotency_key not in self.charges:
                payment_id = f"pay_{len(self.payments) + 1}"
                self.charges[idempotency_key] = payment_id
                self.payments[payment_id] = "CAPTURED"
                self.amounts[payment_id] = amount
                self.effects["charge"] += 1
            return self.charges[idempotency_key]

        return self._call("charge", shopper, effect)

    async def refund(self, payment_id: str, *, shopper: str) -> None:
        def effect() -> None:
            if payment_id not in self.payments:
                raise NotFound("no payment", reason="PAYMENT_NOT_FOUND")
            if self.payments[payment_id] == "CAPTURED":
                self.payments[payment_id] = "REFUNDED"
                self.effects["refund"] += 1

        self._call("refund", shopper, effect)


@dataclass
class FakeNotifications(FakeDependency):
    """Notifications: takes a batch all or nothing, dedupes events by id and remembers what it
    received, in order; refuses for good the event ids in `refused` (naming the first)."""

    received: list[OrderEvent] = field(default_factory=list)
    refused: set[str] = field(default_factory=set)

    async def publish(self, events: Sequence[OrderEvent]) -> int:
        def effect() -> int:
            for event in events:
                if event.event_id in self.refused:
                    raise EventRefused(
                        event.event_id, AlreadyExists("reused", reason="IDEMPOTENCY_KEY_REUSED")
                    )
            seen = {event.event_id for event in self.received}
            new = [event for event in events if event.event_id not in seen]
            self.received.extend(new)
            return len(events) - len(new)

        # The relay's publisher takes events, not a shopper (the gRPC adapter derives it).
        return self._call("publish", "", effect)
