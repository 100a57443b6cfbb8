"""The notifications hub: in-process fan-out of new notifications to watchers, no network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.notifications.domain import StoredNotification
from services.notifications.hub import NotificationHub, SubscriberOverflow, Subscription, resume
from tests.support.samples import make_event, make_stored

# Bounds every wait on the hub, so a broken test fails instead of hanging.
WAIT = 5.0


async def drain(subscription: Subscription) -> list[str]:
    """The event ids a subscription yields until it ends (bounded by WAIT)."""
    async with asyncio.timeout(WAIT):
        return [stored.notification.event_id async for stored in subscription]


async def test_subscriber_gets_only_its_users_notifications() -> None:
    hub = NotificationHub()
    subscription = hub.subscribe("usr_1")
    hub.publish(make_stored(make_event(event_id="evt_1"), 1))
    hub.publish(make_stored(make_event(event_id="evt_2", user_id="usr_2"), 2))
    hub.close()
    assert await drain(subscription) == ["evt_1"]


async def test_slow_subscriber_is_dropped_after_its_buffer_fills() -> None:
    hub = NotificationHub(capacity=2)
    subscription = hub.subscribe("usr_1")
    for number in range(1, 4):
        hub.publish(make_stored(make_event(event_id=f"evt_{number}"), number))
    received = [await anext(subscription), await anext(subscription)]
    assert [n.notification.event_id for n in received] == ["evt_1", "evt_2"]
    with pytest.raises(SubscriberOverflow):
        await anext(subscription)
    assert hub.subscriber_count("usr_1") == 0


async def test_overflow_of_one_subscriber_does_not_affect_another() -> None:
    hub = NotificationHub(capacity=1)
    slow = hub.subscribe("usr_1")
    fast = hub.subscribe("usr_1")
    hub.publish(make_stored(make_event(event_id="evt_1"), 1))
    assert (await anext(fast)).notification.event_id == "evt_1"
    hub.publish(make_stored(make_event(event_id="evt_2"), 2))
    assert (await anext(fast)).notification.event_id == "evt_2"
    assert hub.subscriber_count("usr_1") == 1
    assert (await anext(slow)).notification.event_id == "evt_1"
    with pytest.raises(SubscriberOverflow):
        await anext(slow)


async def test_close_ends_subscriptions_after_their_buffered_notifications() -> None:
    hub = NotificationHub()
    subscription = hub.subscribe("usr_1")
    hub.publish(make_stored(make_event()))
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
    hub.publish(make_stored(make_event()))


def test_hub_refuses_a_capacity_below_one() -> None:
    with pytest.raises(ValueError, match="capacity"):
        NotificationHub(capacity=0)


async def replayed(*stored: StoredNotification) -> AsyncIterator[StoredNotification]:
    """What a resumed watch's replay read returned, as an async iterator."""
    for item in stored:
        yield item


async def take(stream: AsyncIterator[StoredNotification], count: int) -> list[int]:
    """The sequences of the next `count` notifications of `stream` (bounded by WAIT)."""
    async with asyncio.timeout(WAIT):
        return [(await anext(stream)).sequence for _ in range(count)]


def stored(number: int, user_id: str = "usr_1") -> StoredNotification:
    return make_stored(make_event(event_id=f"evt_{number}", user_id=user_id), number)


async def test_publishing_moves_the_position_and_subscriptions_start_there() -> None:
    hub = NotificationHub(position=4)
    assert hub.subscribe("usr_1").start == 4
    hub.publish(stored(5, user_id="usr_2"))
    assert hub.position == 5
    assert hub.subscribe("usr_1").start == 5


async def test_hub_refuses_a_sequence_that_is_not_after_its_position() -> None:
    hub = NotificationHub(position=4)
    with pytest.raises(ValueError, match="out of order"):
        hub.publish(stored(4))


async def test_resume_sends_the_replay_then_live_notifications_in_order() -> None:
    hub = NotificationHub(position=3)
    subscription = hub.subscribe("usr_1")
    stream = resume(subscription, replayed(stored(2), stored(3)), after=1)
    hub.publish(stored(4))
    hub.publish(stored(5, user_id="usr_2"))
    hub.publish(stored(6))
    assert await take(stream, 4) == [2, 3, 4, 6]


async def test_a_notification_stored_between_subscribing_and_replaying_is_sent_once() -> None:
    # 4 was stored after the subscription began, before the replay's read: the read saw it
    # and the hub delivers it too.
    hub = NotificationHub(position=3)
    subscription = hub.subscribe("usr_1")
    hub.publish(stored(4))
    stream = resume(subscription, replayed(stored(2), stored(4)), after=1)
    hub.publish(stored(5))
    assert await take(stream, 3) == [2, 4, 5]


async def test_a_notification_the_replay_missed_comes_from_the_subscription() -> None:
    # Stored after the replay's read: only the subscription has it.
    hub = NotificationHub(position=3)
    subscription = hub.subscribe("usr_1")
    stream = resume(subscription, replayed(stored(3)), after=2)
    hub.publish(stored(4))
    assert await take(stream, 2) == [3, 4]


async def test_resume_after_a_cursor_ahead_of_the_hub_skips_what_the_client_has() -> None:
    # The client's cursor came from a replica whose feed was ahead of this one's.
    hub = NotificationHub(position=3)
    subscription = hub.subscribe("usr_1")
    stream = resume(subscription, replayed(), after=5)
    for number in (4, 5, 6):
        hub.publish(stored(number))
    assert await take(stream, 1) == [6]
