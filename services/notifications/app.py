"""Wiring of the notifications service: store, hub, domain and servicer, as an App for
common.server."""

from __future__ import annotations

from services.common.config import ServiceConfig
from services.common.server import App, Registration
from services.notifications.domain import Notifications
from services.notifications.hub import NotificationHub
from services.notifications.servicer import NotificationsServicer
from services.notifications.store import SqliteNotificationStore
from shop.notifications.v1 import notifications_pb2, notifications_pb2_grpc

SERVICE_NAME = notifications_pb2.DESCRIPTOR.services_by_name["NotificationsService"].full_name


async def build(config: ServiceConfig) -> App:
    """The notifications App: NotificationsService on the SQLite file at `config.db_path`."""
    store = await SqliteNotificationStore.open(config.db_path)
    hub = NotificationHub()

    async def close_hub() -> None:
        # Ends every watch stream still open, so none outlives the service.
        hub.close()

    return App(
        registrations=[
            Registration(
                SERVICE_NAME,
                NotificationsServicer(Notifications(store, hub.publish), hub),
                notifications_pb2_grpc.add_NotificationsServiceServicer_to_server,
            )
        ],
        # Ending the watch streams first lets the server drain without waiting out the grace.
        on_shutdown=[close_hub],
        cleanups=[store.close],
    )
