"""Wiring of the inventory service: open the store, seed the catalog once, serve the servicer."""

from __future__ import annotations

import logging

from services.common.config import ServiceConfig
from services.common.server import App, Registration
from services.inventory.catalog import seed_catalog
from services.inventory.domain import Inventory
from services.inventory.servicer import InventoryServicer
from services.inventory.store import SqlInventoryStore
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"].full_name


async def open_store(config: ServiceConfig) -> SqlInventoryStore:
    """Open the service's database and load the seed catalog if it has no products yet."""
    store = await SqlInventoryStore.open(config.database)
    try:
        if await store.seed(seed_catalog()):
            log.info("seeded the product catalog", extra={"database": str(config.database)})
    except BaseException:
        await store.close()
        raise
    return store


async def build(config: ServiceConfig) -> App:
    """The inventory App for `config`: its servicer, and a clean-up that closes the store."""
    store = await open_store(config)
    return App(
        registrations=[
            Registration(
                SERVICE_NAME,
                InventoryServicer(Inventory(store)),
                inventory_pb2_grpc.add_InventoryServiceServicer_to_server,
            )
        ],
        cleanups=[store.close],
    )
