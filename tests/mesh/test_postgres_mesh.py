"""`shopmesh up --db postgres`: the whole mesh on a local Postgres cluster under its state
directory, each service in its own database, checkouts through the gateway stored there;
`down` stops the cluster and keeps its data."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from services.common.config import DATABASE_URL
from shopmesh.layout import APP
from shopmesh.local import postgres
from shopmesh.local.mesh import RunningMesh
from shopmesh.local.startup import down
from tests.support.calls import checkout
from tests.support.clients import gateway_clients
from tests.support.databases import count_rows
from tests.support.mesh import running_mesh

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.postgres]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh() -> AsyncIterator[RunningMesh]:
    async with running_mesh(database="postgres", dashboard=False) as running:
        yield running


async def test_each_app_is_given_its_own_database(mesh: RunningMesh) -> None:
    cluster = postgres.Cluster(mesh.paths.postgres)
    urls = {
        record.name: record.env[DATABASE_URL]
        for record in mesh.state.processes.values()
        if record.kind == APP
    }

    assert sorted(set(urls.values())) == sorted(
        cluster.url(service, service) for service in mesh.topology.services
    )
    assert stat.S_IMODE(mesh.paths.root.stat().st_mode) in (0o700, 0o711)
    assert stat.S_IMODE(cluster.secrets.stat().st_mode) == 0o700


async def test_a_checkout_through_the_gateway_is_stored_in_postgres(mesh: RunningMesh) -> None:
    cluster = postgres.Cluster(mesh.paths.postgres)
    async with gateway_clients(mesh) as clients:
        shopper = await clients.create_user()
        placed = await checkout(clients, shopper)

    assert (placed.code, placed.detail) == (grpc.StatusCode.OK, "CONFIRMED")
    orders = cluster.url("orders", "orders")
    assert count_rows(orders, "SELECT COUNT(*) FROM orders WHERE order_id = ?", (placed.order_id,))
    payments = cluster.url("payments", "payments")
    assert (
        count_rows(payments, "SELECT COUNT(*) FROM payments WHERE order_id = ?", (placed.order_id,))
        == 1
    )
    assert not mesh.paths.data.joinpath("orders.db").exists()


async def test_down_stops_the_cluster_and_keeps_its_data(mesh: RunningMesh) -> None:
    cluster = postgres.Cluster(mesh.paths.postgres)
    async with gateway_clients(mesh) as clients:
        await clients.create_user()
    users = count_rows(cluster.url("users", "users"), "SELECT COUNT(*) FROM users")

    await down(mesh.paths)

    assert not postgres.running(cluster)
    postgres.start(cluster)
    try:
        assert count_rows(cluster.url("users", "users"), "SELECT COUNT(*) FROM users") == users
    finally:
        postgres.stop(cluster)
