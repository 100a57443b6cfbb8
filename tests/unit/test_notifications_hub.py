"""The notifications hub: in-process fan-out of new notifications to watchers, no network."""

from __future__ import annotations

import asyncio

import pytest

from services.notifications.hub import NotificationHub, SubscriberOverflow, Subscription
from tests.support.samples import make_event, make_notification

# Bounds every wait on the hub, so a broken test fails instead of hanging.
WAIT = 5.0


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


def test_hub_refuses_a_capacity_below_one() -> None:
    with pytest.raises(ValueError, match="capacity"):
        NotificationHub(capacity=0)
