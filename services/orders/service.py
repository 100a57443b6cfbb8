"""The orders service's behaviour: validate each request, read orders from the repository, and
hand every change (placing, cancelling) to the checkout saga."""

from __future__ import annotations

from collections.abc import Sequence

from services.orders.domain import (
    Order,
    OrderPage,
    OrderRepository,
    load_order,
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
        idempotency_key: str,
        user_id: str,
        items: Sequence[tuple[str, int]],
        payment_token: str,
        currency_code: str,
    ) -> Order:
        """Place an order, once per idempotency key, and check it out; an empty currency means
        USD. Raises InvalidArgument listing every bad field, AlreadyExists when the key came
        with another request, Unavailable (ORDER_PENDING) when a dependency is unreachable."""
        request = validate_place_order(
            idempotency_key, user_id, items, payment_token, currency_code
        )
        return await self._saga.place_order(request)

    async def get_order(self, order_id: str) -> Order:
        """One order; NotFound(ORDER_NOT_FOUND)."""
        order, _ = await load_order(self._repository, validate_order_id(order_id, "GetOrder"))
        return order

    async def list_orders(self, user_id: str, page_size: int, page_token: str) -> OrderPage:
        """One page of a user's orders, newest first; InvalidArgument for bad input."""
        query = validate_list_orders(user_id, page_size, page_token)
        # One order more than the page tells whether another page follows.
        orders = await self._repository.list_for_user(
            query.user_id, query.after, query.page_size + 1
        )
        page = tuple(orders[: query.page_size])
        more = len(orders) > query.page_size
        return OrderPage(page, next_page_token(page) if more else "")

    async def cancel_order(self, order_id: str, reason: str) -> Order:
        """Cancel a CONFIRMED order (refund, release, CANCELLED), idempotently. Raises
        InvalidArgument, NotFound(ORDER_NOT_FOUND), FailedPrecondition(ORDER_NOT_CANCELLABLE),
        Unavailable (CANCELLATION_PENDING) while a dependency is unreachable."""
        validate_cancel_order(order_id, reason)
        return await self._saga.cancel_order(order_id, reason)
