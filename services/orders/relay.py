"""The outbox relay: delivers order events from the outbox to notifications, in order, in
batches.

Each pass sends everything pending, oldest first, in batches of up to `batch_size` events, one
PublishOrderEvents call each, which notifications records all or nothing: the outbox order, and
so every order's own order of events, holds. At-least-once: a batch is marked delivered only
after the consumer acknowledged it, so a crash between the ack and the mark sends it again,
and notifications dedupes every event by `event_id`; together that is an exactly-once effect.
While the consumer is unreachable the relay retries the oldest batch with capped exponential
backoff and jitter, so events are never reordered and a fleet of relays does not hammer a
recovering consumer in lockstep. An event the consumer refuses for good (it names it, and took
none of the batch) is parked as FAILED and the rest go again: it blocks nothing.

Latency: the saga wakes the relay right after it commits an event. An idle relay sends it at
once; a busy one in the batch after the one in flight, so an event waits at most about two
batch round trips (read, RPC, mark), however many events arrive meanwhile up to `batch_size`
per round trip. `poll_interval` is only the safety net for a missed wake-up; while the consumer
is unreachable, an event waits for the backoff (at most its `maximum`) instead.

Replicas: every orders replica runs a relay, and each pass is its turn (Outbox.relay_turn: on
Postgres an advisory lock, services.common.turns), so one relay at a time delivers and the
outbox order holds across replicas. A replica woken by its own event waits for the turn, and
its pass then starts after that event was committed: no event waits for a poll because another
replica was mid-pass. Should two passes ever overlap (a turn's connection broke), each still
starts from the oldest pending event and the consumer dedupes: order and exactly-once hold.

Each event's delivery is a span (`outbox deliver`) in the trace of the saga step that wrote it,
a child of it however much later it runs, so an order's trace ends with its notification. The
batch's RPC runs inside the span of its first (oldest) event: that trace shows the call into
notifications; the others' spans say which event's trace did (`outbox.batch_first_event`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.common.errors import DomainError
from services.common.telemetry import continued
from services.orders.domain import OrderEvent

log = logging.getLogger(__name__)


class Outbox(Protocol):
    """The outbox table, as the relay sees it."""

    async def pending_events(self, limit: int) -> list[OrderEvent]:
        """Up to `limit` undelivered events, oldest first."""

    async def mark_delivered(self, event_ids: list[str]) -> None:
        """Record the consumer's acknowledgement of these events (one transaction)."""

    async def record_failure(self, event_ids: list[str], error: str, *, give_up: bool) -> None:
        """Record a failed attempt at these events; `give_up` parks them for good."""

    def relay_turn(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Held for each pass: one relay at a time delivers, whichever replica it runs in."""


class EventRefused(Exception):
    """The consumer refused one event of a batch for good, and so recorded none of them."""

    def __init__(self, event_id: str, error: DomainError) -> None:
        super().__init__(f"{event_id}: {error.message}")
        self.event_id = event_id
        self.error = error


class EventPublisher(Protocol):
    """The consumer of order events (notifications.PublishOrderEvents)."""

    async def publish(self, events: Sequence[OrderEvent]) -> int:
        """Deliver `events`, all or nothing; returns how many the consumer had seen before.
        Raises EventRefused naming the event the consumer refused, Unavailable when it cannot
        be reached, another DomainError when it refuses the call as a whole."""


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
        """Deliver every pending event, oldest first, in batches; returns how many were
        acknowledged.

        Raises the DomainError (Unavailable when unreachable) of the first batch the consumer
        did not take as a whole, leaving it and everything after it pending. An event the
        consumer refuses for good is parked as FAILED and logged, and the rest of its batch
        goes again, so one bad event does not block the others.
        """
        delivered = 0
        while batch := await self._outbox.pending_events(self._batch_size):
            event_ids = [event.event_id for event in batch]
            try:
                with _delivery_spans(batch):
                    duplicates = await self._publisher.publish(batch)
            except EventRefused as refused:
                log.error(
                    "notifications refused an order event; parked as FAILED",
                    extra={"event_id": refused.event_id, "reason": refused.error.reason},
                )
                await self._outbox.record_failure(
                    [refused.event_id], refused.error.message, give_up=True
                )
                continue
            except DomainError as error:
                await self._outbox.record_failure(event_ids, error.message, give_up=False)
                raise
            await self._outbox.mark_delivered(event_ids)
            delivered += len(batch)
            log.debug(
                "order events delivered", extra={"events": len(batch), "duplicates": duplicates}
            )
        return delivered

    async def run(self) -> None:
        """Deliver until cancelled: at once when woken, else every `poll_interval` seconds,
        and with backoff while the consumer does not take the oldest batch."""
        failures = 0
        while True:
            # Cleared before reading the outbox, so an event written meanwhile re-wakes us.
            self._wakeup.clear()
            try:
                async with self._outbox.relay_turn():
                    await self.deliver_pending()
            except DomainError as error:
                failures += 1
                delay = self._backoff.delay(failures, self._rng)
                # Warn when an outage starts and now and again after, not on every retry.
                level = logging.WARNING if failures == 1 or failures % 20 == 0 else logging.DEBUG
                log.log(
                    level,
                    "notifications did not take the order events; retrying",
                    extra={
                        "failures": failures,
                        "retry_in": round(delay, 3),
                        "error": error.message,
                        "reason": error.reason,
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


@contextlib.contextmanager
def _delivery_spans(batch: Sequence[OrderEvent]) -> Iterator[None]:
    """An `outbox deliver` span per event, each in its own trace (see module docstring); the
    first event's is current in the body, so the batch's RPC joins that trace."""
    first = batch[0]
    with contextlib.ExitStack() as spans:
        # Entered last to first: the first event's span is entered last, so it is current.
        for event in reversed(batch):
            attributes = {
                "order.id": event.order_id,
                "event.id": event.event_id,
                "outbox.batch_size": str(len(batch)),
                "outbox.batch_first_event": first.event_id,
            }
            spans.enter_context(continued(event.origin, "outbox deliver", attributes))
        yield
