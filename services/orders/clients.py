"""gRPC adapters of the saga's ports and the relay's publisher: each turns a port call into a
downstream RPC and a failed RPC back into the domain error the port promises.

Translation: NOT_FOUND -> NotFound, FAILED_PRECONDITION -> FailedPrecondition,
INVALID_ARGUMENT -> InvalidArgument, ALREADY_EXISTS -> AlreadyExists (each keeping the
downstream ErrorInfo reason and metadata); every other code -> Unavailable. UNAVAILABLE and
DEADLINE_EXCEEDED plainly are transient; the rest (INTERNAL, RESOURCE_EXHAUSTED, a mesh's
PERMISSION_DENIED...) are not the order's fault either, so the saga keeps the order at its step
and retries rather than rejecting a customer's order over them.

Every call names the order's shopper as its caller (common.caller.CALLER_HEADER): orders calls
on the shopper's behalf, and the mesh lets orders pass the shopper on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import grpc
from grpc import aio

from services.common.caller import on_behalf_of
from services.common.convert import money_from_proto, money_to_proto, to_timestamp
from services.common.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from services.common.money import Money
from services.common.status import error_info, field_violations
from services.orders.domain import OrderEvent, OrderEventType, OrderItem
from services.orders.relay import EventRefused
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.notifications.v1 import notifications_pb2, notifications_pb2_grpc
from shop.payments.v1 import payments_pb2, payments_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

_EVENT_TYPES: Mapping[OrderEventType, notifications_pb2.OrderEventType.ValueType] = {
    OrderEventType.CONFIRMED: notifications_pb2.ORDER_EVENT_TYPE_CONFIRMED,
    OrderEventType.REJECTED: notifications_pb2.ORDER_EVENT_TYPE_REJECTED,
    OrderEventType.CANCELLED: notifications_pb2.ORDER_EVENT_TYPE_CANCELLED,
}


def to_domain_error(upstream: str, error: aio.AioRpcError) -> DomainError:
    """The domain error a port raises for a failed call to `upstream` (see module docstring)."""
    info = error_info(error)
    reason = info.reason if info is not None else ""
    metadata = dict(info.metadata) if info is not None else {}
    code = error.code()
    message = f"{upstream}: {error.details() or code.name}"
    if code is grpc.StatusCode.NOT_FOUND:
        return NotFound(message, reason=reason or "NOT_FOUND", metadata=metadata)
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(
            message, reason=reason or "FAILED_PRECONDITION", metadata=metadata
        )
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(
            message,
            reason=reason or "INVALID_ARGUMENT",
            metadata=metadata,
            violations=field_violations(error),
        )
    if code is grpc.StatusCode.ALREADY_EXISTS:
        return AlreadyExists(message, reason=reason or "ALREADY_EXISTS", metadata=metadata)
    return Unavailable(
        message, reason="UPSTREAM_UNAVAILABLE", metadata={"upstream": upstream, "code": code.name}
    )


@contextmanager
def _translated(upstream: str) -> Iterator[None]:
    """Re-raise a failed RPC to `upstream` made in the body as its domain error."""
    try:
        yield
    except aio.AioRpcError as error:
        raise to_domain_error(upstream, error) from error


class GrpcUsers:
    """UsersPort over shop.users.v1.UsersService."""

    def __init__(self, channel: aio.Channel) -> None:
        self._stub = users_pb2_grpc.UsersServiceStub(channel)

    async def get_user(self, user_id: str) -> None:
        """Return if the user exists (see domain.UsersPort)."""
        with _translated("users"):
            await self._stub.GetUser(
                users_pb2.GetUserRequest(user_id=user_id), metadata=on_behalf_of(user_id)
            )


class GrpcInventory:
    """InventoryPort over shop.inventory.v1.InventoryService."""

    def __init__(self, channel: aio.Channel) -> None:
        self._stub = inventory_pb2_grpc.InventoryServiceStub(channel)

    async def reserve(
        self, order_id: str, items: Sequence[OrderItem], *, shopper: str
    ) -> Mapping[str, Money]:
        """Hold stock for the order; each item's unit price (see domain.InventoryPort).

        An inventory older than prices on reservations answers without them: that is no
        answer the saga can price from, so it is an error no step expects (DomainError,
        reason RESERVATION_UNPRICED) and the order waits at its step until inventory is
        upgraded. Inventory is upgraded before orders."""
        request = inventory_pb2.ReserveStockRequest(
            order_id=order_id,
            items=[inventory_pb2.ReservationItem(sku=i.sku, quantity=i.quantity) for i in items],
        )
        with _translated("inventory"):
            response = await self._stub.ReserveStock(request, metadata=on_behalf_of(shopper))
        if response.reservation.status == inventory_pb2.RESERVATION_STATUS_RELEASED:
            # A repeated reserve returns the existing reservation, even a released one, and
            # holds nothing: for the saga that is a failed reservation.
            raise FailedPrecondition(
                f"inventory: the reservation of {order_id} was already released",
                reason="RESERVATION_RELEASED",
                metadata={"order_id": order_id},
            )
        prices = {
            item.sku: money_from_proto(item.unit_price)
            for item in response.reservation.items
            if item.HasField("unit_price")
        }
        unpriced = [item.sku for item in items if item.sku not in prices]
        if unpriced:
            raise DomainError(
                f"inventory: the reservation of {order_id} has no price for"
                f" {','.join(unpriced)} (an inventory older than this orders?)",
                reason="RESERVATION_UNPRICED",
                metadata={"order_id": order_id, "skus": ",".join(unpriced)},
            )
        return prices

    async def release(self, order_id: str, *, shopper: str) -> None:
        """Give the order's stock back (see domain.InventoryPort)."""
        with _translated("inventory"):
            await self._stub.ReleaseStock(
                inventory_pb2.ReleaseStockRequest(order_id=order_id),
                metadata=on_behalf_of(shopper),
            )

    async def commit(self, order_id: str, *, shopper: str) -> None:
        """Mark the order's held stock sold (see domain.InventoryPort)."""
        with _translated("inventory"):
            await self._stub.CommitReservation(
                inventory_pb2.CommitReservationRequest(order_id=order_id),
                metadata=on_behalf_of(shopper),
            )


class GrpcPayments:
    """PaymentsPort over shop.payments.v1.PaymentsService."""

    def __init__(self, channel: aio.Channel) -> None:
        self._stub = payments_pb2_grpc.PaymentsServiceStub(channel)

    async def charge(
        self,
        idempotency_key: str,
        order_id: str,
        amount: Money,
        payment_token: str,
        *,
        shopper: str,
    ) -> str:
        """Charge the card; returns the payment id (see domain.PaymentsPort)."""
        request = payments_pb2.ChargeRequest(
            idempotency_key=idempotency_key,
            order_id=order_id,
            amount=money_to_proto(amount),
            payment_token=payment_token,
        )
        with _translated("payments"):
            response = await self._stub.Charge(request, metadata=on_behalf_of(shopper))
        return response.payment.payment_id

    async def refund(self, payment_id: str, *, shopper: str) -> None:
        """Refund the payment in full (see domain.PaymentsPort)."""
        with _translated("payments"):
            await self._stub.Refund(
                payments_pb2.RefundRequest(payment_id=payment_id), metadata=on_behalf_of(shopper)
            )


class GrpcNotifications:
    """The relay's EventPublisher over shop.notifications.v1.NotificationsService."""

    def __init__(self, channel: aio.Channel) -> None:
        self._stub = notifications_pb2_grpc.NotificationsServiceStub(channel)

    async def publish(self, events: Sequence[OrderEvent]) -> int:
        """Deliver `events` in one PublishOrderEvents call; returns how many notifications had
        already (see relay.EventPublisher). A refusal whose ErrorInfo names an event by
        `index` is that event's (EventRefused); any other is the call's.

        A batch of one shopper's events (the usual case: the saga wakes the relay per event)
        is sent for that shopper; a batch mixing several is sent for nobody, since one call
        cannot be made for several people and PublishOrderEvents checks no caller."""
        request = notifications_pb2.PublishOrderEventsRequest(
            events=[_event_to_proto(event) for event in events]
        )
        shoppers = {event.user_id for event in events}
        metadata = on_behalf_of(shoppers.pop()) if len(shoppers) == 1 else ()
        try:
            response = await self._stub.PublishOrderEvents(request, metadata=metadata)
        except aio.AioRpcError as error:
            refused = to_domain_error("notifications", error)
            index = refused.metadata.get("index", "")
            if isinstance(refused, Unavailable) or not index.isdecimal():
                raise refused from error
            if int(index) < len(events):
                raise EventRefused(events[int(index)].event_id, refused) from error
            raise refused from error
        return sum(result.duplicate for result in response.results)


def _event_to_proto(event: OrderEvent) -> notifications_pb2.OrderEvent:
    return notifications_pb2.OrderEvent(
        event_id=event.event_id,
        order_id=event.order_id,
        user_id=event.user_id,
        type=_EVENT_TYPES[event.type],
        reason=event.reason,
        total=money_to_proto(event.total),
        occur_time=to_timestamp(event.occur_time),
    )
