"""A notifications service running in the test process, and the order events tests publish to
it (the fixture that starts it is in tests/integration/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from services.common.server import RunningService
from services.notifications.hub import NotificationHub
from services.notifications.servicer import NotificationsServicer
from shop.common.v1 import money_pb2
from shop.notifications.v1 import notifications_pb2 as pb
from shop.notifications.v1 import notifications_pb2_grpc as pb_grpc
from tests.support.callers import as_user

WAIT = 10.0
"""Bounds every wait for the server, so a broken test fails instead of hanging."""

Stub: TypeAlias = "pb_grpc.NotificationsServiceAsyncStub"


@dataclass
class Notifications:
    """A running notifications service and a client stub for it."""

    running: RunningService
    channel: aio.Channel
    stub: Stub

    @property
    def hub(self) -> NotificationHub:
        """The server's hub, to know when a watch is in place without sleeping."""
        servicer = self.running.app.registrations[0].servicer
        assert isinstance(servicer, NotificationsServicer)
        return servicer.hub


def order_event(**changes: Any) -> pb.OrderEvent:
    """A valid CONFIRMED event for usr_1, with `changes` applied."""
    event = pb.OrderEvent(
        event_id="evt_1",
        order_id="ord_1",
        user_id="usr_1",
        type=pb.ORDER_EVENT_TYPE_CONFIRMED,
        total=money_pb2.Money(currency_code="USD", minor_units=1299),
        occur_time=Timestamp(seconds=1_700_000_000),
    )
    for name, value in changes.items():
        if isinstance(value, Timestamp | money_pb2.Money):
            getattr(event, name).CopyFrom(value)
        else:
            setattr(event, name, value)
    return event


async def list_all(stub: Stub, user_id: str) -> list[pb.Notification]:
    """Every notification of `user_id` (up to one default page), newest first."""
    response = await stub.ListNotifications(
        pb.ListNotificationsRequest(user_id=user_id), timeout=WAIT, metadata=as_user(user_id)
    )
    return list(response.notifications)


CURSOR_HEADER = "shop-watch-cursor"
"""The response header that carries a watch's starting cursor (see notifications.proto)."""

WatchCall: TypeAlias = (
    "aio.UnaryStreamCall[pb.WatchNotificationsRequest, pb.WatchNotificationsResponse]"
)


def watch(stub: Stub, user_id: str, resume_cursor: str = "") -> WatchCall:
    """A WatchNotifications call by `user_id` for their own notifications (bounded by WAIT)."""
    return stub.WatchNotifications(
        pb.WatchNotificationsRequest(user_id=user_id, resume_cursor=resume_cursor),
        timeout=WAIT,
        metadata=as_user(user_id),
    )


async def start_cursor(call: WatchCall) -> str:
    """The cursor a watch's headers carry: where the stream starts (once subscribed)."""
    headers = await call.initial_metadata()
    cursors = [value for key, value in headers if key == CURSOR_HEADER]
    assert len(cursors) == 1, headers
    assert isinstance(cursors[0], str)
    return cursors[0]


async def received(call: WatchCall, count: int) -> list[pb.WatchNotificationsResponse]:
    """The next `count` messages of a watch."""
    messages = []
    for _ in range(count):
        message = await call.read()
        assert isinstance(message, pb.WatchNotificationsResponse), message
        messages.append(message)
    return messages


def event_ids(messages: list[pb.WatchNotificationsResponse]) -> list[str]:
    return [message.notification.event_id for message in messages]
