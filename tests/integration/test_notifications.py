"""NotificationsService over a real grpc.aio server on a temporary Unix socket."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from services.common.clock import utc_now
from services.common.errors import FieldViolation
from services.common.status import field_violations
from services.notifications.app import build
from services.notifications.domain import (
    OrderEvent,
    StoredNotification,
    notification_for,
    validate_event,
)
from services.notifications.hub import DEFAULT_CAPACITY
from services.notifications.servicer import event_from_proto
from shop.common.v1 import money_pb2
from shop.notifications.v1 import notifications_pb2 as pb
from shop.notifications.v1 import notifications_pb2_grpc as pb_grpc
from tests.support.callers import as_user
from tests.support.databases import ON_BOTH_BACKENDS
from tests.support.db_locks import WriteWatch, serves_while_a_write_waits
from tests.support.errors import expect_error_info
from tests.support.notifications import WAIT, Notifications, Stub, list_all, order_event
from tests.support.polling import eventually
from tests.support.services import ServiceRunner

pytestmark = ON_BOTH_BACKENDS


def domain_event(**changes: Any) -> OrderEvent:
    """`order_event(**changes)` in its domain form."""
    return event_from_proto(order_event(**changes))


async def publish(stub: Stub, **changes: Any) -> pb.PublishOrderEventResponse:
    return await stub.PublishOrderEvent(
        pb.PublishOrderEventRequest(event=order_event(**changes)), timeout=WAIT
    )


async def test_published_event_is_listed_as_a_notification(notifications: Notifications) -> None:
    published = await publish(notifications.stub)
    listed = await list_all(notifications.stub, "usr_1")
    assert not published.duplicate
    assert listed == [published.notification]
    notification = listed[0]
    assert notification.notification_id.startswith("ntf_")
    assert (notification.event_id, notification.order_id, notification.event_type) == (
        "evt_1",
        "ord_1",
        pb.ORDER_EVENT_TYPE_CONFIRMED,
    )
    assert (notification.title, notification.body) == (
        "Order confirmed",
        "Your order ord_1 is confirmed. Total: USD 12.99.",
    )
    assert notification.create_time.seconds > 0


async def test_publishing_the_same_event_twice_creates_one_notification(
    notifications: Notifications,
) -> None:
    first = await publish(notifications.stub)
    second = await publish(notifications.stub)
    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.notification == first.notification
    assert len(await list_all(notifications.stub, "usr_1")) == 1


async def test_duplicate_is_recognised_after_a_restart(
    services: ServiceRunner, channels: Callable[[str], aio.Channel]
) -> None:
    first_run = await services.start("notifications", build)
    first = await publish(pb_grpc.NotificationsServiceStub(channels(first_run.address)))
    await services.stop(first_run)
    second_run = await services.start("notifications", build)
    again = await publish(pb_grpc.NotificationsServiceStub(channels(second_run.address)))
    assert again.duplicate
    assert again.notification == first.notification


async def test_same_event_id_with_other_content_is_already_exists(
    notifications: Notifications,
) -> None:
    await publish(notifications.stub)
    with pytest.raises(aio.AioRpcError) as raised:
        await publish(notifications.stub, reason="something else")
    info = expect_error_info(raised.value, grpc.StatusCode.ALREADY_EXISTS)
    assert info.reason == "IDEMPOTENCY_KEY_REUSED"
    assert dict(info.metadata) == {"event_id": "evt_1"}


async def test_invalid_event_lists_every_bad_field(notifications: Notifications) -> None:
    event = pb.OrderEvent(
        user_id="usr_1",
        total=money_pb2.Money(currency_code="dollars", minor_units=-5),
    )
    with pytest.raises(aio.AioRpcError) as raised:
        await notifications.stub.PublishOrderEvent(
            pb.PublishOrderEventRequest(event=event), timeout=WAIT
        )
    info = expect_error_info(raised.value, grpc.StatusCode.INVALID_ARGUMENT)
    assert info.reason == "INVALID_ARGUMENT"
    assert [v.field for v in field_violations(raised.value)] == [
        "event.event_id",
        "event.order_id",
        "event.type",
        "event.total.currency_code",
        "event.total.minor_units",
        "event.occur_time",
    ]


@pytest.mark.parametrize(
    ("occur_time", "problem"),
    [
        (Timestamp(seconds=253_402_300_800), "must be between years 1 and 9999"),
        (Timestamp(seconds=-62_135_596_801), "must be between years 1 and 9999"),
        (Timestamp(seconds=1_700_000_000, nanos=-1), "must have nanos between 0 and 999999999"),
    ],
)
async def test_occur_time_no_datetime_can_hold_is_invalid_argument(
    notifications: Notifications, occur_time: Timestamp, problem: str
) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await publish(notifications.stub, occur_time=occur_time)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(raised.value) == [FieldViolation("event.occur_time", problem)]


async def test_occur_time_at_the_end_of_year_9999_is_accepted(
    notifications: Notifications,
) -> None:
    published = await publish(
        notifications.stub, occur_time=Timestamp(seconds=253_402_300_799, nanos=999_999_999)
    )
    assert not published.duplicate


async def test_unknown_event_type_number_is_invalid(notifications: Notifications) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await publish(notifications.stub, type=99)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(raised.value)] == ["event.type"]


async def test_request_without_event_is_invalid(notifications: Notifications) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await notifications.stub.PublishOrderEvent(pb.PublishOrderEventRequest(), timeout=WAIT)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(raised.value)] == ["event"]


async def test_list_pages_newest_first_per_user(notifications: Notifications) -> None:
    for number in range(1, 4):
        await publish(notifications.stub, event_id=f"evt_{number}")
    await publish(notifications.stub, event_id="evt_other", user_id="usr_2")
    first = await notifications.stub.ListNotifications(
        pb.ListNotificationsRequest(user_id="usr_1", page_size=2),
        timeout=WAIT,
        metadata=as_user("usr_1"),
    )
    rest = await notifications.stub.ListNotifications(
        pb.ListNotificationsRequest(user_id="usr_1", page_size=2, page_token=first.next_page_token),
        timeout=WAIT,
        metadata=as_user("usr_1"),
    )
    assert [n.event_id for n in first.notifications] == ["evt_3", "evt_2"]
    assert [n.event_id for n in rest.notifications] == ["evt_1"]
    assert rest.next_page_token == ""


async def test_list_with_bad_arguments_names_each_field(notifications: Notifications) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await notifications.stub.ListNotifications(
            pb.ListNotificationsRequest(user_id="", page_size=-1, page_token="bogus"),
            timeout=WAIT,
            metadata=as_user("usr_1"),
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    # An empty user_id means the caller.
    assert [v.field for v in field_violations(raised.value)] == ["page_size", "page_token"]


async def test_watch_receives_a_notification_published_after_it_started(
    notifications: Notifications,
) -> None:
    call = notifications.stub.WatchNotifications(
        pb.WatchNotificationsRequest(user_id="usr_1"), timeout=WAIT, metadata=as_user("usr_1")
    )
    # The server sends headers once it has subscribed: from then on nothing is missed.
    await call.initial_metadata()
    await publish(notifications.stub, event_id="evt_other_user", user_id="usr_2")
    published = await publish(notifications.stub)
    received = await call.read()
    call.cancel()
    assert isinstance(received, pb.WatchNotificationsResponse)
    assert received.notification == published.notification


async def test_duplicate_publication_is_not_streamed_again(notifications: Notifications) -> None:
    call = notifications.stub.WatchNotifications(
        pb.WatchNotificationsRequest(user_id="usr_1"), timeout=WAIT, metadata=as_user("usr_1")
    )
    await call.initial_metadata()
    await publish(notifications.stub, event_id="evt_1")
    await publish(notifications.stub, event_id="evt_1")
    await publish(notifications.stub, event_id="evt_2")
    first, second = await call.read(), await call.read()
    call.cancel()
    assert isinstance(first, pb.WatchNotificationsResponse)
    assert isinstance(second, pb.WatchNotificationsResponse)
    assert [first.notification.event_id, second.notification.event_id] == ["evt_1", "evt_2"]


async def test_cancelled_watch_releases_its_subscription(notifications: Notifications) -> None:
    call = notifications.stub.WatchNotifications(
        pb.WatchNotificationsRequest(user_id="usr_1"), timeout=WAIT, metadata=as_user("usr_1")
    )
    # Headers come once the subscription exists (the contract says so).
    await asyncio.wait_for(call.initial_metadata(), WAIT)
    assert notifications.hub.subscriber_count("usr_1") == 1
    call.cancel()

    async def released() -> bool:
        return notifications.hub.subscriber_count("usr_1") == 0

    await eventually(released, WAIT, "the watch's subscription to be released")


async def test_watch_without_user_follows_the_caller(notifications: Notifications) -> None:
    call = notifications.stub.WatchNotifications(
        pb.WatchNotificationsRequest(), timeout=WAIT, metadata=as_user("usr_1")
    )
    await call.initial_metadata()
    published = await publish(notifications.stub)
    received = await call.read()
    call.cancel()
    assert isinstance(received, pb.WatchNotificationsResponse)
    assert received.notification == published.notification


async def test_watch_ends_with_ok_when_the_hub_closes(notifications: Notifications) -> None:
    call = notifications.stub.WatchNotifications(
        pb.WatchNotificationsRequest(user_id="usr_1"), timeout=WAIT, metadata=as_user("usr_1")
    )
    await call.initial_metadata()
    notifications.hub.close()
    assert await call.read() is aio.EOF
    assert await call.code() is grpc.StatusCode.OK


async def test_watch_ends_when_the_server_stops(
    services: ServiceRunner, notifications: Notifications
) -> None:
    call = notifications.stub.WatchNotifications(
        pb.WatchNotificationsRequest(user_id="usr_1"), timeout=WAIT, metadata=as_user("usr_1")
    )
    await call.initial_metadata()
    # A long grace would make stop() wait for open streams; the shutdown hook ends them first.
    stopping = asyncio.create_task(services.stop(notifications.running, grace=30.0))
    assert await call.read() is aio.EOF
    assert await call.code() is grpc.StatusCode.OK
    await asyncio.wait_for(stopping, timeout=WAIT)


async def test_watcher_that_falls_behind_gets_resource_exhausted(
    notifications: Notifications,
) -> None:
    call = notifications.stub.WatchNotifications(
        pb.WatchNotificationsRequest(user_id="usr_1"), timeout=WAIT, metadata=as_user("usr_1")
    )
    await call.initial_metadata()
    notification = notification_for(validate_event(domain_event()), "ntf_1", utc_now())
    # Publishing straight into the hub, without yielding to the event loop, overfills the
    # watcher's buffer before the server can send anything: the slowest possible client.
    for number in range(1, DEFAULT_CAPACITY + 2):
        notifications.hub.publish(StoredNotification(number, notification))
    # What was buffered is still delivered; then the stream fails.
    for _ in range(DEFAULT_CAPACITY):
        message = await call.read()
        assert isinstance(message, pb.WatchNotificationsResponse)
        assert message.notification.notification_id == "ntf_1"
    with pytest.raises(aio.AioRpcError) as raised:
        await call.read()
    info = expect_error_info(raised.value, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert info.reason == "WATCHER_TOO_SLOW"


async def test_list_and_health_answer_while_a_publication_waits_for_the_database_lock(
    services: ServiceRunner, notifications: Notifications, database_writes: WriteWatch
) -> None:
    await publish(notifications.stub, event_id="evt_1")

    published = await serves_while_a_write_waits(
        db_path=services.config("notifications").database,
        channel=notifications.channel,
        writes=database_writes,
        read=lambda: list_all(notifications.stub, "usr_1"),
        write=lambda: publish(notifications.stub, event_id="evt_2"),
    )

    assert not published.duplicate
    assert [n.event_id for n in await list_all(notifications.stub, "usr_1")] == ["evt_2", "evt_1"]
