"""Who drives an order's saga: one task at a time in this process (KeyedLocks), one replica at a
time across processes (`claimed`, over the leases in the order's row: services.orders.store)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.common.errors import Unavailable
from services.orders.domain import Order, OrderRepository, SagaState, SagaStep, load_order

# How long a request waits for another replica to finish (or let go of) the saga it asks for.
# A live driver finishes a saga in well under a second; a dead one's lease lapses only after
# its TTL, which no request should sit out: it is told ORDER_PENDING instead (the sweep will
# finish the order), early enough for the gateway's retries and the client's deadline (a
# longer wait, retried by the gateway, ended a CancelOrder DEADLINE_EXCEEDED at 5 s).
DEFAULT_LEASE_WAIT = 1.0
_RETRY_FIRST = 0.02
_RETRY_MAX = 0.25


class KeyedLocks:
    """One asyncio.Lock per order id, dropped once nobody holds or waits for it: a request and
    the recovery loop never drive the same order at the same time."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def busy(self, key: str) -> bool:
        """True while some task holds or waits for `key`."""
        return key in self._locks

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold the lock of `key` for the body of the `async with`."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


async def claimed(
    repository: OrderRepository, order_id: str, wait: float
) -> tuple[Order, SagaState]:
    """The order and its saga, leased to this replica, or DONE (nothing left to drive).
    While another replica holds the lease, waits up to `wait` seconds for it to finish the
    saga or let it go; then Unavailable(ORDER_PENDING). NotFound(ORDER_NOT_FOUND)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    delay = _RETRY_FIRST
    while not await repository.claim(order_id):
        order, saga = await load_order(repository, order_id)
        if saga.step is SagaStep.DONE:
            return order, saga
        if loop.time() >= deadline:
            raise Unavailable(
                f"order {order_id} is being driven by another orders replica; ask again shortly",
                reason="ORDER_PENDING",
                metadata={"order_id": order_id, "step": saga.step.value},
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, _RETRY_MAX)
    # Read after the claim: what the previous holder stored last is what this one drives.
    return await load_order(repository, order_id)
