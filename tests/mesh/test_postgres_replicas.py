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

from shop.notifications.v1 import notifications_pb2
from shopmesh.envoy.faults import Fault
from shopmesh.local import faults, postgres
from shopmesh.local.mesh import RunningMesh
from shopmesh.observe.audit import audit, audit_until_settled, store_locations, store_reader
from tests.support.calls import checkout, running_load, summary
from tests.support.cli import shopmesh
from tests.support.clients import gateway_clients
from tests.support.databases import query
from tests.support.mesh import running_mesh
from tests.support.notifications import received
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
    """The service's own database, as its role reaches it."""
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


async def test_watchers_on_either_notifications_replica_see_each_order_once(
    mesh: RunningMesh,
) -> None:
    assert [pod.name for pod in mesh.replicas("notifications")] == [
        "notifications-0",
        "notifications-1",
    ]
    async with gateway_clients(mesh) as clients:
        shopper = await clients.create_user()
        # The gateway spreads streams over the replicas: with four, both have watchers, and
        # each watcher must see every order, whichever replica stored its notification.
        watches = [
            clients.notifications.WatchNotifications(
                notifications_pb2.WatchNotificationsRequest(),
                metadata=shopper.metadata,
                timeout=60,
            )
            for _ in range(4)
        ]
        try:
            for call in watches:
                await call.initial_metadata()
            placed = [await checkout(clients, shopper) for _ in range(4)]
            seen = [
                [message.notification.order_id for message in await received(call, len(placed))]
                for call in watches
            ]
        finally:
            for call in watches:
                call.cancel()

    assert summary(placed) == {"OK CONFIRMED": 4}
    assert seen == [[outcome.order_id for outcome in placed]] * len(watches)


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
    # which took their sagas over once their leases lapsed. A retry that found the lease not
    # yet lapsed within its wait is told ORDER_PENDING (the sweep finishes the order): no
    # client saw anything else.
    outcomes = summary(load.outcomes)
    assert set(outcomes) <= {"OK CONFIRMED", "UNAVAILABLE ORDER_PENDING"}, outcomes
    assert sum(outcomes.values()) == CHECKOUTS

    async def retried_on_the_survivor() -> bool:
        entries = access_log(mesh.gateway.access_log, since=started)
        return any(e["attempts"] > 1 for e in entries if e["path"].endswith("/PlaceOrder"))

    await eventually(retried_on_the_survivor, 30, "a PlaceOrder retried after the kill")

    with store_reader(store_locations(mesh)) as snapshot:
        findings = audit_until_settled(snapshot, SETTLE_SECONDS)
        [rows] = snapshot("orders", ["SELECT order_id, status FROM orders"])
    statuses = dict(rows)
    assert all(finding.ok for finding in findings), findings
    # Every client that heard CONFIRMED has a CONFIRMED order.
    assert all(statuses[o.order_id] == "CONFIRMED" for o in load.outcomes if o.ok)


async def test_audit_names_an_order_charged_twice(mesh: RunningMesh) -> None:
    payments = url(mesh, "payments")
    [(order_id,)] = query(payments, "SELECT order_id FROM payments LIMIT 1")
    query(
        payments,
        "INSERT INTO payments (payment_id, order_id, currency_code, minor_units, status,"
        " create_time_us, update_time_us) VALUES ('pay_twice', ?, 'USD', 299, 'CAPTURED', 0, 0)",
        (order_id,),
    )
    try:
        with store_reader(store_locations(mesh)) as snapshot:
            findings = {finding.check: finding for finding in audit(snapshot)}
        audited = shopmesh("audit", "--state-dir", str(mesh.state_dir))
    finally:
        query(payments, "DELETE FROM payments WHERE payment_id = 'pay_twice'")

    twice = findings["charged at most once"]
    assert (twice.ok, twice.detail) == (False, f"1 orders charged more than once: {order_id}")
    assert [check for check, finding in findings.items() if not finding.ok] == [
        "charged at most once"
    ]
    assert audited.returncode == 1, audited.stdout
    assert "FAILED" in audited.stdout
    assert shopmesh("audit", "--state-dir", str(mesh.state_dir)).returncode == 0
