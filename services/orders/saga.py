"""The checkout saga: places orders, drives each through its steps, compensates failures,
cancels confirmed orders, and recovers orders left in flight.

Checkout: VALIDATE_USER -> RESERVE_AND_PRICE -> CHARGE_PAYMENT -> COMMIT_RESERVATION ->
CONFIRMED. A business failure ends the order REJECTED, after the compensations the steps so
far need (REFUND_PAYMENT, then RELEASE_STOCK). Cancelling a CONFIRMED order runs the same two
compensations and ends it CANCELLED.

RESERVE_AND_PRICE is one inventory call: ReserveStock answers with each item's unit price, so
the items are priced from the reservation rather than by a GetProduct per item before it. The
price is the same one (the product's price, read by inventory in the transaction that holds the
stock), and the checks are the same: an unknown product is PRODUCT_NOT_FOUND, a product priced
in another currency than the order's is CURRENCY_MISMATCH. What changes is their order: the
currency is now known only once the stock is held, so a mismatch releases the reservation
before the order is rejected (and a shortage is reported before a mismatch when both apply).

Orders stored by versions that priced before reserving still finish: PRICE_ITEMS (nothing done
yet) moves on to RESERVE_AND_PRICE, and RESERVE_STOCK (already priced) reserves and keeps its
prices. New orders never store those two steps: a stored step always means one thing, and an
older orders (a rollback) meeting RESERVE_AND_PRICE refuses to run it instead of reserving and
charging an order it takes for priced.

The step about to run is stored before it runs, and each downstream call is idempotent per
order, so after a crash (or an Unavailable dependency) re-running the stored step is always
safe: that is all recovery does.

Replicas: a saga is driven by the replica holding its lease (services.orders.store). Placing
an order leases it to the replica that placed it; resuming or cancelling claims the lease
first, and waits (up to `lease_wait`) while another live replica holds it: a retried PlaceOrder
that lands on another replica returns the order once its driver finished it. The recovery
sweep claims only sagas whose lease lapsed, so it takes over exactly the orders of replicas
that died (or stalled past their lease), a few at a time; a replica that finds its lease taken
(LeaseLost on its next write) stops driving that order.

Every downstream call is made for the order's shopper, its stored user_id (see the ports in
services.orders.domain): a step the recovery sweep re-runs, with no request behind it, passes
on the same caller as the request that placed the order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from services.common.clock import utc_now
from services.common.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from services.common.money import Money
from services.common.telemetry import carrier, continued, tracer
from services.orders import leases
from services.orders.domain import (
    CHECKOUT_EXPIRED,
    CURRENCY_MISMATCH,
    DEFAULT_PENDING_TIMEOUT,
    PAYMENT_TOKEN_INVALID,
    PRODUCT_NOT_FOUND,
    USER_NOT_FOUND,
    InventoryPort,
    LeaseLost,
    Order,
    OrderEvent,
    OrderEventType,
    OrderItem,
    OrderRepository,
    OrderStatus,
    PaymentsPort,
    PlaceOrderInput,
    SagaState,
    SagaStep,
    UsersPort,
    charge_key,
    event_id,
    load_order,
    new_order_id,
    not_cancellable,
)
from services.orders.leases import DEFAULT_LEASE_WAIT, KeyedLocks

log = logging.getLogger(__name__)

# Steps before any charge can exist: an expired saga there is compensated, not resumed. From
# CHARGE_PAYMENT on, only replaying the (idempotent) charge tells whether money was taken, so
# those sagas are always driven forward.
_BEFORE_CHARGE = (
    SagaStep.VALIDATE_USER,
    SagaStep.RESERVE_AND_PRICE,
    SagaStep.PRICE_ITEMS,
    SagaStep.RESERVE_STOCK,
)
# Steps whose reserve call may have gone through before the saga stalled there.
_RESERVING = (SagaStep.RESERVE_AND_PRICE, SagaStep.RESERVE_STOCK)


class CheckoutSaga:
    """Drives orders through checkout and cancellation, one step at a time, and recovers the
    ones a crash or an unreachable dependency left in flight.

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
        lease_wait: float = DEFAULT_LEASE_WAIT,
    ) -> None:
        self._repository = repository
        self._users = users
        self._inventory = inventory
        self._payments = payments
        self._clock = clock
        self._new_id = new_id
        self._on_event = on_event
        self._pending_timeout = pending_timeout
        self._lease_wait = lease_wait
        self._locks = KeyedLocks()

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
        saga = SagaState(
            SagaStep.VALIDATE_USER, payment_token=request.payment_token, origin=carrier()
        )
        order = await self._repository.create(
            request.idempotency_key, request.fingerprint(), draft, saga
        )
        # A new order is leased to this replica by `create`: no claim needed.
        return await self.resume(order.order_id, claimed=order.order_id == draft.order_id)

    async def cancel_order(self, order_id: str, reason: str) -> Order:
        """Cancel a CONFIRMED order: refund, release, CANCELLED. Idempotent.

        The cancellation is stored before the refund, so once accepted it always completes.
        NotFound(ORDER_NOT_FOUND); FailedPrecondition(ORDER_NOT_CANCELLABLE) unless CONFIRMED.
        """
        async with self._locks.hold(order_id):
            order, saga = await leases.claimed(self._repository, order_id, self._lease_wait)
            if order.status is OrderStatus.CANCELLED:
                return order
            if saga.outcome is not OrderStatus.CANCELLED:
                if order.status is not OrderStatus.CONFIRMED:
                    raise not_cancellable(order)
                order = replace(order, cancel_reason=reason, update_time=self._clock())
                saga = SagaState(
                    SagaStep.REFUND_PAYMENT,
                    outcome=OrderStatus.CANCELLED,
                    outcome_reason=reason,
                    origin=carrier(),
                )
                await self._repository.save(order, saga)
            return await self._run(order, saga)

    # --- recovery ----------------------------------------------------------------------

    async def resume(
        self, order_id: str, *, recovered: bool = False, claimed: bool = False
    ) -> Order:
        """Drive one order's saga from its stored step to the end (a no-op if it is DONE),
        once its lease is this replica's (already, if `claimed`). A `recovered` saga (no
        request is waiting for it) continues the trace of the request that placed or
        cancelled the order."""
        async with self._locks.hold(order_id):
            if claimed:
                order, saga = await load_order(self._repository, order_id)
            else:
                order, saga = await leases.claimed(self._repository, order_id, self._lease_wait)
            if not recovered or saga.step is SagaStep.DONE:
                return await self._run(order, saga)
            attributes = {"order.id": order_id, "saga.step": saga.step.value}
            with continued(saga.origin, "saga recover", attributes):
                return await self._run(order, saga)

    async def recover(self, concurrency: int = 8) -> int:
        """Resume or compensate every in-flight order no other live replica drives; returns
        how many reached their end.

        Orders are claimed `concurrency` at a time, oldest first, each page just before it
        runs, so none waits claimed long enough for its lease to lapse; the orders of a page
        run side by side, and the next page starts when the page's slowest has stopped (a
        step that hangs is cut off after the mesh's route timeout). Orders a request of this
        replica is driving right now are skipped; the next pass sees them if they are still in
        flight. One order failing never stops the others.
        """

        async def recover_one(order_id: str) -> bool:
            if self._locks.busy(order_id):
                return False
            try:
                await self.resume(order_id, recovered=True)
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

        finished = 0
        last: str | None = None
        while claimed := await self._repository.claim_in_flight(concurrency, after=last):
            last = claimed[-1]
            finished += sum(await asyncio.gather(*map(recover_one, claimed)))
        return finished

    # --- the state machine -------------------------------------------------------------

    async def _run(self, order: Order, saga: SagaState) -> Order:
        """Run steps until DONE. A dependency failure stops here with the order at its step."""
        while saga.step is not SagaStep.DONE:
            attributes = {"order.id": order.order_id, "saga.step": saga.step.value}
            try:
                # A span per step: the order's trace reads like its saga.
                with tracer.start_as_current_span(f"saga {saga.step.value}", attributes=attributes):
                    order, saga = await self._step(order, saga)
            except LeaseLost:
                # Another replica drives the order now: nothing of ours to store.
                raise
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
                # Stalled: the lease is let go, so a retry on any replica may take it.
                await self._repository.save(
                    order, replace(saga, last_error=error.message), stalled=True
                )
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
            if saga.step in _RESERVING:
                # The reserve call may have gone through before the saga stalled.
                return await self._compensate(order, saga, CHECKOUT_EXPIRED, SagaStep.RELEASE_STOCK)
            return await self._finish(order, saga, OrderStatus.REJECTED, CHECKOUT_EXPIRED)
        match saga.step:
            case SagaStep.VALIDATE_USER:
                return await self._validate_user(order, saga)
            case SagaStep.RESERVE_AND_PRICE | SagaStep.RESERVE_STOCK:
                return await self._reserve_and_price(order, saga)
            case SagaStep.PRICE_ITEMS:
                # An order an older version stored before pricing it: nothing is reserved yet.
                # RESERVE_AND_PRICE is stored before its reserve call runs, like every step, so
                # an expiry in between always releases what that call may have held.
                return await self._advance(order, saga, SagaStep.RESERVE_AND_PRICE)
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
            return await self._finish(order, saga, OrderStatus.REJECTED, USER_NOT_FOUND)
        return await self._advance(order, saga, SagaStep.RESERVE_AND_PRICE)

    async def _reserve_and_price(self, order: Order, saga: SagaState) -> tuple[Order, SagaState]:
        """RESERVE_AND_PRICE: hold the stock and price the items from the answer. (The old
        RESERVE_STOCK: the same call, the order keeping the prices it already has.)"""
        try:
            prices = await self._inventory.reserve(
                order.order_id, order.items, shopper=order.user_id
            )
        except FailedPrecondition as error:
            # All-or-nothing: a refused reservation holds nothing, so nothing to compensate.
            return await self._finish(order, saga, OrderStatus.REJECTED, error.reason)
        except NotFound:
            return await self._finish(order, saga, OrderStatus.REJECTED, PRODUCT_NOT_FOUND)
        if saga.step is SagaStep.RESERVE_AND_PRICE:
            if any(price.currency_code != order.currency_code for price in prices.values()):
                # The stock is held by now: give it back before rejecting. The order stays
                # unpriced, as one rejected for its currency always was.
                return await self._compensate(
                    order, saga, CURRENCY_MISMATCH, SagaStep.RELEASE_STOCK
                )
            order = _priced(order, prices)
        return await self._advance(order, saga, SagaStep.CHARGE_PAYMENT)

    async def _charge_payment(self, order: Order, saga: SagaState) -> tuple[Order, SagaState]:
        total = order.total or Money.zero(order.currency_code)
        if total.minor_units == 0:
            # Nothing to charge (every item free): payments refuses zero amounts.
            return await self._advance(order, saga, SagaStep.COMMIT_RESERVATION)
        try:
            payment_id = await self._payments.charge(
                charge_key(order.order_id),
                order.order_id,
                total,
                saga.payment_token,
                shopper=order.user_id,
            )
        except FailedPrecondition as error:
            return await self._compensate(order, saga, error.reason, SagaStep.RELEASE_STOCK)
        except InvalidArgument:
            return await self._compensate(
                order, saga, PAYMENT_TOKEN_INVALID, SagaStep.RELEASE_STOCK
            )
        return await self._advance(
            replace(order, payment_id=payment_id), saga, SagaStep.COMMIT_RESERVATION
        )

    async def _commit_reservation(self, order: Order, saga: SagaState) -> tuple[Order, SagaState]:
        try:
            await self._inventory.commit(order.order_id, shopper=order.user_id)
        except (FailedPrecondition, NotFound) as error:
            # The stock is gone (released behind our back): give the money back.
            return await self._compensate(order, saga, error.reason, SagaStep.REFUND_PAYMENT)
        return await self._finish(order, saga, OrderStatus.CONFIRMED)

    async def _refund_payment(self, order: Order, saga: SagaState) -> tuple[Order, SagaState]:
        if order.payment_id:
            try:
                await self._payments.refund(order.payment_id, shopper=order.user_id)
            except NotFound:
                log.warning(
                    "payment to refund does not exist",
                    extra={"order_id": order.order_id, "payment_id": order.payment_id},
                )
        return await self._advance(order, saga, SagaStep.RELEASE_STOCK)

    async def _release_stock(self, order: Order, saga: SagaState) -> tuple[Order, SagaState]:
        try:
            await self._inventory.release(order.order_id, shopper=order.user_id)
        except NotFound:
            log.info("no reservation to release", extra={"order_id": order.order_id})
        outcome = saga.outcome or OrderStatus.REJECTED
        return await self._finish(order, saga, outcome, saga.outcome_reason)

    # --- transitions (each one is one repository transaction) --------------------------

    async def _advance(
        self, order: Order, saga: SagaState, step: SagaStep
    ) -> tuple[Order, SagaState]:
        """Store the result of the step just run together with the next step."""
        order = replace(order, update_time=self._clock())
        saga = replace(saga, step=step, last_error="")
        await self._repository.save(order, saga)
        return order, saga

    async def _compensate(
        self, order: Order, saga: SagaState, reason: str, first: SagaStep
    ) -> tuple[Order, SagaState]:
        """Decide the order ends REJECTED with `reason`, once compensations from `first` on
        have run."""
        saga = replace(saga, outcome=OrderStatus.REJECTED, outcome_reason=reason)
        return await self._advance(order, saga, first)

    async def _finish(
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
            origin=carrier(),
        )
        saga = SagaState(SagaStep.DONE, outcome=status, outcome_reason=reason, origin=saga.origin)
        await self._repository.save(order, saga, event)
        self._on_event()
        return order, saga


def _priced(order: Order, prices: Mapping[str, Money]) -> Order:
    """`order` with each item at its unit price in `prices` (all in the order's currency) and
    the total they make."""
    items: list[OrderItem] = []
    total = Money.zero(order.currency_code)
    for item in order.items:
        price = prices[item.sku]
        items.append(replace(item, unit_price=price))
        total += price.times(item.quantity)
    return replace(order, items=tuple(items), total=total)
