"""Bodies that are not their request message, through the real gateway to the real apps:
every exposed method answers INVALID_ARGUMENT MALFORMED_REQUEST, which ejects no replica (the
caller's error is no 5xx), and a flood of them is at most one log line a second in the app's
log, the next line counting the ones it left out."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc import aio

from shopmesh.envoy.upstream import cluster_name
from shopmesh.local.mesh import RunningMesh
from shopmesh.topology import GATEWAY, load_topology
from tests.support.calls import MALFORMED, bounded, call_raw, call_raw_any, method_path
from tests.support.clients import MeshClients, Shopper
from tests.support.errors import expect_error_info
from tests.support.observe import stats_of, upstream_health
from tests.support.paths import MESH_FILE
from tests.support.polling import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOPOLOGY = load_topology(MESH_FILE)
EXPOSED = [
    descriptor_pool.Default()
    .FindServiceByName(TOPOLOGY.services[service].grpc_service)
    .methods_by_name[name]
    for service, names in TOPOLOGY.gateway.exposes.items()
    for name in names
]
GET_PRODUCT = "/shop.inventory.v1.InventoryService/GetProduct"
CREATE_USER = "/shop.users.v1.UsersService/CreateUser"
"""Served by users' one replica: every call of the flood reaches the same app log."""
FLOOD = 40
"""Well under the gateway's rate-limit bucket, so every call reaches the app."""


@pytest.mark.parametrize("method", EXPOSED, ids=method_path)
async def test_an_undecodable_body_is_malformed_request(
    mesh_clients: MeshClients, shopper: Shopper, method: Any
) -> None:
    # Signed in: a protected method's body is read only once the token passed.
    with pytest.raises(aio.AioRpcError) as raised:
        await call_raw_any(mesh_clients.channel, method, MALFORMED, metadata=shopper.metadata)
    info = expect_error_info(raised.value, grpc.StatusCode.INVALID_ARGUMENT)
    assert info.reason == "MALFORMED_REQUEST"
    assert method_path(method) in (raised.value.details() or "")


async def test_undecodable_bodies_eject_no_replica(
    mesh: RunningMesh, mesh_clients: MeshClients
) -> None:
    outlier = mesh.topology.policies["inventory"].outlier_detection
    replicas = len(mesh.replicas("inventory"))
    ejections = f"cluster.{cluster_name('inventory')}.outlier_detection.ejections_enforced_total"
    gateway = await stats_of(mesh, GATEWAY)
    # Twice the run of failures that ejects a replica, for each replica.
    count = 2 * outlier.consecutive_5xx * replicas
    outcomes = await bounded(
        count, 1, lambda _: call_raw(mesh_clients.channel, GET_PRODUCT, MALFORMED)
    )
    assert {(o.code, o.detail) for o in outcomes} == {
        (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
    }
    assert await gateway.delta(ejections) == {ejections: 0}
    assert set((await upstream_health(mesh, GATEWAY, "inventory")).values()) == {"healthy"}


def lines_about(log: Path, offset: int, method: str) -> list[dict[str, Any]]:
    """The JSON lines written to `log` after `offset` that mention `method`."""
    with log.open("rb") as file:
        file.seek(offset)
        text = file.read().decode()
    return [json.loads(line) for line in text.splitlines() if method in line]


async def test_a_flood_of_undecodable_bodies_is_one_log_line_a_second(
    mesh: RunningMesh, mesh_clients: MeshClients
) -> None:
    log = mesh.pod("users-0").app_log
    call = functools.partial(call_raw, mesh_clients.channel, CREATE_USER, MALFORMED)

    # Start where a line was just logged: whatever came before is counted in that line.
    offset = log.stat().st_size

    async def logged() -> bool:
        await call()
        return bool(lines_about(log, offset, CREATE_USER))

    await eventually(logged, within=10, what="a line about an undecodable body", interval=0.2)
    offset = log.stat().st_size
    started = time.monotonic()
    outcomes = await bounded(FLOOD, 8, lambda _: call())
    elapsed = time.monotonic() - started
    assert {(o.code, o.detail) for o in outcomes} == {
        (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
    }

    # Lines of one reason are a second apart at least: in `elapsed` seconds, int(elapsed) + 1.
    flood_lines = lines_about(log, offset, CREATE_USER)
    assert len(flood_lines) <= int(elapsed) + 1 < FLOOD
    assert all(line["reason"] == "MALFORMED_REQUEST" for line in flood_lines)
    assert not any("exception" in line for line in flood_lines)

    # The next line, a second later, counts what was left out: every call is accounted for.
    sent = FLOOD

    async def counted() -> bool:
        nonlocal sent
        await call()
        sent += 1
        return any("suppressed" in line for line in lines_about(log, offset, CREATE_USER))

    await eventually(counted, within=10, what="a line counting the suppressed ones", interval=0.2)
    lines = lines_about(log, offset, CREATE_USER)
    assert len(lines) + sum(line.get("suppressed", 0) for line in lines) == sent
