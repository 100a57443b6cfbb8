"""The outbox relay: delivers order events from the outbox to notifications, in order.

At-least-once: an event is marked delivered only after the consumer acknowledged it, so a crash
between the ack and the mark sends it again, and notifications dedupes by `event_id`; together
that is an exactly-once effect. While the consumer is unreachable the relay retries the oldest
event with capped exponential backoff and jitter, so events are never reordered and a fleet of
relays does not hammer a recovering consumer in lockstep.

Each delivery is a span (`outbox deliver`) in the trace of the saga step that wrote the event,
a child of it however much later it runs, so an order's trace ends with its notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from services.common.errors import DomainError, Unavailable
from services.common.telemetry import continued
from services.orders.domain import OrderEvent

log = logging.getLogger(__name__)


class Outbox(Protocol):
    """The outbox table, as the relay sees it."""

    async def pending_events(self, limit: int) -> list[OrderEvent]:
        """Up to `limit` undelivered events, oldest first."""

    async def mark_delivered(self, event_id: str) -> None:
        """Record the consumer's acknowledgement."""

    async def record_failure(self, event_id: str, error: str, *, give_up: bool) -> None:
        """Record a failed attempt; `give_up` parks the event for good."""


class EventPublisher(Protocol):
    """The consumer of order events (notifications.PublishOrderEvent)."""

    async def publish(self, event: OrderEvent) -> bool:
        """Deliver `event`; True if the consumer had seen it before. Raises Unavailable when
        the consumer cannot be reached, another DomainError when it refuses the event."""


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with "equal jitter": the n-th consecutive failure waits a
    random time between half and all of min(maximum, initial * multiplier**(n-1))."""

    initial: float = 0.1
    maximum: float = 10.0
    multiplier: float = 2.0

    def delay(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait after `failures` (>= 1) consecutive failures."""
        # Clamp the exponent: past the cap it no longer matters, and floats overflow at 2**1024.
        exponent = min(max(failures - 1, 0), 64)
        ceiling = min(self.maximum, self.initial * self.multiplier**exponent)
        return rng.uniform(ceiling / 2, ceiling)


class OutboxRelay:
    """Background task that drains the outbox into an EventPublisher (see module docstring)."""

    def __init__(
        self,
        outbox: Outbox,
        publisher: EventPublisher,
        *,
        poll_interval: float = 1.0,
        backoff: Backoff | None = None,
        batch_size: int = 100,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._outbox = outbox
        self._publisher = publisher
        self._poll_interval = poll_interval
        self._backoff = backoff or Backoff()
        self._batch_size = batch_size
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        """Deliver now instead of at the next poll (called after an event is written)."""
        self._wakeup.set()

    async def deliver_pending(self) -> int:
        """Deliver every pending event, oldest first; returns how many were acknowledged.

        Raises Unavailable at the first event the consumer could not take, leaving it (and
        everything after it) pending. An event the consumer refuses for good is parked as
        FAILED and logged, so one bad event does not block the rest.
        """
        delivered = 0
        while batch := await self._outbox.pending_events(self._batch_size):
            for event in batch:
                attributes = {"order.id": event.order_id, "event.id": event.event_id}
                try:
                    # In the trace of the saga step that wrote the event, however much later.
                    with continued(event.origin, "outbox deliver", attributes):
                        duplicate = await self._publisher.publish(event)
                except Unavailable as error:
                    await self._outbox.record_failure(event.event_id, error.message, give_up=False)
                    raise
                except DomainError as error:
                    log.error(
                        "notifications refused an order event; parked as FAILED",
                        extra={"event_id": event.event_id, "reason": error.reason},
                    )
                    await self._outbox.record_failure(event.event_id, error.message, give_up=True)
                    continue
                await self._outbox.mark_delivered(event.event_id)
                delivered += 1
                log.debug(
                    "order event delivered",
                    extra={"event_id": event.event_id, "duplicate": duplicate},
                )
        return delivered

    async def run(self) -> None:
        """Deliver until cancelled: at once when woken, else every `poll_interval` seconds,
        and with backoff while the consumer is unreachable."""
        failures = 0
        while True:
            # Cleared before reading the outbox, so an event written meanwhile re-wakes us.
            self._wakeup.clear()
            try:
                await self.deliver_pending()
            except Unavailable as error:
                failures += 1
                delay = self._backoff.delay(failures, self._rng)
                # Warn when an outage starts and now and again after, not on every retry.
                level = logging.WARNING if failures == 1 or failures % 20 == 0 else logging.DEBUG
                log.log(
                    level,
                    "notifications unreachable; retrying",
                    extra={
                        "failures": failures,
                        "retry_in": round(delay, 3),
                        "error": error.message,
                    },
                )
                await self._sleep(delay)
                continue
            except Exception:
                # A bug or a database error must not silently end delivery for good.
                failures += 1
                log.exception("outbox relay pass failed")
                await self._sleep(self._backoff.delay(failures, self._rng))
                continue
            failures = 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._poll_interval)
