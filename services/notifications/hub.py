"""In-process fan-out of stored notifications to the WatchNotifications streams of their user.

The hub is fed by one publisher, the feed (services.notifications.feed), with every stored
notification exactly once, in sequence order; `position` is the sequence of the last one. So a
subscription taken when the position is P receives every notification after P, and only those:
its `start`. A watch that resumes from a cursor replays what the store holds after the cursor,
then follows its subscription (`resume` below), and nothing is missed or sent twice.

Publishing never blocks and never waits for a watcher. Each subscription buffers at most
`capacity` notifications; when a watcher reads so slowly that its buffer is full, the hub drops
that subscription instead of dropping notifications silently or slowing every publisher down:
the subscriber still gets what was buffered, then `SubscriberOverflow`, which ends its stream
with RESOURCE_EXHAUSTED. Nothing is lost for good, because every notification is stored
before it is published; the client reconnects with its last cursor.

The hub lives in one process; notifications stored by other replicas reach it through the
feed, which reads them back from the shared database.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from enum import Enum
from types import TracebackType

from services.common.errors import ResourceExhausted
from services.notifications.domain import StoredNotification

DEFAULT_CAPACITY = 256


class SubscriberOverflow(ResourceExhausted):
    """The subscription was dropped because its watcher fell `capacity` notifications behind
    (RESOURCE_EXHAUSTED with reason WATCHER_TOO_SLOW)."""


class _End(Enum):
    # Queued after the last notification a subscription will ever get, to say why it ends.
    CLOSED = "closed"
    OVERFLOWED = "overflowed"


class Subscription:
    """A user's live feed of the notifications stored after `start` (a sequence): iterate it
    with `async for`, close it (or use it as a context manager) when done. Iteration ends when
    the hub closes."""

    def __init__(self, hub: NotificationHub, user_id: str, capacity: int, start: int) -> None:
        self.user_id = user_id
        self.start = start
        self._hub = hub
        self._capacity = capacity
        # Unbounded so the end marker always fits; `offer` enforces the capacity.
        self._queue: asyncio.Queue[StoredNotification | _End] = asyncio.Queue()
        self._ended = False

    def offer(self, notification: StoredNotification) -> bool:
        """Buffer `notification`; False (and nothing buffered) if the buffer is full."""
        if self._queue.qsize() >= self._capacity:
            return False
        self._queue.put_nowait(notification)
        return True

    def finish(self, overflowed: bool = False) -> None:
        """Let the watcher drain what is buffered, then end iteration, or raise
        SubscriberOverflow if `overflowed`. Later calls change nothing."""
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(_End.OVERFLOWED if overflowed else _End.CLOSED)

    def close(self) -> None:
        """Stop receiving notifications (idempotent)."""
        self._hub.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[StoredNotification]:
        return self

    async def __anext__(self) -> StoredNotification:
        item = await self._queue.get()
        if item is _End.CLOSED:
            # Put it back so iterating again also ends instead of waiting forever.
            self._queue.put_nowait(item)
            raise StopAsyncIteration
        if item is _End.OVERFLOWED:
            self._queue.put_nowait(item)
            raise SubscriberOverflow(
                f"watcher of {self.user_id!r} fell {self._capacity} notifications behind; "
                "reconnect with the last cursor received",
                reason="WATCHER_TOO_SLOW",
            )
        return item


class NotificationHub:
    """Per-user subscriptions to newly stored notifications."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, position: int = 0) -> None:
        """`capacity` bounds how many undelivered notifications one watcher may hold;
        `position` is the sequence of the last notification stored before the hub starts
        (the feed publishes from there)."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._closed = False
        self.position = position
        """The sequence of the last notification published (or the starting position)."""

    def subscribe(self, user_id: str) -> Subscription:
        """A new subscription to `user_id`'s notifications published from now on, i.e. those
        after `position` (its `start`). After `close`, the subscription is already ended."""
        subscription = Subscription(self, user_id, self._capacity, self.position)
        if self._closed:
            subscription.finish()
        else:
            self._subscriptions.setdefault(user_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Remove `subscription` (nothing happens if it is already gone)."""
        subscribers = self._subscriptions.get(subscription.user_id)
        if subscribers is None or subscription not in subscribers:
            return
        subscribers.discard(subscription)
        if not subscribers:
            del self._subscriptions[subscription.user_id]

    def publish(self, stored: StoredNotification) -> None:
        """Hand `stored` to every subscription of its user, without waiting; overflowing
        subscriptions are dropped (see the module docstring). Sequences must increase: a
        subscription's `start` promises exactly what follows it."""
        if stored.sequence <= self.position:
            raise ValueError(
                f"notification {stored.sequence} published after {self.position}: out of order"
            )
        self.position = stored.sequence
        for subscription in list(self._subscriptions.get(stored.notification.user_id, ())):
            if not subscription.offer(stored):
                subscription.finish(overflowed=True)
                self.unsubscribe(subscription)

    def subscriber_count(self, user_id: str) -> int:
        """How many subscriptions `user_id` has now."""
        return len(self._subscriptions.get(user_id, ()))

    def close(self) -> None:
        """End every subscription (watchers drain their buffers, then their streams end) and
        refuse new ones. Called on shutdown."""
        self._closed = True
        for subscribers in list(self._subscriptions.values()):
            for subscription in list(subscribers):
                subscription.finish()
                self.unsubscribe(subscription)


async def resume(
    subscription: Subscription, replay: AsyncIterator[StoredNotification], after: int
) -> AsyncIterator[StoredNotification]:
    """A watch resumed after sequence `after`: what `replay` yields (the store's notifications
    after `after`, oldest first, read once `subscription` was in place), then the
    subscription's, skipping what was sent already. In sequence order, each once, none
    missed: a notification the replay's read did not see was stored after the subscription
    started, so the subscription has it."""
    sent = after
    async for stored in replay:
        sent = stored.sequence
        yield stored
    async for stored in subscription:
        if stored.sequence > sent:
            sent = stored.sequence
            yield stored
