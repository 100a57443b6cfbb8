"""Golden metrics of the real mesh (`shopmesh stat`): calls counted by gRPC status by every
Envoy's grpc_stats filter, read from the admin endpoints and compared between two samples.

With 30 % of payments' calls aborted by its sidecar, payments' inbound shows the aborts as
failures and orders' sidecar shows the retries that hid them, while the gateway's success rate
stays high; a declined card is a business outcome (FAILED_PRECONDITION), counted apart, and
does not lower a success rate. Without grpc_stats there are no calls to count: every test here
fails.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from shopmesh.envoy.faults import Fault
from shopmesh.local import faults
from shopmesh.local.mesh import RunningMesh
from shopmesh.observe.stats import between, sample
from shopmesh.topology import GATEWAY
from tests.support.calls import STICKER, Outcome, bounded, checkout, running_load, summary
from tests.support.cli import shopmesh, shopmesh_ok
from tests.support.clients import MeshClients, Shopper
from tests.support.golden import histograms_merged
from tests.support.http import post_json
from tests.support.mesh import running_mesh, short_temp_dir

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHECKOUTS = 30
PAID = 3
DECLINED = 3
ABORT_PERCENT = 30
CLI_WINDOW = "3s"
CLI_CHECKOUTS = 300
"""At most this many checkouts run while `shopmesh stat` measures its window."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh() -> AsyncIterator[RunningMesh]:
    """The module's mesh, without the dashboard: these tests read the Envoys themselves, and
    one process fewer leaves more of 2 cores to the traffic."""
    async with running_mesh(dashboard=False) as running:
        yield running


async def test_a_declined_card_is_a_business_outcome_that_keeps_the_success_rate(
    mesh: RunningMesh, mesh_clients: MeshClients, shopper: Shopper
) -> None:
    before = await sample(mesh)
    paid = [await checkout(mesh_clients, shopper) for _ in range(PAID)]
    for _ in range(DECLINED):
        await mesh_clients.place_order(shopper, payment_token="tok_chargeDeclined")
    await histograms_merged(mesh)
    stats = between(before, await sample(mesh))

    assert summary(paid) == {"OK CONFIRMED": PAID}
    payments = stats.services["payments"].inbound
    edge = stats.edge("orders", "payments").traffic
    for traffic in (payments, edge):
        assert (traffic.ok, traffic.business, traffic.failures) == (
            PAID,
            {"FAILED_PRECONDITION": DECLINED},
            {},
        )
        assert traffic.success_rate == 1.0
        assert traffic.p50_ms is not None
    gateway = stats.edge(GATEWAY, "orders").traffic
    assert (gateway.calls, gateway.ok) == (PAID + DECLINED, PAID + DECLINED)


async def test_json_calls_through_the_gateway_are_counted_by_their_grpc_status(
    mesh: RunningMesh,
) -> None:
    path = "/shop.inventory.v1.InventoryService/GetProduct"
    before = await sample(mesh)
    found = await post_json(mesh.gateway_address, path, {"sku": STICKER})
    missing = await post_json(mesh.gateway_address, path, {"sku": "NO-SUCH-SKU"})
    stats = between(before, await sample(mesh))

    assert (found.status, missing.status) == (200, 404)
    edge = stats.edge(GATEWAY, "inventory").traffic
    assert (edge.ok, edge.business, edge.success_rate) == (1, {"NOT_FOUND": 1}, 1.0)


async def test_a_fault_shows_as_the_services_failures_and_its_callers_retries(
    mesh: RunningMesh, mesh_clients: MeshClients, shopper: Shopper
) -> None:
    before = await sample(mesh)
    await faults.inject(mesh, "payments", Fault.of(abort_percent=ABORT_PERCENT))
    try:

        async def one(_: int) -> Outcome:
            return await checkout(mesh_clients, shopper)

        outcomes = await bounded(CHECKOUTS, 2, one)
        after = await sample(mesh)
    finally:
        await faults.clear(mesh, "payments")
    stats = between(before, after)

    payments = stats.services["payments"]
    edge = stats.edge("orders", "payments").traffic
    aborted = payments.inbound.failures.get("UNAVAILABLE", 0)
    assert payments.fault == f"{ABORT_PERCENT}% of calls fail with status 14"
    assert aborted > 0
    assert edge.retries > 0
    # Every retry followed an aborted attempt; the service's row shows its callers' retries.
    assert aborted >= edge.retries == payments.inbound.retries
    assert payments.inbound.success_rate is not None
    assert edge.success_rate is not None
    assert payments.inbound.success_rate < edge.success_rate
    ok = sum(outcome.ok for outcome in outcomes)
    assert ok >= CHECKOUTS - 1, summary(outcomes)
    gateway = stats.gateway.traffic
    assert gateway.calls == CHECKOUTS
    assert gateway.success_rate is not None
    assert gateway.success_rate >= 0.95


async def test_stat_prints_the_window_as_json_while_checkouts_run_into_a_fault(
    mesh: RunningMesh, mesh_clients: MeshClients, shopper: Shopper
) -> None:
    await faults.inject(mesh, "payments", Fault.of(abort_percent=ABORT_PERCENT))
    try:
        async with running_load(
            lambda: checkout(mesh_clients, shopper), in_flight=2, limit=CLI_CHECKOUTS
        ):
            printed = await shopmesh_ok(
                "stat",
                "--state-dir",
                str(mesh.state_dir),
                "--window",
                CLI_WINDOW,
                "--output",
                "json",
            )
    finally:
        await faults.clear(mesh, "payments")

    document = json.loads(printed)
    assert 3 <= document["window_seconds"] < 10
    payments = document["services"]["payments"]
    assert payments["inbound"]["failures"]["UNAVAILABLE"] > 0
    assert payments["faults"]["payments-0"]["abort_percent"] == ABORT_PERCENT
    edge = next(
        e["traffic"]
        for e in document["edges"]
        if (e["caller"], e["callee"]) == ("orders", "payments")
    )
    assert edge["retries"] > 0
    assert edge["calls"] > 0
    assert document["gateway"]["traffic"]["success_rate"] >= 0.95
    assert list(document["services"]) == mesh.services


async def test_stat_shows_one_service_and_its_edges_in_a_table(mesh: RunningMesh) -> None:
    printed = await shopmesh_ok(
        "stat", "payments", "--state-dir", str(mesh.state_dir), "--window", "500ms"
    )

    rows = [line.split("│")[1:3] for line in printed.splitlines() if line.count("│") > 3]
    cells = [tuple(cell.strip() for cell in row) for row in rows]
    assert cells[:2] == [(GATEWAY, "-"), ("payments", "1/1")]
    assert set(cells[2:]) == {(GATEWAY, "payments"), ("orders", "payments")}


async def test_an_unknown_service_is_refused_naming_the_services(mesh: RunningMesh) -> None:
    result = await asyncio.to_thread(shopmesh, "stat", "nosuch", "--state-dir", str(mesh.state_dir))

    assert result.returncode == 2
    assert f"services: {', '.join(mesh.services)}" in result.stderr


async def test_without_a_mesh_stat_says_so_in_one_line() -> None:
    empty = short_temp_dir("sms-")
    try:
        result = await asyncio.to_thread(shopmesh, "stat", "--state-dir", str(empty))
    finally:
        empty.rmdir()

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: no mesh is running in {empty} (start one with `shopmesh up`)"
    ]
