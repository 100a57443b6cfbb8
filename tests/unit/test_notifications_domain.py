"""Notifications domain and store (on temporary SQLite files): no network."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.common.caller import NOT_YOUR_DATA
from services.common.clock import from_micros
from services.common.errors import AlreadyExists, FieldViolation, InvalidArgument, PermissionDenied
from services.common.money import Money
from services.common.paging import Cursors
from services.notifications.domain import (
    CURSORS,
    MAX_ID_LENGTH,
    MAX_REASON_LENGTH,
    InvalidTime,
    ListQuery,
    Notification,
    Notifications,
    OrderEvent,
    OrderEventType,
    RecordOutcome,
    event_fingerprint,
    format_money,
    notification_for,
    render,
    validate_event,
    validate_list_query,
    validate_watch,
)
from services.notifications.store import SqlNotificationStore
from tests.support.databases import INTEGRITY_ERRORS
from tests.support.samples import OCCURRED, make_event, make_notification


def fields(error: InvalidArgument) -> list[str]:
    return [violation.field for violation in error.violations]


@pytest.fixture
async def store(db_location: Path | str) -> AsyncIterator[SqlNotificationStore]:
    opened = await SqlNotificationStore.open(db_location)
    yield opened
    await opened.close()


async def record(store: SqlNotificationStore, event: OrderEvent, number: int = 1) -> RecordOutcome:
    outcome, _ = await store.record(
        event, event_fingerprint(event), make_notification(event, number)
    )
    return outcome


# --- validation ---------------------------------------------------------------------------


def test_valid_event_is_returned_unchanged() -> None:
    event = make_event()
    assert validate_event(event) is event


def test_missing_event_is_one_violation_on_event() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_event(None)
    assert raised.value.violations == [FieldViolation("event", "is required")]


def test_every_bad_field_of_an_event_is_reported_at_once() -> None:
    event = make_event(
        event_id="",
        order_id=" ",
        user_id="",
        type=OrderEventType.UNSPECIFIED,
        reason="x" * (MAX_REASON_LENGTH + 1),
        total=Money("usd", -1),
        occur_time=None,
    )
    with pytest.raises(InvalidArgument) as raised:
        validate_event(event)
    assert fields(raised.value) == [
        "event.event_id",
        "event.order_id",
        "event.user_id",
        "event.type",
        "event.reason",
        "event.total.currency_code",
        "event.total.minor_units",
        "event.occur_time",
    ]


def test_ids_longer_than_the_limit_are_rejected() -> None:
    too_long = "x" * (MAX_ID_LENGTH + 1)
    with pytest.raises(InvalidArgument) as raised:
        validate_event(make_event(event_id=too_long, order_id=too_long, user_id=too_long))
    assert fields(raised.value) == ["event.event_id", "event.order_id", "event.user_id"]
    assert raised.value.violations[0].description == "must be at most 128 characters"


def test_occur_time_no_datetime_can_hold_is_rejected_with_its_problem() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_event(make_event(occur_time=InvalidTime("must be between years 1 and 9999")))
    assert raised.value.violations == [
        FieldViolation("event.occur_time", "must be between years 1 and 9999")
    ]


def test_event_without_total_is_valid() -> None:
    assert validate_event(make_event(total=None)).total is None


def test_a_watch_without_user_id_follows_the_caller() -> None:
    assert validate_watch("usr_1", "") == "usr_1"
    assert validate_watch("usr_1", "usr_1") == "usr_1"


def test_a_watch_of_another_user_is_refused() -> None:
    with pytest.raises(PermissionDenied) as raised:
        validate_watch("usr_1", "usr_2")
    assert raised.value.reason == NOT_YOUR_DATA


def test_list_query_reports_user_page_size_and_token_together() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_list_query("", -1, "not-a-token")
    assert fields(raised.value) == ["user_id", "page_size", "page_token"]


def test_list_query_first_page_has_no_cursor_and_default_size() -> None:
    assert validate_list_query("usr_1", 0, "") == ListQuery("usr_1", 50, None)


def test_list_query_reads_the_cursor_from_the_token() -> None:
    assert validate_list_query("usr_1", 10, CURSORS.token((7,))).before == 7


def test_list_query_refuses_a_token_of_another_list_rpc() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_list_query("usr_1", 10, Cursors("ListOrders", (int,)).token((7,)))
    assert fields(raised.value) == ["page_token"]


# --- fingerprints and rendering ------------------------------------------------------------


def test_equal_events_have_equal_fingerprints() -> None:
    assert event_fingerprint(make_event()) == event_fingerprint(make_event())


@pytest.mark.parametrize(
    "change",
    [
        {"order_id": "ord_2"},
        {"user_id": "usr_2"},
        {"type": OrderEventType.CANCELLED},
        {"reason": "changed my mind"},
        {"total": Money("USD", 1300)},
        {"total": Money("EUR", 1299)},
        {"total": None},
        {"occur_time": from_micros(1)},
    ],
)
def test_changing_any_field_changes_the_fingerprint(change: dict[str, Any]) -> None:
    assert event_fingerprint(make_event(**change)) != event_fingerprint(make_event())


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (Money("USD", 1299), "USD 12.99"),
        (Money("USD", 5), "USD 0.05"),
        (Money("JPY", 1200), "JPY 1200"),
        (Money("KWD", 1250), "KWD 1.250"),
    ],
)
def test_money_is_formatted_with_the_currency_decimals(amount: Money, text: str) -> None:
    assert format_money(amount) == text


def test_confirmed_event_renders_with_its_total() -> None:
    assert render(make_event()) == (
        "Order confirmed",
        "Your order ord_1 is confirmed. Total: USD 12.99.",
    )


def test_rejection_reason_codes_are_explained() -> None:
    event = make_event(type=OrderEventType.REJECTED, reason="CARD_DECLINED")
    assert render(event) == (
        "Order rejected",
        "We could not place your order ord_1: your card was declined.",
    )


def test_unknown_rejection_reason_is_shown_as_given() -> None:
    event = make_event(type=OrderEventType.REJECTED, reason="Payment service timed out.")
    assert render(event)[1] == "We could not place your order ord_1: Payment service timed out."


def test_rejection_without_reason_renders_a_plain_sentence() -> None:
    event = make_event(type=OrderEventType.REJECTED, reason="", total=None)
    assert render(event)[1] == "We could not place your order ord_1."


def test_cancellation_mentions_reason_and_refund() -> None:
    event = make_event(type=OrderEventType.CANCELLED, reason="changed my mind")
    assert render(event) == (
        "Order cancelled",
        "Your order ord_1 was cancelled: changed my mind. USD 12.99 will be refunded to your card.",
    )


def test_notification_copies_the_event_ids_and_type() -> None:
    created = datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    notification = notification_for(make_event(), "ntf_x", created)
    assert (notification.user_id, notification.event_id, notification.order_id) == (
        "usr_1",
        "evt_1",
        "ord_1",
    )
    assert (notification.event_type, notification.create_time) == (
        OrderEventType.CONFIRMED,
        created,
    )


# --- store ---------------------------------------------------------------------------------


async def test_new_event_is_created_and_listed(store: SqlNotificationStore) -> None:
    event = make_event()
    assert await record(store, event) is RecordOutcome.CREATED
    page = await store.list_for_user(ListQuery("usr_1", 10, None))
    assert page.notifications == (make_notification(event),)
    assert page.next_cursor is None


async def test_same_event_again_is_a_duplicate_returning_the_first_notification(
    store: SqlNotificationStore,
) -> None:
    event = make_event()
    await record(store, event, number=1)
    outcome, notification = await store.record(
        event, event_fingerprint(event), make_notification(event, 2)
    )
    assert outcome is RecordOutcome.DUPLICATE
    assert notification.notification_id == "ntf_1"
    assert len((await store.list_for_user(ListQuery("usr_1", 10, None))).notifications) == 1


async def test_same_event_id_with_other_content_is_a_conflict_that_writes_nothing(
    store: SqlNotificationStore,
) -> None:
    await record(store, make_event())
    assert await record(store, make_event(order_id="ord_2"), number=2) is RecordOutcome.CONFLICT
    assert len((await store.list_for_user(ListQuery("usr_1", 10, None))).notifications) == 1


async def test_duplicates_are_detected_after_reopening_the_database(
    db_location: Path | str,
) -> None:
    path = db_location
    first = await SqlNotificationStore.open(path)
    await record(first, make_event())
    await first.close()
    reopened = await SqlNotificationStore.open(path)
    try:
        assert await record(reopened, make_event(), number=2) is RecordOutcome.DUPLICATE
    finally:
        await reopened.close()


async def test_event_is_not_kept_when_its_notification_cannot_be_stored(
    store: SqlNotificationStore,
) -> None:
    await record(store, make_event(event_id="evt_1"), number=1)
    clashing = make_event(event_id="evt_2")
    # Reusing notification id ntf_1 violates its UNIQUE constraint after the event row went in.
    with pytest.raises(INTEGRITY_ERRORS):
        await store.record(clashing, event_fingerprint(clashing), make_notification(clashing, 1))
    assert await record(store, clashing, number=2) is RecordOutcome.CREATED


async def test_list_is_newest_first_and_only_for_the_user(store: SqlNotificationStore) -> None:
    await record(store, make_event(event_id="evt_1"), number=1)
    await record(store, make_event(event_id="evt_2", user_id="usr_2"), number=2)
    await record(store, make_event(event_id="evt_3"), number=3)
    page = await store.list_for_user(ListQuery("usr_1", 10, None))
    assert [n.event_id for n in page.notifications] == ["evt_3", "evt_1"]


async def test_pages_do_not_shift_when_notifications_arrive_between_them(
    store: SqlNotificationStore,
) -> None:
    for number in range(1, 6):
        await record(store, make_event(event_id=f"evt_{number}"), number=number)
    first = await store.list_for_user(ListQuery("usr_1", 2, None))
    await record(store, make_event(event_id="evt_6"), number=6)
    second = await store.list_for_user(ListQuery("usr_1", 2, first.next_cursor))
    third = await store.list_for_user(ListQuery("usr_1", 2, second.next_cursor))
    assert [n.event_id for n in first.notifications] == ["evt_5", "evt_4"]
    assert [n.event_id for n in second.notifications] == ["evt_3", "evt_2"]
    assert [n.event_id for n in third.notifications] == ["evt_1"]
    assert third.next_cursor is None


# --- Notifications (domain service on a real store) ----------------------------------------


async def test_publish_delivers_a_new_notification_once(store: SqlNotificationStore) -> None:
    delivered: list[Notification] = []
    notifications = Notifications(store, delivered.append, clock=lambda: OCCURRED)
    first = await notifications.publish(make_event())
    again = await notifications.publish(make_event())
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.notification == first.notification
    assert delivered == [first.notification]


async def test_publish_with_a_reused_event_id_raises_idempotency_key_reused(
    store: SqlNotificationStore,
) -> None:
    notifications = Notifications(store, lambda _: None)
    await notifications.publish(make_event())
    with pytest.raises(AlreadyExists) as raised:
        await notifications.publish(make_event(reason="different"))
    assert raised.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert raised.value.metadata == {"event_id": "evt_1"}


async def test_publish_of_an_invalid_event_stores_and_delivers_nothing(
    store: SqlNotificationStore,
) -> None:
    delivered: list[Notification] = []
    notifications = Notifications(store, delivered.append)
    with pytest.raises(InvalidArgument):
        await notifications.publish(make_event(type=OrderEventType.UNSPECIFIED))
    assert delivered == []
    assert (await notifications.list("usr_1", "usr_1", 0, "")).notifications == ()


async def test_list_returns_a_token_for_the_next_page(store: SqlNotificationStore) -> None:
    notifications = Notifications(store, lambda _: None)
    for number in range(1, 4):
        await notifications.publish(make_event(event_id=f"evt_{number}"))
    first = await notifications.list("usr_1", "usr_1", 2, "")
    rest = await notifications.list("usr_1", "usr_1", 2, first.next_page_token)
    assert [n.event_id for n in first.notifications + rest.notifications] == [
        "evt_3",
        "evt_2",
        "evt_1",
    ]
    assert rest.next_page_token == ""
