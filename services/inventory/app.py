"""Wiring of the inventory service: open the store, seed the catalog once, serve the servicer."""

from __future__ import annotations

import asyncio
import json
import logging
from importlib import resources

from services.common.config import ServiceConfig
from services.common.server import App, Registration
from services.inventory.domain import Product, parse_catalog
from services.inventory.servicer import InventoryServicer
from services.inventory.store import InventoryStore
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"].full_name
SEED_CATALOG = "seed_catalog.json"


def seed_catalog() -> list[Product]:
    """The catalog shipped in this package (services/inventory/seed_catalog.json)."""
    text = resources.files(__package__).joinpath(SEED_CATALOG).read_text(encoding="utf-8")
    return parse_catalog(json.loads(text))


def open_store(config: ServiceConfig) -> InventoryStore:
    """Open the service's database and load the seed catalog if it has no products yet."""
    store = InventoryStore.open(config.db_path)
    try:
        if store.seed(seed_catalog()):
            log.info("seeded the product catalog", extra={"db_path": str(config.db_path)})
    except BaseException:
        store.close()
        raise
    return store


async def build(config: ServiceConfig) -> App:
    """The inventory App for `config`: its servicer, and a clean-up that closes the store."""
    store = await asyncio.to_thread(open_store, config)

    async def close_store() -> None:
        await asyncio.to_thread(store.close)

    return App(
        registrations=[
            Registration(
                SERVICE_NAME,
                InventoryServicer(store),
                inventory_pb2_grpc.add_InventoryServiceServicer_to_server,
            )
        ],
        cleanups=[close_store],
    )
