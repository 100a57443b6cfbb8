"""Orders with two replicas on Postgres, in the real mesh (Envoy, mTLS, the gateway): both take
checkouts, and `kill -9` of one mid-checkout leaves every order terminal, every charge single,
no reservation held and every event delivered once: the survivor takes the dead replica's sagas
over once their leases lapse."""

from __future__ import annotations

import itertools
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio

from shopmesh.envoy.faults import Fault
from shopmesh.local import faults, postgres
from shopmesh.local.mesh import RunningMesh
from tests.support.calls import checkout, running_load, summary
from tests.support.clients import gateway_clients
from tests.support.databases import query
from tests.support.mesh import running_mesh
from tests.support.observe import access_log
from tests.support.polling import eventually

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.postgres,
    pytest.mark.services_on_postgres,
]

# Short leases and sweeps, so a dead replica's sagas are taken over within seconds.
APP_ENV = {"SHOPMESH_ORDERS_LEASE_TTL": "2", "SHOPMESH_ORDERS_RECOVERY_INTERVAL": "0.5"}
CHECKOUTS = 60
KILL_AFTER = 12
CHARGE_DELAY_MS = 300
SETTLE_SECONDS = 60.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh() -> AsyncIterator[RunningMesh]:
    async with running_mesh(database="postgres", dashboard=False, app_env=APP_ENV) as running:
        yield running


def url(mesh: RunningMesh, service: str) -> str:
    return postgres.Cluster(mesh.paths.postgres).url(service, service)


async def test_both_orders_replicas_take_checkouts(mesh: RunningMesh) -> None:
    assert [pod.name for pod in mesh.replicas("orders")] == ["orders-0", "orders-1"]
    async with gateway_clients(mesh) as clients:
        shopper = await clients.create_user()
        placed = [await checkout(clients, shopper) for _ in range(8)]

    assert summary(placed) == {"OK CONFIRMED": 8}
    owners = query(
        url(mesh, "orders"),
        "SELECT DISTINCT lease_owner FROM saga_state WHERE order_id = ANY(?)",
        ([outcome.order_id for outcome in placed],),
    )
    assert sorted(str(owner) for (owner,) in owners) == ["orders-0", "orders-1"]


async def test_kill_9_of_one_orders_replica_mid_checkout_loses_and_doubles_nothing(
    mesh: RunningMesh,
) -> None:
    # Slow charges: when the kill comes, the replica surely holds sagas between their steps.
    await faults.inject(mesh, "payments", Fault.of(delay_ms=CHARGE_DELAY_MS))
    started = datetime.now(UTC)
    async with gateway_clients(mesh) as clients:
        shoppers = [await clients.create_user() for _ in range(4)]
        turns = itertools.cycle(shoppers)
        try:
            async with running_load(
                lambda: checkout(clients, next(turns)), in_flight=8, limit=CHECKOUTS
            ) as load:
                await load.until(KILL_AFTER, within=60)
                mesh.signal_app("orders-0", signal.SIGKILL)
                await mesh.wait_app_exit("orders-0")
                await load.until(CHECKOUTS, within=120)
        finally:
            await faults.clear(mesh, "payments")
            await mesh.restart("orders-0")

    # The checkouts the dead replica was driving were retried by the gateway on the survivor,
    # which took their sagas over once their leases lapsed: no client saw a failure.
    assert summary(load.outcomes) == {"OK CONFIRMED": CHECKOUTS}

    async def retried_on_the_survivor() -> bool:
        entries = access_log(mesh.gateway.access_log, since=started)
        return any(e["attempts"] > 1 for e in entries if e["path"].endswith("/PlaceOrder"))

    await eventually(retried_on_the_survivor, 30, "a PlaceOrder retried after the kill")

    orders, payments = url(mesh, "orders"), url(mesh, "payments")

    async def settled() -> bool:
        in_flight = query(orders, "SELECT COUNT(*) FROM saga_state WHERE step <> 'DONE'")
        pending = query(orders, "SELECT COUNT(*) FROM outbox WHERE state <> 'DELIVERED'")
        return in_flight == pending == [(0,)]

    await eventually(settled, SETTLE_SECONDS, "every saga DONE and every event delivered")

    statuses = {
        str(order): str(status)
        for order, status in query(orders, "SELECT order_id, status FROM orders")
    }
    assert set(statuses.values()) <= {"CONFIRMED", "REJECTED"}, summary(load.outcomes)
    # Every client that heard CONFIRMED has a CONFIRMED order.
    assert all(statuses[o.order_id] == "CONFIRMED" for o in load.outcomes if o.ok)

    charged = query(
        payments, "SELECT order_id, COUNT(*), MIN(status) FROM payments GROUP BY order_id"
    )
    assert all(count == 1 for _, count, _ in charged), "an order was charged twice"
    captured = {order_id for order_id, _, status in charged if status == "CAPTURED"}
    assert captured == {order_id for order_id, status in statuses.items() if status == "CONFIRMED"}

    held = query(url(mesh, "inventory"), "SELECT order_id FROM reservations WHERE status = 'HELD'")
    assert held == [], "reservations left held"

    notified = query(
        url(mesh, "notifications"),
        "SELECT order_id, COUNT(*) FROM notifications GROUP BY order_id",
    )
    # One notification per finished order (the events of the sticker sale), none twice.
    assert {str(order): count for order, count in notified} == dict.fromkeys(statuses, 1)
