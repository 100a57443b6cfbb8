"""Postgres LISTEN/NOTIFY as wake-ups: `async for wakeup in listen(url, channel)` on one
dedicated connection, and `notify(db, channel, payload)` inside a store's write.

A NOTIFY sent in a transaction is delivered when (and only if) it commits, to every connection
of the database listening on its channel: the way one replica tells the others "something new
was committed". Payloads are small hints (Postgres refuses more than 8000 bytes), never the
data: a listener reads what is new from the database itself, so nothing depends on a
notification's content or even on its arrival.

Notifications are not queued for a connection that is not listening: those sent while the
listening connection was down are lost. So `listen` yields `Wakeup(payload=None)` each time it
has (re)connected and LISTEN is in place: the caller catches up from what it saw last. It
reconnects with backoff after the connection breaks (a Postgres restart) and, as a quiet
connection could be dead without knowing it, checks it with a round trip when nothing arrived
for PING_SECONDS.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import psycopg
from psycopg import sql

from services.common.sql import Connection
from services.common.turns import HELD_CONNECTION

log = logging.getLogger(__name__)

# A connection silent this long is checked with a round trip, so a dead one is found.
PING_SECONDS = 30.0
MIN_BACKOFF_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 5.0
MAX_PAYLOAD_BYTES = 8000
APPLICATION_NAME = "shopmesh-listen"


@dataclass(frozen=True)
class Wakeup:
    """Something may be new on the channel. `payload` is the NOTIFY's payload, or None right
    after (re)connecting: notifications sent before then were not received, catch up."""

    payload: str | None


def notify(db: Connection, channel: str, payload: str) -> None:
    """Queue a notification on `channel` in `db`'s transaction (a store's write, on Postgres):
    listeners receive it once the transaction commits, never if it rolls back (a savepoint
    rolled back discards it too)."""
    if len(payload.encode()) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"a NOTIFY payload holds at most {MAX_PAYLOAD_BYTES} bytes")
    db.execute("SELECT pg_notify(?, ?)", (channel, payload))


async def listen(
    url: str,
    channel: str,
    *,
    min_backoff: float = MIN_BACKOFF_SECONDS,
    max_backoff: float = MAX_BACKOFF_SECONDS,
) -> AsyncGenerator[Wakeup, None]:
    """Wake-ups for `channel` of the database at `url`, forever (see the module docstring).
    Close the iterator (contextlib.aclosing) or cancel its consumer to stop listening."""
    backoff = min_backoff
    while True:
        try:
            # Named, so that pg_stat_activity tells the listening connection apart.
            async with await psycopg.AsyncConnection.connect(
                url,
                autocommit=True,
                application_name=f"{APPLICATION_NAME} {channel}",
                **HELD_CONNECTION,
            ) as connection:
                await connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                backoff = min_backoff
                yield Wakeup(None)
                while True:
                    quiet = True
                    async for notice in connection.notifies(timeout=PING_SECONDS):
                        quiet = False
                        yield Wakeup(notice.payload)
                    if quiet:
                        # Raises if the connection died silently; psycopg keeps what arrives
                        # meanwhile for the next notifies().
                        await connection.execute("SELECT 1")
        except psycopg.Error as error:
            # Whatever ends the connection (a restart, a server-side error), listen again:
            # ending would leave this replica's watchers deaf to the other replicas.
            log.warning(
                "listening on %s lost (%s); reconnecting in %.1fs",
                channel,
                str(error).strip() or type(error).__name__,
                backoff,
            )
        # Jittered, so the replicas of a restarted database do not reconnect in lockstep.
        await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
        backoff = min(backoff * 2, max_backoff)
