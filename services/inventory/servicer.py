"""InventoryService handlers: contract message -> domain call -> contract message.

Handlers never map errors: domain errors propagate to the shared ErrorMappingInterceptor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grpc import aio

from services.common.convert import money_to_proto, to_timestamp
from services.inventory.domain import (
    Inventory,
    Product,
    Reservation,
    ReservationItem,
    ReservationStatus,
)
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc

Context = aio.ServicerContext[Any, Any]

_STATUSES: Mapping[ReservationStatus, inventory_pb2.ReservationStatus.ValueType] = {
    ReservationStatus.HELD: inventory_pb2.RESERVATION_STATUS_HELD,
    ReservationStatus.COMMITTED: inventory_pb2.RESERVATION_STATUS_COMMITTED,
    ReservationStatus.RELEASED: inventory_pb2.RESERVATION_STATUS_RELEASED,
}


def product_to_proto(product: Product) -> inventory_pb2.Product:
    """The contract form of a product (stock counters reduced to what can be reserved)."""
    return inventory_pb2.Product(
        sku=product.sku,
        name=product.name,
        description=product.description,
        price=money_to_proto(product.price),
        available_quantity=product.available,
    )


def reservation_to_proto(reservation: Reservation) -> inventory_pb2.Reservation:
    """The contract form of a reservation, every item with its unit price."""
    return inventory_pb2.Reservation(
        order_id=reservation.order_id,
        items=[
            inventory_pb2.ReservationItem(
                sku=item.sku, quantity=item.quantity, unit_price=money_to_proto(item.unit_price)
            )
            for item in reservation.items
        ],
        status=_STATUSES[reservation.status],
        create_time=to_timestamp(reservation.create_time),
        update_time=to_timestamp(reservation.update_time),
    )


class InventoryServicer(inventory_pb2_grpc.InventoryServiceServicer):
    """Serves shop.inventory.v1.InventoryService from the inventory domain."""

    def __init__(self, inventory: Inventory) -> None:
        self._inventory = inventory

    async def ListProducts(
        self, request: inventory_pb2.ListProductsRequest, context: Context
    ) -> inventory_pb2.ListProductsResponse:
        """See inventory.proto."""
        page = await self._inventory.list_products(request.page_size, request.page_token)
        return inventory_pb2.ListProductsResponse(
            products=[product_to_proto(product) for product in page.products],
            next_page_token=page.next_page_token,
        )

    async def GetProduct(
        self, request: inventory_pb2.GetProductRequest, context: Context
    ) -> inventory_pb2.GetProductResponse:
        """See inventory.proto."""
        product = await self._inventory.get_product(request.sku)
        return inventory_pb2.GetProductResponse(product=product_to_proto(product))

    async def ReserveStock(
        self, request: inventory_pb2.ReserveStockRequest, context: Context
    ) -> inventory_pb2.ReserveStockResponse:
        """See inventory.proto."""
        items = [ReservationItem(item.sku, item.quantity) for item in request.items]
        reservation = await self._inventory.reserve(request.order_id, items)
        return inventory_pb2.ReserveStockResponse(reservation=reservation_to_proto(reservation))

    async def CommitReservation(
        self, request: inventory_pb2.CommitReservationRequest, context: Context
    ) -> inventory_pb2.CommitReservationResponse:
        """See inventory.proto."""
        reservation = await self._inventory.commit(request.order_id)
        return inventory_pb2.CommitReservationResponse(
            reservation=reservation_to_proto(reservation)
        )

    async def ReleaseStock(
        self, request: inventory_pb2.ReleaseStockRequest, context: Context
    ) -> inventory_pb2.ReleaseStockResponse:
        """See inventory.proto."""
        reservation = await self._inventory.release(request.order_id)
        return inventory_pb2.ReleaseStockResponse(reservation=reservation_to_proto(reservation))

    async def GetReservation(
        self, request: inventory_pb2.GetReservationRequest, context: Context
    ) -> inventory_pb2.GetReservationResponse:
        """See inventory.proto."""
        reservation = await self._inventory.get_reservation(request.order_id)
        return inventory_pb2.GetReservationResponse(reservation=reservation_to_proto(reservation))
