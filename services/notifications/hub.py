"""In-process fan-out of new notifications to the WatchNotifications streams of their user.

Publishing never blocks and never waits for a watcher. Each subscription buffers at most
`capacity` notifications; when a watcher reads so slowly that its buffer is full, the hub drops
that subscription instead of dropping notifications silently or slowing every publisher down:
the subscriber still gets what was buffered, then `SubscriberOverflow`, which ends its stream
with RESOURCE_EXHAUSTED. Nothing is lost for good, because every notification is stored
before it is published; the client reconnects and catches up with ListNotifications.

The hub lives in one process: watchers only see notifications published to the same replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from enum import Enum
from types import TracebackType

from services.common.errors import ResourceExhausted
from services.notifications.domain import Notification

DEFAULT_CAPACITY = 256


class SubscriberOverflow(ResourceExhausted):
    """The subscription was dropped because its watcher fell `capacity` notifications behind
    (RESOURCE_EXHAUSTED with reason WATCHER_TOO_SLOW)."""


class _End(Enum):
    # Queued after the last notification a subscription will ever get, to say why it ends.
    CLOSED = "closed"
    OVERFLOWED = "overflowed"


class Subscription:
    """A user's live feed of new notifications: iterate it with `async for`, close it (or use it
    as a context manager) when done. Iteration ends when the hub closes."""

    def __init__(self, hub: NotificationHub, user_id: str, capacity: int) -> None:
        self.user_id = user_id
        self._hub = hub
        self._capacity = capacity
        # Unbounded so the end marker always fits; `offer` enforces the capacity.
        self._queue: asyncio.Queue[Notification | _End] = asyncio.Queue()
        self._ended = False

    def offer(self, notification: Notification) -> bool:
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

    def __aiter__(self) -> AsyncIterator[Notification]:
        return self

    async def __anext__(self) -> Notification:
        item = await self._queue.get()
        if item is _End.CLOSED:
            # Put it back so iterating again also ends instead of waiting forever.
            self._queue.put_nowait(item)
            raise StopAsyncIteration
        if item is _End.OVERFLOWED:
            self._queue.put_nowait(item)
            raise SubscriberOverflow(
                f"watcher of {self.user_id!r} fell {self._capacity} notifications behind; "
                "reconnect and catch up with ListNotifications",
                reason="WATCHER_TOO_SLOW",
            )
        return item


class NotificationHub:
    """Per-user subscriptions to newly stored notifications."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        """`capacity` bounds how many undelivered notifications one watcher may hold."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._closed = False

    def subscribe(self, user_id: str) -> Subscription:
        """A new subscription to `user_id`'s notifications published from now on. After
        `close`, the subscription is already ended."""
        subscription = Subscription(self, user_id, self._capacity)
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

    def publish(self, notification: Notification) -> None:
        """Hand `notification` to every subscription of its user, without waiting; overflowing
        subscriptions are dropped (see the module docstring)."""
        for subscription in list(self._subscriptions.get(notification.user_id, ())):
            if not subscription.offer(notification):
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
