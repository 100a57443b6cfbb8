"""PublishOrderEvents over a real grpc.aio server on a temporary Unix socket: many events in
one transaction, all or nothing, each idempotent by event id as PublishOrderEvent is."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc import aio

from services.common.status import field_violations
from services.notifications.domain import MAX_BATCH_EVENTS
from shop.notifications.v1 import notifications_pb2 as pb
from tests.support.callers import as_user
from tests.support.databases import ON_BOTH_BACKENDS
from tests.support.errors import expect_error_info
from tests.support.notifications import WAIT, Notifications, Stub, list_all, order_event

pytestmark = ON_BOTH_BACKENDS


async def publish_all(stub: Stub, *events: pb.OrderEvent) -> pb.PublishOrderEventsResponse:
    return await stub.PublishOrderEvents(pb.PublishOrderEventsRequest(events=events), timeout=WAIT)


def events_of(*orders: str) -> list[pb.OrderEvent]:
    return [order_event(event_id=f"evt_{order}", order_id=order) for order in orders]


async def test_a_batch_is_stored_in_its_order(notifications: Notifications) -> None:
    cancelled = order_event(event_id="evt_ord_1_cancelled", type=pb.ORDER_EVENT_TYPE_CANCELLED)
    events = [*events_of("ord_1", "ord_2"), cancelled]

    published = await publish_all(notifications.stub, *events)

    assert [r.duplicate for r in published.results] == [False, False, False]
    notes = [r.notification for r in published.results]
    assert [n.event_id for n in notes] == [e.event_id for e in events]
    assert await list_all(notifications.stub, "usr_1") == notes[::-1]


async def test_streamed_notifications_follow_the_batch_order(
    notifications: Notifications,
) -> None:
    call = notifications.stub.WatchNotifications(
        pb.WatchNotificationsRequest(user_id="usr_1"), timeout=WAIT, metadata=as_user("usr_1")
    )
    await asyncio.wait_for(call.initial_metadata(), WAIT)
    published = await publish_all(notifications.stub, *events_of("ord_1", "ord_2", "ord_3"))
    streamed = []
    for _ in published.results:
        message = await call.read()
        assert isinstance(message, pb.WatchNotificationsResponse)
        streamed.append(message.notification)
    call.cancel()
    assert streamed == [r.notification for r in published.results]


async def test_a_batch_sent_again_or_overlapping_one_is_recorded_once(
    notifications: Notifications,
) -> None:
    first = await publish_all(notifications.stub, *events_of("ord_1", "ord_2"))
    again = await publish_all(notifications.stub, *events_of("ord_2", "ord_3", "ord_3"))

    assert [r.duplicate for r in again.results] == [True, False, True]
    assert again.results[0].notification == first.results[1].notification
    assert again.results[2].notification == again.results[1].notification
    listed = await list_all(notifications.stub, "usr_1")
    assert [n.order_id for n in listed] == ["ord_3", "ord_2", "ord_1"]


async def test_a_reused_event_id_refuses_the_whole_batch_naming_its_index(
    notifications: Notifications,
) -> None:
    await publish_all(notifications.stub, *events_of("ord_1"))
    clashing = order_event(event_id="evt_ord_1", order_id="ord_1", reason="other content")

    with pytest.raises(aio.AioRpcError) as raised:
        await publish_all(notifications.stub, *events_of("ord_2"), clashing, *events_of("ord_3"))

    info = expect_error_info(raised.value, grpc.StatusCode.ALREADY_EXISTS)
    assert info.reason == "IDEMPOTENCY_KEY_REUSED"
    assert dict(info.metadata) == {"event_id": "evt_ord_1", "index": "1"}
    # All or nothing: ord_2, before the clash, was not kept either.
    assert [n.order_id for n in await list_all(notifications.stub, "usr_1")] == ["ord_1"]


async def test_invalid_events_refuse_the_batch_listing_every_bad_field(
    notifications: Notifications,
) -> None:
    events = [*events_of("ord_1"), order_event(user_id=""), order_event(event_id="", type=0)]

    with pytest.raises(aio.AioRpcError) as raised:
        await publish_all(notifications.stub, *events)

    info = expect_error_info(raised.value, grpc.StatusCode.INVALID_ARGUMENT)
    assert (info.reason, dict(info.metadata)) == ("INVALID_ARGUMENT", {"index": "1"})
    assert [v.field for v in field_violations(raised.value)] == [
        "events[1].user_id",
        "events[2].event_id",
        "events[2].type",
    ]
    assert await list_all(notifications.stub, "usr_1") == []


@pytest.mark.parametrize("count", [0, MAX_BATCH_EVENTS + 1])
async def test_a_batch_of_no_or_too_many_events_is_invalid_without_an_index(
    notifications: Notifications, count: int
) -> None:
    events = events_of(*(f"ord_{n}" for n in range(count)))

    with pytest.raises(aio.AioRpcError) as raised:
        await publish_all(notifications.stub, *events)

    info = expect_error_info(raised.value, grpc.StatusCode.INVALID_ARGUMENT)
    assert dict(info.metadata) == {}
    assert [v.field for v in field_violations(raised.value)] == ["events"]
