"""Wiring of the notifications service: store, hub, domain and servicer, as an App for
common.server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from services.common.config import ServiceConfig
from services.common.database import is_postgres
from services.common.server import App, Registration
from services.notifications.domain import Notifications
from services.notifications.feed import Feed
from services.notifications.hub import NotificationHub
from services.notifications.servicer import NotificationsServicer
from services.notifications.store import NOTIFY_CHANNEL, SqlNotificationStore
from shop.notifications.v1 import notifications_pb2, notifications_pb2_grpc

# Watchers only drain their buffers once the hub closes; a watcher slower than this is left
# to the server's grace period.
WATCHES_END_WITHIN_SECONDS = 2.0

SERVICE_NAME = notifications_pb2.DESCRIPTOR.services_by_name["NotificationsService"].full_name


async def build(config: ServiceConfig) -> App:
    """The notifications App: NotificationsService on its database (`config.database`).

    Watchers are fed from the database (services.notifications.feed): on SQLite after each of
    this process's publications, the only writer; on Postgres also on every other replica's,
    through LISTEN/NOTIFY, so any number of replicas may share the database."""
    store = await SqlNotificationStore.open(config.database)
    # Live from what is stored now: older notifications are replayed from the store.
    hub = NotificationHub(position=await store.last_sequence())
    feed = Feed(store, hub)
    servicer = NotificationsServicer(Notifications(store, lambda _: feed.wake()), hub)
    background: list[Callable[[], Coroutine[Any, Any, None]]] = [feed.run]
    if is_postgres(config.database):
        url = str(config.database)

        async def follow_every_replica() -> None:
            await feed.follow(url, NOTIFY_CHANNEL)

        background.append(follow_every_replica)

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
        background=background,
        # Ending the watch streams first lets the server drain without waiting out the grace.
        on_shutdown=[end_watches],
        cleanups=[store.close],
    )
