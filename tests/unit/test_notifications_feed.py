"""The notifications store's sequences and the feed that reads them into the hub, on both
backends; on Postgres, the NOTIFY a committed publication sends (and a rolled-back one does
not)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.listen import Wakeup, listen
from services.notifications.domain import NewEvent, OrderEvent, event_fingerprint
from services.notifications.feed import Feed
from services.notifications.hub import NotificationHub
from services.notifications.store import NOTIFY_CHANNEL, SqlNotificationStore
from tests.support.samples import make_event, make_notification

WAIT = 10.0


@pytest.fixture
async def store(db_location: Path | str) -> AsyncIterator[SqlNotificationStore]:
    opened = await SqlNotificationStore.open(db_location)
    yield opened
    await opened.close()


def entry(number: int, user_id: str = "usr_1", **changes: object) -> NewEvent:
    event: OrderEvent = make_event(event_id=f"evt_{number}", user_id=user_id, **changes)
    return NewEvent(event, event_fingerprint(event), make_notification(event, number))


async def test_sequences_increase_in_the_order_notifications_are_stored(
    store: SqlNotificationStore,
) -> None:
    assert await store.last_sequence() == 0
    await store.record_all([entry(1), entry(2, user_id="usr_2")])
    await store.record_all([entry(3)])
    stored = await store.after(0, 10)
    assert [s.notification.event_id for s in stored] == ["evt_1", "evt_2", "evt_3"]
    sequences = [s.sequence for s in stored]
    assert sequences == sorted(sequences)
    assert len(set(sequences)) == 3
    assert await store.last_sequence() == sequences[-1]


async def test_after_reads_every_user_from_a_sequence_up_to_a_limit(
    store: SqlNotificationStore,
) -> None:
    await store.record_all([entry(n, user_id=f"usr_{n % 2}") for n in range(1, 6)])
    first = (await store.after(0, 10))[0].sequence
    page = await store.after(first, 2)
    assert [s.notification.event_id for s in page] == ["evt_2", "evt_3"]


async def test_user_after_reads_one_users_notifications_oldest_first(
    store: SqlNotificationStore,
) -> None:
    await store.record_all([entry(n, user_id=f"usr_{n % 2}") for n in range(1, 6)])
    everything = await store.user_after("usr_1", 0, 10)
    assert [s.notification.event_id for s in everything] == ["evt_1", "evt_3", "evt_5"]
    rest = await store.user_after("usr_1", everything[0].sequence, 1)
    assert [s.notification.event_id for s in rest] == ["evt_3"]


async def test_a_duplicate_takes_no_sequence(store: SqlNotificationStore) -> None:
    await store.record_all([entry(1)])
    last = await store.last_sequence()
    await store.record_all([entry(1)])
    assert await store.last_sequence() == last


async def test_feed_publishes_what_was_stored_after_the_hub_position_in_order(
    store: SqlNotificationStore,
) -> None:
    await store.record_all([entry(1)])
    hub = NotificationHub(position=await store.last_sequence())
    subscription = hub.subscribe("usr_1")
    await store.record_all([entry(2), entry(3, user_id="usr_2"), entry(4)])
    await Feed(store, hub).catch_up()
    hub.close()
    async with asyncio.timeout(WAIT):
        received = [s.notification.event_id async for s in subscription]
    assert received == ["evt_2", "evt_4"]
    assert hub.position == await store.last_sequence()


async def test_a_woken_feed_catches_up_on_its_own(store: SqlNotificationStore) -> None:
    hub = NotificationHub()
    feed = Feed(store, hub)
    running = asyncio.create_task(feed.run())
    try:
        with hub.subscribe("usr_1") as subscription:
            await store.record_all([entry(1)])
            feed.wake()
            async with asyncio.timeout(WAIT):
                assert (await anext(subscription)).notification.event_id == "evt_1"
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


@pytest.fixture
async def wakeups(postgres_database: str) -> AsyncIterator[AsyncIterator[Wakeup]]:
    """Wake-ups of the notifications channel of a fresh Postgres database, once listening."""
    async with contextlib.aclosing(listen(postgres_database, NOTIFY_CHANNEL)) as listening:
        async with asyncio.timeout(WAIT):
            assert await anext(listening) == Wakeup(None)
        yield listening


@pytest.fixture
async def postgres_store(postgres_database: str) -> AsyncIterator[SqlNotificationStore]:
    opened = await SqlNotificationStore.open(postgres_database)
    yield opened
    await opened.close()


@pytest.mark.postgres
async def test_a_publication_notifies_its_highest_sequence_at_commit(
    postgres_store: SqlNotificationStore, wakeups: AsyncIterator[Wakeup]
) -> None:
    await postgres_store.record_all([entry(1), entry(2)])
    async with asyncio.timeout(WAIT):
        wakeup = await anext(wakeups)
    assert wakeup == Wakeup(str(await postgres_store.last_sequence()))


@pytest.mark.postgres
async def test_a_refused_batch_notifies_nothing_and_a_duplicate_neither(
    postgres_store: SqlNotificationStore, wakeups: AsyncIterator[Wakeup]
) -> None:
    await postgres_store.record_all([entry(1)])
    async with asyncio.timeout(WAIT):
        first = await anext(wakeups)
    # evt_2 is new, but evt_1 reused with other content rolls the batch back: no NOTIFY.
    await postgres_store.record_all([entry(2), entry(1, reason="other")])
    await postgres_store.record_all([entry(1)])
    await postgres_store.record_all([entry(3)])
    async with asyncio.timeout(WAIT):
        after = await anext(wakeups)
    assert first == Wakeup(str((await postgres_store.after(0, 1))[0].sequence))
    assert after == Wakeup(str(await postgres_store.last_sequence()))
    assert [s.notification.event_id for s in await postgres_store.after(0, 10)] == [
        "evt_1",
        "evt_3",
    ]
