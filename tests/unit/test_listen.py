"""services.common.listen on a real Postgres: wake-ups at commit, and a listener that
reconnects, saying so, when its connection is cut and when Postgres restarts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import psycopg
import pytest

from services.common.listen import Wakeup, listen, notify
from services.common.postgres import PostgresConnection
from shopmesh.local import postgres
from tests.support.databases import cut_listening_connections

pytestmark = pytest.mark.postgres

WAIT = 10.0
CHANNEL = "test_channel"


@pytest.fixture
async def wakeups(postgres_database: str) -> AsyncIterator[AsyncIterator[Wakeup]]:
    """Wake-ups on CHANNEL, after the first one (listening)."""
    async with contextlib.aclosing(
        listen(postgres_database, CHANNEL, min_backoff=0.01, max_backoff=0.05)
    ) as listening:
        async with asyncio.timeout(WAIT):
            assert await anext(listening) == Wakeup(None)
        yield listening


def send(url: str, *payloads: str, commit: bool = True) -> None:
    """NOTIFY each of `payloads` in one transaction, committed or rolled back."""
    with psycopg.connect(url, autocommit=True) as raw:
        db = PostgresConnection(raw)
        db.execute("BEGIN")
        for payload in payloads:
            notify(db, CHANNEL, payload)
        db.execute("COMMIT" if commit else "ROLLBACK")


async def next_wakeup(wakeups: AsyncIterator[Wakeup]) -> Wakeup:
    async with asyncio.timeout(WAIT):
        return await anext(wakeups)


async def test_notifications_arrive_once_committed_and_never_when_rolled_back(
    postgres_database: str, wakeups: AsyncIterator[Wakeup]
) -> None:
    send(postgres_database, "1", commit=False)
    send(postgres_database, "2", "3")
    assert [await next_wakeup(wakeups), await next_wakeup(wakeups)] == [Wakeup("2"), Wakeup("3")]


async def test_a_cut_connection_is_replaced_and_the_listener_told_to_catch_up(
    postgres_database: str, wakeups: AsyncIterator[Wakeup]
) -> None:
    # What a fast shutdown of the server does to every connection.
    assert cut_listening_connections(postgres_database, CHANNEL) == 1
    assert await next_wakeup(wakeups) == Wakeup(None)
    send(postgres_database, "4")
    assert await next_wakeup(wakeups) == Wakeup("4")


async def test_a_listener_outlives_a_postgres_restart(
    postgres_cluster: postgres.Cluster, postgres_database: str, wakeups: AsyncIterator[Wakeup]
) -> None:
    # Down for as long as a fast stop and a start take: the listener keeps retrying meanwhile.
    try:
        await asyncio.to_thread(postgres.stop, postgres_cluster)
    finally:
        await asyncio.to_thread(postgres.start, postgres_cluster, durable=False)
    assert await next_wakeup(wakeups) == Wakeup(None)
    send(postgres_database, "5")
    assert await next_wakeup(wakeups) == Wakeup("5")


def test_a_payload_over_the_postgres_limit_is_refused_before_it_is_sent(
    postgres_database: str,
) -> None:
    with (
        psycopg.connect(postgres_database, autocommit=True) as raw,
        pytest.raises(ValueError, match="8000 bytes"),
    ):
        notify(PostgresConnection(raw), CHANNEL, "é" * 4001)
