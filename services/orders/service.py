"""The orders service's behaviour: validate each request, read orders from the repository, and
hand every change (placing, cancelling) to the checkout saga.

Every operation is made for a `caller`, the signed-in user's id, and answers only for the
caller's own orders: someone else's order is NOT_FOUND, exactly like an order id that does not
exist, and a `user_id` naming someone else is PERMISSION_DENIED (see orders.proto for why)."""

from __future__ import annotations

from collections.abc import Sequence

from services.common.caller import own_user_id
from services.orders.domain import (
    Order,
    OrderPage,
    OrderRepository,
    load_own_order,
    next_page_token,
    validate_cancel_order,
    validate_list_orders,
    validate_order_id,
    validate_place_order,
)
from services.orders.saga import CheckoutSaga


class Orders:
    """Places, reads, lists and cancels orders (the operations of OrdersService)."""

    def __init__(self, repository: OrderRepository, saga: CheckoutSaga) -> None:
        self._repository = repository
        self._saga = saga

    async def place_order(
        self,
        caller: str,
        idempotency_key: str,
        user_id: str,
        items: Sequence[tuple[str, int]],
        payment_token: str,
        currency_code: str,
    ) -> Order:
        """Place an order for `caller`, once per idempotency key, and check it out; an empty
        user_id means the caller, an empty currency USD. Raises PermissionDenied(NOT_YOUR_DATA)
        for another user's user_id, InvalidArgument listing every bad field, AlreadyExists when
        the key came with another request, Unavailable (ORDER_PENDING) when a dependency is
        unreachable."""
        # Resolved before the fingerprint: a retry naming the caller and one leaving user_id
        # empty are the same request.
        request = validate_place_order(
            idempotency_key, own_user_id(user_id, caller), items, payment_token, currency_code
        )
        return await self._saga.place_order(request)

    async def get_order(self, caller: str, order_id: str) -> Order:
        """One of the caller's orders; NotFound(ORDER_NOT_FOUND) if none has that id."""
        return await load_own_order(
            self._repository, validate_order_id(order_id, "GetOrder"), caller
        )

    async def list_orders(
        self, caller: str, user_id: str, page_size: int, page_token: str
    ) -> OrderPage:
        """One page of the caller's orders, newest first (an empty user_id means the caller);
        PermissionDenied(NOT_YOUR_DATA) for another user's, InvalidArgument for bad input."""
        query = validate_list_orders(own_user_id(user_id, caller), page_size, page_token)
        # One order more than the page tells whether another page follows.
        orders = await self._repository.list_for_user(
            query.user_id, query.after, query.page_size + 1
        )
        page = tuple(orders[: query.page_size])
        more = len(orders) > query.page_size
        return OrderPage(page, next_page_token(page) if more else "")

    async def cancel_order(self, caller: str, order_id: str, reason: str) -> Order:
        """Cancel one of the caller's CONFIRMED orders (refund, release, CANCELLED),
        idempotently. Raises InvalidArgument, NotFound(ORDER_NOT_FOUND) (someone else's order
        too), FailedPrecondition(ORDER_NOT_CANCELLABLE), Unavailable (CANCELLATION_PENDING)
        while a dependency is unreachable."""
        validate_cancel_order(order_id, reason)
        # An order's user_id never changes, so checking it before the saga takes the order's
        # lock leaves no window.
        await load_own_order(self._repository, order_id, caller)
        return await self._saga.cancel_order(order_id, reason)
