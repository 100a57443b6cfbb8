"""gRPC handlers of shop.orders.v1.OrdersService: proto in, domain call, proto out.

Errors are not handled here: DomainErrors raised by the domain become status codes with rich
details in the shared ErrorMappingInterceptor. Every method answers only for a signed-in caller
(UNAUTHENTICATED SIGN_IN_REQUIRED without one), handed to the domain as a plain user id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grpc import aio

from services.common.caller import require_caller
from services.common.convert import money_to_proto, to_timestamp
from services.common.money import Money
from services.orders.domain import Order, OrderItem, OrderStatus
from services.orders.service import Orders
from shop.common.v1 import money_pb2
from shop.orders.v1 import orders_pb2, orders_pb2_grpc

_STATUSES: Mapping[OrderStatus, orders_pb2.OrderStatus.ValueType] = {
    OrderStatus.PENDING: orders_pb2.ORDER_STATUS_PENDING,
    OrderStatus.CONFIRMED: orders_pb2.ORDER_STATUS_CONFIRMED,
    OrderStatus.REJECTED: orders_pb2.ORDER_STATUS_REJECTED,
    OrderStatus.CANCELLED: orders_pb2.ORDER_STATUS_CANCELLED,
}


def _money(money: Money | None) -> money_pb2.Money | None:
    # Unpriced items and totals stay unset on the wire rather than becoming zero amounts.
    return None if money is None else money_to_proto(money)


def _item_to_proto(item: OrderItem) -> orders_pb2.OrderItem:
    return orders_pb2.OrderItem(
        sku=item.sku, quantity=item.quantity, unit_price=_money(item.unit_price)
    )


def order_to_proto(order: Order) -> orders_pb2.Order:
    """The wire form of a domain Order."""
    return orders_pb2.Order(
        order_id=order.order_id,
        user_id=order.user_id,
        items=[_item_to_proto(item) for item in order.items],
        total=_money(order.total),
        status=_STATUSES[order.status],
        rejection_reason=order.rejection_reason,
        payment_id=order.payment_id,
        create_time=to_timestamp(order.create_time),
        update_time=to_timestamp(order.update_time),
        cancel_reason=order.cancel_reason,
    )


class OrdersServicer(orders_pb2_grpc.OrdersServiceServicer):
    """OrdersService backed by the orders domain."""

    def __init__(self, orders: Orders) -> None:
        self._orders = orders

    async def PlaceOrder(
        self, request: orders_pb2.PlaceOrderRequest, context: aio.ServicerContext[Any, Any]
    ) -> orders_pb2.PlaceOrderResponse:
        """See orders.proto."""
        order = await self._orders.place_order(
            require_caller(context),
            request.idempotency_key,
            request.user_id,
            [(item.sku, item.quantity) for item in request.items],
            request.payment_token,
            request.currency_code,
        )
        return orders_pb2.PlaceOrderResponse(order=order_to_proto(order))

    async def GetOrder(
        self, request: orders_pb2.GetOrderRequest, context: aio.ServicerContext[Any, Any]
    ) -> orders_pb2.GetOrderResponse:
        """See orders.proto."""
        order = await self._orders.get_order(require_caller(context), request.order_id)
        return orders_pb2.GetOrderResponse(order=order_to_proto(order))

    async def ListOrders(
        self, request: orders_pb2.ListOrdersRequest, context: aio.ServicerContext[Any, Any]
    ) -> orders_pb2.ListOrdersResponse:
        """See orders.proto."""
        page = await self._orders.list_orders(
            require_caller(context), request.user_id, request.page_size, request.page_token
        )
        return orders_pb2.ListOrdersResponse(
            orders=[order_to_proto(order) for order in page.orders],
            next_page_token=page.next_page_token,
        )

    async def CancelOrder(
        self, request: orders_pb2.CancelOrderRequest, context: aio.ServicerContext[Any, Any]
    ) -> orders_pb2.CancelOrderResponse:
        """See orders.proto."""
        order = await self._orders.cancel_order(
            require_caller(context), request.order_id, request.reason
        )
        return orders_pb2.CancelOrderResponse(order=order_to_proto(order))
