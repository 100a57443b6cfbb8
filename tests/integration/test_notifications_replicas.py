"""Two notifications replicas as real processes (`python -m services.notifications`) on one
Postgres database: a watcher on either replica sees every notification of its user exactly
once, whichever replica stored it; one that disconnects and resumes with its last cursor gets
exactly what it missed; and a replica whose LISTEN connection is cut (as a Postgres restart
cuts it) catches up on what was stored meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpc import aio

from services.notifications.store import NOTIFY_CHANNEL
from shop.notifications.v1 import notifications_pb2 as pb
from shop.notifications.v1 import notifications_pb2_grpc as pb_grpc
from tests.support.databases import cut_listening_connections
from tests.support.notifications import (
    WAIT,
    Stub,
    WatchCall,
    event_ids,
    order_event,
    received,
    start_cursor,
    watch,
)
from tests.support.processes import Launch, wait_until_serving

pytestmark = [pytest.mark.postgres, pytest.mark.services_on_postgres]


@dataclass
class Replicas:
    """Two notifications processes on one database, and a stub for each."""

    a: Stub
    b: Stub
    database: str


@pytest.fixture
async def replicas(
    launch: Launch,
    socket_dir: Path,
    tmp_path: Path,
    postgres_database: str,
    channels: Callable[[str], aio.Channel],
) -> Replicas:
    """Replicas a and b, serving; the launch fixture kills both at teardown whatever
    happened."""
    stubs = []
    for name in ("a", "b"):
        address = f"unix:{socket_dir / f'notifications-{name}.sock'}"
        process = launch(
            "notifications",
            {
                "SHOPMESH_LISTEN": address,
                "SHOPMESH_DATABASE_URL": postgres_database,
                "SHOPMESH_DB_PATH": str(tmp_path / f"unused-{name}.db"),
                "SHOPMESH_GRACE_SECONDS": "1",
            },
        )
        await asyncio.to_thread(wait_until_serving, process, address)
        stubs.append(pb_grpc.NotificationsServiceStub(channels(address)))
    return Replicas(stubs[0], stubs[1], postgres_database)


async def publish(stub: Stub, *event_ids: str, user_id: str = "usr_1") -> None:
    await stub.PublishOrderEvents(
        pb.PublishOrderEventsRequest(
            events=[order_event(event_id=e, order_id=e, user_id=user_id) for e in event_ids]
        ),
        timeout=WAIT,
    )


async def watching(stub: Stub, resume_cursor: str = "") -> WatchCall:
    """A watch of usr_1 whose subscription is in place."""
    call = watch(stub, "usr_1", resume_cursor)
    await start_cursor(call)
    return call


async def test_a_watcher_on_either_replica_sees_every_notification_once(
    replicas: Replicas,
) -> None:
    on_a, on_b = await watching(replicas.a), await watching(replicas.b)
    await publish(replicas.a, "evt_1", "evt_2")
    await publish(replicas.a, "evt_someone_else", user_id="usr_2")
    await publish(replicas.b, "evt_3")
    await publish(replicas.a, "evt_4")
    # Publishing again is idempotent: nothing new to see.
    await publish(replicas.b, "evt_1")
    await publish(replicas.a, "evt_5")
    seen = [event_ids(await received(call, 5)) for call in (on_a, on_b)]
    on_a.cancel()
    on_b.cancel()
    assert seen == [["evt_1", "evt_2", "evt_3", "evt_4", "evt_5"]] * 2


async def test_a_watcher_that_reconnects_with_its_last_cursor_gets_exactly_what_it_missed(
    replicas: Replicas,
) -> None:
    first = await watching(replicas.b)
    await publish(replicas.a, "evt_1", "evt_2")
    before = await received(first, 2)
    first.cancel()
    await publish(replicas.a, "evt_3")
    await publish(replicas.b, "evt_4")

    again = await watching(replicas.b, resume_cursor=before[-1].cursor)
    missed = await received(again, 2)
    await publish(replicas.a, "evt_5")
    live = await received(again, 1)
    again.cancel()
    assert event_ids([*before, *missed, *live]) == ["evt_1", "evt_2", "evt_3", "evt_4", "evt_5"]

    # The cursor is the database's, not a replica's: it resumes on the other replica too.
    elsewhere = await watching(replicas.a, resume_cursor=before[-1].cursor)
    missed = await received(elsewhere, 3)
    await publish(replicas.b, "evt_6")
    live = await received(elsewhere, 1)
    elsewhere.cancel()
    assert event_ids([*missed, *live]) == ["evt_3", "evt_4", "evt_5", "evt_6"]


async def test_a_replica_whose_listen_connection_was_cut_catches_up(
    replicas: Replicas,
) -> None:
    on_b = await watching(replicas.b)
    await publish(replicas.a, "evt_1")
    assert event_ids(await received(on_b, 1)) == ["evt_1"]

    assert (
        await asyncio.to_thread(cut_listening_connections, replicas.database, NOTIFY_CHANNEL) == 2
    )
    # Stored (most likely) before b listens again, and nothing after: only b's catch-up once
    # it is listening again can find these (or, had it reconnected first, the NOTIFY).
    await publish(replicas.a, "evt_2", "evt_3")
    assert event_ids(await received(on_b, 2)) == ["evt_2", "evt_3"]
    on_b.cancel()
