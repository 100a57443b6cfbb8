"""WatchNotifications' resume cursor, on both backends: every message and the headers carry a
cursor; a watcher that reconnects with the last one it received gets exactly what it missed,
oldest first, then what comes next, and nothing twice; a cursor this service did not issue is
INVALID_ARGUMENT CURSOR_INVALID."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc import aio

from services.common.clock import utc_now
from services.common.paging import Cursors
from services.common.status import field_violations
from services.notifications.app import build
from services.notifications.domain import (
    NewEvent,
    StoredNotification,
    event_fingerprint,
    new_notification_id,
    notification_for,
    validate_event,
    watch_cursor,
)
from services.notifications.servicer import event_from_proto
from services.notifications.store import SqlNotificationStore
from shop.notifications.v1 import notifications_pb2 as pb
from shop.notifications.v1 import notifications_pb2_grpc as pb_grpc
from tests.support.databases import ON_BOTH_BACKENDS
from tests.support.errors import expect_error_info
from tests.support.notifications import (
    WAIT,
    Notifications,
    Stub,
    event_ids,
    order_event,
    received,
    start_cursor,
    watch,
)
from tests.support.services import ServiceRunner

pytestmark = ON_BOTH_BACKENDS


async def publish(stub: Stub, *event_ids: str, user_id: str = "usr_1") -> None:
    await stub.PublishOrderEvents(
        pb.PublishOrderEventsRequest(
            events=[order_event(event_id=e, order_id=e, user_id=user_id) for e in event_ids]
        ),
        timeout=WAIT,
    )


async def test_the_headers_and_every_message_carry_a_cursor(
    notifications: Notifications,
) -> None:
    call = watch(notifications.stub, "usr_1")
    start = await start_cursor(call)
    await publish(notifications.stub, "evt_1", "evt_2")
    messages = await received(call, 2)
    call.cancel()
    cursors = [start, *(message.cursor for message in messages)]
    assert all(cursors)
    assert len(set(cursors)) == 3


async def test_reconnecting_with_the_last_cursor_gets_exactly_what_was_missed(
    notifications: Notifications,
) -> None:
    first = watch(notifications.stub, "usr_1")
    await start_cursor(first)
    await publish(notifications.stub, "evt_1")
    (seen,) = await received(first, 1)
    first.cancel()
    await publish(notifications.stub, "evt_2", "evt_3")
    await publish(notifications.stub, "evt_someone_else", user_id="usr_2")

    again = watch(notifications.stub, "usr_1", resume_cursor=seen.cursor)
    await start_cursor(again)
    missed = await received(again, 2)
    await publish(notifications.stub, "evt_4")
    (live,) = await received(again, 1)
    again.cancel()
    assert event_ids([seen, *missed, live]) == ["evt_1", "evt_2", "evt_3", "evt_4"]


async def test_a_watcher_that_received_nothing_resumes_from_the_headers_cursor(
    notifications: Notifications,
) -> None:
    await publish(notifications.stub, "evt_before")
    first = watch(notifications.stub, "usr_1")
    start = await start_cursor(first)
    first.cancel()
    await publish(notifications.stub, "evt_1")

    again = watch(notifications.stub, "usr_1", resume_cursor=start)
    assert await start_cursor(again) == start
    missed = await received(again, 1)
    again.cancel()
    assert event_ids(missed) == ["evt_1"]


async def test_resuming_from_the_start_replays_everything_oldest_first(
    notifications: Notifications,
) -> None:
    await publish(notifications.stub, "evt_1", "evt_2")
    await publish(notifications.stub, "evt_3")
    call = watch(notifications.stub, "usr_1", resume_cursor=watch_cursor(0))
    replayed = await received(call, 3)
    call.cancel()
    assert event_ids(replayed) == ["evt_1", "evt_2", "evt_3"]


async def test_a_notification_stored_between_subscribing_and_replaying_is_sent_once(
    services: ServiceRunner,
    channels: Callable[[str], aio.Channel],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The replay's first read is preceded by a write of evt_between: the read sees it, and the
    # feed (woken by the next publication, or on Postgres by the write's NOTIFY) hands it to the
    # subscription too. The watcher must get it once, in its place.
    original = SqlNotificationStore.user_after
    racing = [validate_event(event_from_proto(order_event(event_id="evt_between")))]

    async def user_after(
        self: SqlNotificationStore, user_id: str, sequence: int, limit: int
    ) -> list[StoredNotification]:
        while racing:
            event = racing.pop()
            notification = notification_for(event, new_notification_id(), utc_now())
            await self.record_all([NewEvent(event, event_fingerprint(event), notification)])
        return await original(self, user_id, sequence, limit)

    monkeypatch.setattr(SqlNotificationStore, "user_after", user_after)
    running = await services.start("notifications", build)
    stub = pb_grpc.NotificationsServiceStub(channels(running.address))
    await publish(stub, "evt_1")

    call = watch(stub, "usr_1", resume_cursor=watch_cursor(0))
    replayed = await received(call, 2)
    await publish(stub, "evt_2")
    (live,) = await received(call, 1)
    call.cancel()
    assert event_ids([*replayed, live]) == ["evt_1", "evt_between", "evt_2"]


def _cursors(**tokens: Any) -> list[Any]:
    return [pytest.param(token, id=name) for name, token in tokens.items()]


@pytest.mark.parametrize(
    "cursor",
    _cursors(
        not_base64="not a cursor!",
        not_json="bm90IGpzb24",
        a_list_page_token=Cursors("ListNotifications", (int,)).token((1,)),
        negative=watch_cursor(-1),
        later_than_anything_stored=watch_cursor(1_000_000),
        too_long="A" * 4096,
    ),
)
async def test_a_cursor_this_service_did_not_issue_is_cursor_invalid(
    notifications: Notifications, cursor: str
) -> None:
    await publish(notifications.stub, "evt_1")
    call = watch(notifications.stub, "usr_1", resume_cursor=cursor)
    with pytest.raises(aio.AioRpcError) as raised:
        await call.read()
    info = expect_error_info(raised.value, grpc.StatusCode.INVALID_ARGUMENT)
    assert info.reason == "CURSOR_INVALID"
    assert [v.field for v in field_violations(raised.value)] == ["resume_cursor"]
