"""Notifications domain, store (on temporary SQLite files) and hub: no network."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common.errors import AlreadyExists, FieldViolation, InvalidArgument
from services.common.money import Money
from services.common.paging import encode_token
from services.notifications.domain import (
    MAX_ID_LENGTH,
    MAX_REASON_LENGTH,
    MAX_TIME_US,
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
    validate_user_id,
)
from services.notifications.hub import NotificationHub, SubscriberOverflow, Subscription
from services.notifications.store import SqliteNotificationStore

# Bounds every wait on the hub, so a broken test fails instead of hanging.
WAIT = 5.0


def make_event(**changes: Any) -> OrderEvent:
    """A valid CONFIRMED event, with `changes` applied."""
    event = OrderEvent(
        event_id="evt_1",
        order_id="ord_1",
        user_id="usr_1",
        type=OrderEventType.CONFIRMED,
        reason="",
        total=Money("USD", 1299),
        occur_time_us=1_700_000_000_000_000,
    )
    return dataclasses.replace(event, **changes)


def make_notification(event: OrderEvent, number: int = 1) -> Notification:
    return notification_for(event, f"ntf_{number}", 1_700_000_000_000_000 + number)


def fields(error: InvalidArgument) -> list[str]:
    return [violation.field for violation in error.violations]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteNotificationStore]:
    opened = SqliteNotificationStore.open(tmp_path / "notifications.db")
    yield opened
    opened.close()


def record(store: SqliteNotificationStore, event: OrderEvent, number: int = 1) -> RecordOutcome:
    outcome, _ = store.record(event, event_fingerprint(event), make_notification(event, number))
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
        occur_time_us=None,
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


def test_occur_time_beyond_year_9999_is_rejected() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_event(make_event(occur_time_us=MAX_TIME_US + 1))
    assert fields(raised.value) == ["event.occur_time"]


def test_event_without_total_is_valid() -> None:
    assert validate_event(make_event(total=None)).total is None


def test_empty_user_id_is_rejected() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_user_id("")
    assert raised.value.violations == [FieldViolation("user_id", "must not be empty")]


def test_list_query_reports_user_page_size_and_token_together() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_list_query("", -1, "not-a-token")
    assert fields(raised.value) == ["user_id", "page_size", "page_token"]


def test_list_query_first_page_has_no_cursor_and_default_size() -> None:
    assert validate_list_query("usr_1", 0, "") == ListQuery("usr_1", 50, None)


def test_list_query_reads_the_cursor_from_the_token() -> None:
    assert validate_list_query("usr_1", 10, encode_token(7)).before == 7


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
        {"occur_time_us": 1},
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
    notification = notification_for(make_event(), "ntf_x", 42)
    assert (notification.user_id, notification.event_id, notification.order_id) == (
        "usr_1",
        "evt_1",
        "ord_1",
    )
    assert (notification.event_type, notification.create_time_us) == (
        OrderEventType.CONFIRMED,
        42,
    )


# --- store ---------------------------------------------------------------------------------


def test_new_event_is_created_and_listed(store: SqliteNotificationStore) -> None:
    event = make_event()
    assert record(store, event) is RecordOutcome.CREATED
    page = store.list_for_user(ListQuery("usr_1", 10, None))
    assert page.notifications == (make_notification(event),)
    assert page.next_cursor is None


def test_same_event_again_is_a_duplicate_returning_the_first_notification(
    store: SqliteNotificationStore,
) -> None:
    event = make_event()
    record(store, event, number=1)
    outcome, notification = store.record(
        event, event_fingerprint(event), make_notification(event, 2)
    )
    assert outcome is RecordOutcome.DUPLICATE
    assert notification.notification_id == "ntf_1"
    assert len(store.list_for_user(ListQuery("usr_1", 10, None)).notifications) == 1


def test_same_event_id_with_other_content_is_a_conflict_that_writes_nothing(
    store: SqliteNotificationStore,
) -> None:
    record(store, make_event())
    assert record(store, make_event(order_id="ord_2"), number=2) is RecordOutcome.CONFLICT
    assert len(store.list_for_user(ListQuery("usr_1", 10, None)).notifications) == 1


def test_duplicates_are_detected_after_reopening_the_database(tmp_path: Path) -> None:
    path = tmp_path / "notifications.db"
    first = SqliteNotificationStore.open(path)
    record(first, make_event())
    first.close()
    reopened = SqliteNotificationStore.open(path)
    try:
        assert record(reopened, make_event(), number=2) is RecordOutcome.DUPLICATE
    finally:
        reopened.close()


def test_event_is_not_kept_when_its_notification_cannot_be_stored(
    store: SqliteNotificationStore,
) -> None:
    record(store, make_event(event_id="evt_1"), number=1)
    clashing = make_event(event_id="evt_2")
    # Reusing notification id ntf_1 violates its UNIQUE constraint after the event row went in.
    with pytest.raises(sqlite3.IntegrityError):
        store.record(clashing, event_fingerprint(clashing), make_notification(clashing, 1))
    assert record(store, clashing, number=2) is RecordOutcome.CREATED


def test_list_is_newest_first_and_only_for_the_user(store: SqliteNotificationStore) -> None:
    record(store, make_event(event_id="evt_1"), number=1)
    record(store, make_event(event_id="evt_2", user_id="usr_2"), number=2)
    record(store, make_event(event_id="evt_3"), number=3)
    page = store.list_for_user(ListQuery("usr_1", 10, None))
    assert [n.event_id for n in page.notifications] == ["evt_3", "evt_1"]


def test_pages_do_not_shift_when_notifications_arrive_between_them(
    store: SqliteNotificationStore,
) -> None:
    for number in range(1, 6):
        record(store, make_event(event_id=f"evt_{number}"), number=number)
    first = store.list_for_user(ListQuery("usr_1", 2, None))
    record(store, make_event(event_id="evt_6"), number=6)
    second = store.list_for_user(ListQuery("usr_1", 2, first.next_cursor))
    third = store.list_for_user(ListQuery("usr_1", 2, second.next_cursor))
    assert [n.event_id for n in first.notifications] == ["evt_5", "evt_4"]
    assert [n.event_id for n in second.notifications] == ["evt_3", "evt_2"]
    assert [n.event_id for n in third.notifications] == ["evt_1"]
    assert third.next_cursor is None


# --- Notifications (domain service on a real store) ----------------------------------------


def test_publish_delivers_a_new_notification_once(store: SqliteNotificationStore) -> None:
    delivered: list[Notification] = []
    notifications = Notifications(store, delivered.append, clock=lambda: 7)
    first = notifications.publish(make_event())
    again = notifications.publish(make_event())
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.notification == first.notification
    assert delivered == [first.notification]


def test_publish_with_a_reused_event_id_raises_idempotency_key_reused(
    store: SqliteNotificationStore,
) -> None:
    notifications = Notifications(store, lambda _: None)
    notifications.publish(make_event())
    with pytest.raises(AlreadyExists) as raised:
        notifications.publish(make_event(reason="different"))
    assert raised.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert raised.value.metadata == {"event_id": "evt_1"}


def test_publish_of_an_invalid_event_stores_and_delivers_nothing(
    store: SqliteNotificationStore,
) -> None:
    delivered: list[Notification] = []
    notifications = Notifications(store, delivered.append)
    with pytest.raises(InvalidArgument):
        notifications.publish(make_event(type=OrderEventType.UNSPECIFIED))
    assert delivered == []
    assert notifications.list("usr_1", 0, "").notifications == ()


def test_list_returns_a_token_for_the_next_page(store: SqliteNotificationStore) -> None:
    notifications = Notifications(store, lambda _: None)
    for number in range(1, 4):
        notifications.publish(make_event(event_id=f"evt_{number}"))
    first = notifications.list("usr_1", 2, "")
    rest = notifications.list("usr_1", 2, first.next_page_token)
    assert [n.event_id for n in first.notifications + rest.notifications] == [
        "evt_3",
        "evt_2",
        "evt_1",
    ]
    assert rest.next_page_token == ""


# --- hub -----------------------------------------------------------------------------------


async def drain(subscription: Subscription) -> list[str]:
    """The event ids a subscription yields until it ends (bounded by WAIT)."""
    async with asyncio.timeout(WAIT):
        return [notification.event_id async for notification in subscription]


async def test_subscriber_gets_only_its_users_notifications() -> None:
    hub = NotificationHub()
    subscription = hub.subscribe("usr_1")
    hub.publish(make_notification(make_event(event_id="evt_1")))
    hub.publish(make_notification(make_event(event_id="evt_2", user_id="usr_2")))
    hub.close()
    assert await drain(subscription) == ["evt_1"]


async def test_slow_subscriber_is_dropped_after_its_buffer_fills() -> None:
    hub = NotificationHub(capacity=2)
    subscription = hub.subscribe("usr_1")
    for number in range(1, 4):
        hub.publish(make_notification(make_event(event_id=f"evt_{number}"), number))
    received = [await anext(subscription), await anext(subscription)]
    assert [n.event_id for n in received] == ["evt_1", "evt_2"]
    with pytest.raises(SubscriberOverflow):
        await anext(subscription)
    assert hub.subscriber_count("usr_1") == 0


async def test_overflow_of_one_subscriber_does_not_affect_another() -> None:
    hub = NotificationHub(capacity=1)
    slow = hub.subscribe("usr_1")
    fast = hub.subscribe("usr_1")
    hub.publish(make_notification(make_event(event_id="evt_1"), 1))
    assert (await anext(fast)).event_id == "evt_1"
    hub.publish(make_notification(make_event(event_id="evt_2"), 2))
    assert (await anext(fast)).event_id == "evt_2"
    assert hub.subscriber_count("usr_1") == 1
    assert (await anext(slow)).event_id == "evt_1"
    with pytest.raises(SubscriberOverflow):
        await anext(slow)


async def test_close_ends_subscriptions_after_their_buffered_notifications() -> None:
    hub = NotificationHub()
    subscription = hub.subscribe("usr_1")
    hub.publish(make_notification(make_event()))
    hub.close()
    assert await drain(subscription) == ["evt_1"]
    assert hub.subscriber_count("usr_1") == 0


async def test_subscribing_after_close_ends_at_once() -> None:
    hub = NotificationHub()
    hub.close()
    assert await drain(hub.subscribe("usr_1")) == []


async def test_closing_a_subscription_stops_its_delivery() -> None:
    hub = NotificationHub()
    with hub.subscribe("usr_1"):
        assert hub.subscriber_count("usr_1") == 1
    assert hub.subscriber_count("usr_1") == 0
    hub.publish(make_notification(make_event()))


async def test_wait_for_subscribers_returns_once_the_count_is_reached() -> None:
    hub = NotificationHub()
    waiter = asyncio.create_task(hub.wait_for_subscribers("usr_1", 1))
    await asyncio.sleep(0)  # let the waiter start waiting before anyone subscribes
    assert not waiter.done()
    subscription = hub.subscribe("usr_1")
    async with asyncio.timeout(WAIT):
        await waiter
    subscription.close()
    async with asyncio.timeout(WAIT):
        await hub.wait_for_subscribers("usr_1", 0)


def test_hub_refuses_a_capacity_below_one() -> None:
    with pytest.raises(ValueError, match="capacity"):
        NotificationHub(capacity=0)
