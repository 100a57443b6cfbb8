"""Wiring of the notifications service: store, hub, domain and servicer, as an App for
common.server."""

from __future__ import annotations

import asyncio
import contextlib

from services.common.config import ServiceConfig
from services.common.server import App, Registration
from services.notifications.domain import Notifications
from services.notifications.hub import NotificationHub
from services.notifications.servicer import NotificationsServicer
from services.notifications.store import SqliteNotificationStore
from shop.notifications.v1 import notifications_pb2, notifications_pb2_grpc

# Watchers only drain their buffers once the hub closes; a watcher slower than this is left
# to the server's grace period.
WATCHES_END_WITHIN_SECONDS = 2.0

SERVICE_NAME = notifications_pb2.DESCRIPTOR.services_by_name["NotificationsService"].full_name


async def build(config: ServiceConfig) -> App:
    """The notifications App: NotificationsService on its database (`config.database`)."""
    store = await SqliteNotificationStore.open(config.database)
    hub = NotificationHub()
    servicer = NotificationsServicer(Notifications(store, hub.publish), hub)

    async def end_watches() -> None:
        # Ends every watch stream still open, so none outlives the service.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WATCHES_END_WITHIN_SECONDS):
                await servicer.end_watches()

    return App(
        registrations=[
            Registration(
                SERVICE_NAME,
                servicer,
                notifications_pb2_grpc.add_NotificationsServiceServicer_to_server,
            )
        ],
        # Ending the watch streams first lets the server drain without waiting out the grace.
        on_shutdown=[end_watches],
        cleanups=[store.close],
    )
