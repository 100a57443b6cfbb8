"""gRPC handlers of shop.notifications.v1.NotificationsService: proto in, domain call, proto out.

Domain errors are not handled here: DomainErrors raised by the domain become status codes with
rich details in the shared ErrorMappingInterceptor. Listing and watching answer only a signed-in
caller (UNAUTHENTICATED SIGN_IN_REQUIRED without one); publishing is orders' call and needs none.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

from grpc import aio

from services.common.caller import require_caller
from services.common.convert import from_timestamp, money_from_proto, to_timestamp
from services.notifications.domain import (
    InvalidTime,
    Notification,
    Notifications,
    OrderEvent,
    OrderEventType,
    StoredNotification,
    validate_watch,
    watch_cursor,
)
from services.notifications.hub import NotificationHub, resume
from shop.notifications.v1 import notifications_pb2 as pb
from shop.notifications.v1 import notifications_pb2_grpc as pb_grpc

_EVENT_TYPES: Mapping[int, OrderEventType] = {
    pb.ORDER_EVENT_TYPE_CONFIRMED: OrderEventType.CONFIRMED,
    pb.ORDER_EVENT_TYPE_REJECTED: OrderEventType.REJECTED,
    pb.ORDER_EVENT_TYPE_CANCELLED: OrderEventType.CANCELLED,
}
# The response header (initial metadata) carrying the cursor of a watch's starting position.
CURSOR_HEADER = "shop-watch-cursor"
_EVENT_TYPE_NUMBERS: Mapping[OrderEventType, pb.OrderEventType.ValueType] = {
    OrderEventType.UNSPECIFIED: pb.ORDER_EVENT_TYPE_UNSPECIFIED,
    OrderEventType.CONFIRMED: pb.ORDER_EVENT_TYPE_CONFIRMED,
    OrderEventType.REJECTED: pb.ORDER_EVENT_TYPE_REJECTED,
    OrderEventType.CANCELLED: pb.ORDER_EVENT_TYPE_CANCELLED,
}


def _occur_time(event: pb.OrderEvent) -> datetime | InvalidTime | None:
    if not event.HasField("occur_time"):
        return None
    try:
        return from_timestamp(event.occur_time)
    except ValueError as error:
        return InvalidTime(str(error))


def event_from_proto(event: pb.OrderEvent) -> OrderEvent:
    """The domain form of a wire OrderEvent (not validated; unknown types become UNSPECIFIED,
    a Timestamp no datetime can hold becomes InvalidTime)."""
    return OrderEvent(
        event_id=event.event_id,
        order_id=event.order_id,
        user_id=event.user_id,
        type=_EVENT_TYPES.get(event.type, OrderEventType.UNSPECIFIED),
        reason=event.reason,
        total=money_from_proto(event.total) if event.HasField("total") else None,
        occur_time=_occur_time(event),
    )


def notification_to_proto(notification: Notification) -> pb.Notification:
    """The wire form of a domain Notification."""
    return pb.Notification(
        notification_id=notification.notification_id,
        user_id=notification.user_id,
        event_id=notification.event_id,
        order_id=notification.order_id,
        title=notification.title,
        body=notification.body,
        create_time=to_timestamp(notification.create_time),
        event_type=_EVENT_TYPE_NUMBERS[notification.event_type],
    )


def watch_response(stored: StoredNotification) -> pb.WatchNotificationsResponse:
    """One message of a watch: the notification and the cursor that resumes after it."""
    return pb.WatchNotificationsResponse(
        notification=notification_to_proto(stored.notification), cursor=stored.cursor
    )


class NotificationsServicer(pb_grpc.NotificationsServiceServicer):
    """NotificationsService backed by the notifications domain and the watchers' hub."""

    def __init__(self, notifications: Notifications, hub: NotificationHub) -> None:
        self._notifications = notifications
        self.hub = hub
        # One event per open WatchNotifications call, set once grpcio has finished the call.
        self._open_watches: set[asyncio.Event] = set()

    async def end_watches(self) -> None:
        """Close the hub and wait until every watch call has ended. Stopping the server right
        after the hub closes could close a connection while a stream's final status is still
        queued, and its watcher would see UNAVAILABLE instead of the end of the stream."""
        self.hub.close()
        for done in list(self._open_watches):
            await done.wait()

    async def PublishOrderEvent(
        self, request: pb.PublishOrderEventRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.PublishOrderEventResponse:
        """See notifications.proto."""
        event = event_from_proto(request.event) if request.HasField("event") else None
        published = await self._notifications.publish(event)
        return pb.PublishOrderEventResponse(
            duplicate=published.duplicate,
            notification=notification_to_proto(published.notification),
        )

    async def PublishOrderEvents(
        self, request: pb.PublishOrderEventsRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.PublishOrderEventsResponse:
        """See notifications.proto."""
        published = await self._notifications.publish_all(
            [event_from_proto(event) for event in request.events]
        )
        return pb.PublishOrderEventsResponse(
            results=[
                pb.PublishedOrderEvent(
                    duplicate=p.duplicate, notification=notification_to_proto(p.notification)
                )
                for p in published
            ]
        )

    async def ListNotifications(
        self, request: pb.ListNotificationsRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ListNotificationsResponse:
        """See notifications.proto."""
        page = await self._notifications.list(
            require_caller(context), request.user_id, request.page_size, request.page_token
        )
        return pb.ListNotificationsResponse(
            notifications=[notification_to_proto(n) for n in page.notifications],
            next_page_token=page.next_page_token,
        )

    async def WatchNotifications(
        self, request: pb.WatchNotificationsRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchNotificationsResponse]:
        """See notifications.proto. Ends when the client cancels (the subscription is closed by
        the `with`) or when the hub closes on shutdown.

        The stream's start (the resume cursor's position, or for a fresh watch the last one
        stored) is read once the subscription is in place, so whatever that read, or the
        replay's, misses reaches the subscription; `resume` drops what was sent already. The
        headers go out then, with the cursor of that start."""
        watched = validate_watch(require_caller(context), request.user_id)
        resumed = await self._notifications.resume_point(request.resume_cursor)
        done = asyncio.Event()
        self._open_watches.add(done)

        def finished(_: aio.ServicerContext[Any, Any]) -> None:
            self._open_watches.discard(done)
            done.set()

        # grpc-stubs declares the callback type as a class rather than a Protocol.
        context.add_done_callback(finished)  # type: ignore[arg-type]
        with self.hub.subscribe(watched) as subscription:
            if resumed is None:
                start = await self._notifications.last_sequence()
            else:
                start = resumed
            await context.send_initial_metadata(((CURSOR_HEADER, watch_cursor(start)),))
            replay = self._notifications.replay(watched, start)
            async for stored in resume(subscription, replay, start):
                yield watch_response(stored)
