"""Wiring of the payments service: its store, domain and servicer, as an App for common.server."""

from __future__ import annotations

from services.common.config import ServiceConfig
from services.common.server import App, Registration
from services.payments import fingerprint_key
from services.payments.domain import Payments
from services.payments.servicer import PaymentsServicer
from services.payments.store import SqlPaymentStore
from shop.payments.v1 import payments_pb2, payments_pb2_grpc

SERVICE_NAME = payments_pb2.DESCRIPTOR.services_by_name["PaymentsService"].full_name


async def build(config: ServiceConfig) -> App:
    """The payments App: PaymentsService on its database (`config.database`), its cards
    fingerprinted with the key beside `config.db_path` (on either backend)."""
    key = fingerprint_key.load_or_create(fingerprint_key.key_path(config.db_path))
    store = await SqlPaymentStore.open(config.database, key)
    return App(
        registrations=[
            Registration(
                SERVICE_NAME,
                PaymentsServicer(Payments(store, key)),
                payments_pb2_grpc.add_PaymentsServiceServicer_to_server,
            )
        ],
        cleanups=[store.close],
    )
