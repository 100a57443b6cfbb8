"""Crash recovery: resume or compensate every in-flight order, at start and then periodically.

Recovery is only "run the stored step again": every downstream call the saga makes is idempotent
per order, so a step that ran before a crash (or whose answer was lost) is safe to repeat.
"""

from __future__ import annotations

import asyncio
import logging

from services.orders.saga import CheckoutSaga

log = logging.getLogger(__name__)


async def recover_forever(saga: CheckoutSaga, interval: float) -> None:
    """Run a recovery pass now and then every `interval` seconds until cancelled."""
    while True:
        try:
            finished = await saga.recover()
        except Exception:
            # E.g. the database is momentarily locked: the next pass tries again.
            log.exception("recovery pass failed")
        else:
            if finished:
                log.info("recovered in-flight orders", extra={"finished": finished})
        await asyncio.sleep(interval)
