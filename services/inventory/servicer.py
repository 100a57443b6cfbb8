"""InventoryService handlers: contract message -> domain call -> contract message.

Handlers never map errors: domain errors propagate to the shared ErrorMappingInterceptor. Store
calls run in worker threads so a disk sync never stalls other calls on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from grpc import aio

from services.common import paging
from services.common.convert import money_to_proto, to_timestamp
from services.inventory import domain
from services.inventory.domain import Product, Reservation, ReservationItem, ReservationStatus
from services.inventory.store import InventoryStore
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
    """The contract form of a reservation."""
    return inventory_pb2.Reservation(
        order_id=reservation.order_id,
        items=[
            inventory_pb2.ReservationItem(sku=item.sku, quantity=item.quantity)
            for item in reservation.items
        ],
        status=_STATUSES[reservation.status],
        create_time=to_timestamp(reservation.create_time),
        update_time=to_timestamp(reservation.update_time),
    )


class InventoryServicer(inventory_pb2_grpc.InventoryServiceServicer):
    """Serves shop.inventory.v1.InventoryService from an InventoryStore."""

    def __init__(self, store: InventoryStore) -> None:
        self._store = store

    async def ListProducts(
        self, request: inventory_pb2.ListProductsRequest, context: Context
    ) -> inventory_pb2.ListProductsResponse:
        offset, limit = domain.page_request(request.page_size, request.page_token)
        products, more = await asyncio.to_thread(self._store.list_products, offset, limit)
        return inventory_pb2.ListProductsResponse(
            products=[product_to_proto(product) for product in products],
            next_page_token=paging.encode_token(offset + len(products)) if more else "",
        )

    async def GetProduct(
        self, request: inventory_pb2.GetProductRequest, context: Context
    ) -> inventory_pb2.GetProductResponse:
        domain.validate_sku(request.sku)
        product = await asyncio.to_thread(self._store.get_product, request.sku)
        return inventory_pb2.GetProductResponse(product=product_to_proto(product))

    async def ReserveStock(
        self, request: inventory_pb2.ReserveStockRequest, context: Context
    ) -> inventory_pb2.ReserveStockResponse:
        items = [ReservationItem(item.sku, item.quantity) for item in request.items]
        domain.validate_reservation(request.order_id, items)
        reservation = await asyncio.to_thread(self._store.reserve, request.order_id, items)
        return inventory_pb2.ReserveStockResponse(reservation=reservation_to_proto(reservation))

    async def CommitReservation(
        self, request: inventory_pb2.CommitReservationRequest, context: Context
    ) -> inventory_pb2.CommitReservationResponse:
        domain.validate_order_id(request.order_id, "CommitReservation")
        reservation = await asyncio.to_thread(self._store.commit, request.order_id)
        return inventory_pb2.CommitReservationResponse(
            reservation=reservation_to_proto(reservation)
        )

    async def ReleaseStock(
        self, request: inventory_pb2.ReleaseStockRequest, context: Context
    ) -> inventory_pb2.ReleaseStockResponse:
        domain.validate_order_id(request.order_id, "ReleaseStock")
        reservation = await asyncio.to_thread(self._store.release, request.order_id)
        return inventory_pb2.ReleaseStockResponse(reservation=reservation_to_proto(reservation))

    async def GetReservation(
        self, request: inventory_pb2.GetReservationRequest, context: Context
    ) -> inventory_pb2.GetReservationResponse:
        domain.validate_order_id(request.order_id, "GetReservation")
        reservation = await asyncio.to_thread(self._store.get_reservation, request.order_id)
        return inventory_pb2.GetReservationResponse(reservation=reservation_to_proto(reservation))
