"""Timeouts and deadlines in the real mesh, through the gateway.

Each upstream has a route timeout (the whole call, retries included) and a per-try timeout
(one attempt) from envoy/mesh.yaml. A client's grpc-timeout is honoured when shorter and capped
at the route timeout when longer (`max_stream_duration.grpc_timeout_header_max`). Whatever
Envoy cuts off ends as DEADLINE_EXCEEDED, never as a retryable UNAVAILABLE.

Switch-off checks (by hand, not part of the suite; the `mesh` fixture overridden to start
the mesh with the change):
- without `max_stream_duration.max_stream_duration` on the routes (Envoy then ignores the
  route `timeout` altogether), the call without a deadline ran 10.3 s, five per-try timeouts,
  and the route-timeout test failed;
- without `grpc_timeout_header_max`, the JSON call's `grpc-timeout: 300m` was ignored and it
  ended after the per-try timeouts, and the grpc-timeout test failed;
- without the orders override of PlaceOrder in envoy/mesh.yaml (the gateway cuts each
  attempt at the default 1 s per-try timeout while a Charge may take 2 s), the slow-payment
  checkout failed with DEADLINE_EXCEEDED after 4.1 s.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from shopmesh.envoy.faults import Fault
from shopmesh.local import faults
from shopmesh.local.mesh import RunningMesh
from tests.support.calls import checkout, get_payment, get_user, timed
from tests.support.clients import MeshClients, Shopper, channel
from tests.support.http import post_json
from tests.support.observe import stats_of

pytestmark = pytest.mark.asyncio(loop_scope="module")

MARGIN = 1.0
"""Seconds a call may end after its budget (scheduling on a loaded 2-core machine)."""
NO_DEADLINE = None


async def test_upstream_slower_than_its_per_try_timeout_ends_deadline_exceeded_in_budget(
    mesh: RunningMesh, shopper: Shopper
) -> None:
    """users answers after 1.5 s, beyond its 1 s per-try timeout: every attempt is cut off
    and retried, and once the retries are spent the caller gets DEADLINE_EXCEEDED, within the
    route timeout, although it set no deadline of its own."""
    policy = mesh.topology.policies["users"].route
    attempts = policy.retry.num_retries + 1
    per_try = policy.per_try_timeout.total_seconds()
    gateway = await stats_of(mesh, "gateway")
    await faults.inject(mesh, "users", Fault.of(delay_ms=1500))
    try:
        async with channel(mesh.gateway_address) as target:
            missing = get_user(target, "u_missing", NO_DEADLINE, shopper.metadata)
            outcome = await timed(missing)
    finally:
        await faults.clear(mesh, "users")

    assert (outcome.code, outcome.detail) == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "upstream request timeout",
    )
    assert attempts * per_try <= outcome.elapsed <= policy.route_timeout.total_seconds() + MARGIN
    assert await gateway.delta("cluster.svc_users.upstream_rq_per_try_timeout") == {
        "cluster.svc_users.upstream_rq_per_try_timeout": attempts
    }


async def test_route_timeout_bounds_calls_without_or_with_a_longer_deadline(
    mesh: RunningMesh, shopper: Shopper
) -> None:
    """payments answers after 2.5 s, beyond its per-try timeout, so retries would go on; its
    8 s route timeout ends the call for a client without a deadline and caps a client's 30 s
    grpc-timeout alike."""
    budget = mesh.topology.policies["payments"].route.route_timeout.total_seconds()
    await faults.inject(mesh, "payments", Fault.of(delay_ms=2500))
    try:
        async with channel(mesh.gateway_address) as target:
            unbounded, longer = await asyncio.gather(
                timed(get_payment(target, "pay_missing", NO_DEADLINE, shopper.metadata)),
                timed(get_payment(target, "pay_missing", 30, shopper.metadata)),
            )
    finally:
        await faults.clear(mesh, "payments")

    for outcome in (unbounded, longer):
        assert outcome.code is grpc.StatusCode.DEADLINE_EXCEEDED, outcome
        assert budget - 0.1 <= outcome.elapsed <= budget + MARGIN, outcome
        # Envoy's own words: the route's stream duration limit (the route timeout).
        assert outcome.detail == "downstream duration timeout", outcome


async def test_shorter_client_grpc_timeout_is_honoured_by_envoy(
    mesh: RunningMesh, shopper: Shopper
) -> None:
    """A JSON client sends `grpc-timeout: 300m` and keeps no deadline of its own: Envoy itself
    ends the call at 300 ms with DEADLINE_EXCEEDED instead of waiting out the slow users."""
    await faults.inject(mesh, "users", Fault.of(delay_ms=1500))
    try:
        reply = await post_json(
            mesh.gateway_address,
            "/shop.users.v1.UsersService/GetUser",
            {"user_id": "u_missing"},
            {"grpc-timeout": "300m", **dict(shopper.metadata)},
        )
    finally:
        await faults.clear(mesh, "users")

    assert (reply.status, reply.json()) == (
        504,
        {
            "code": grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
            "message": "downstream duration timeout",
        },
    )
    # Envoy's timer starts when it has read the request, a little after the client's clock.
    assert 0.25 <= reply.elapsed <= 0.3 + MARGIN


async def test_slow_payment_within_its_budget_still_confirms_the_checkout(
    mesh: RunningMesh, mesh_clients: MeshClients, shopper: Shopper
) -> None:
    """Each charge takes 1.2 s, inside payments' 2 s per-try timeout: the checkout waits for
    it. The gateway's budget for PlaceOrder has to contain the saga's own calls; cutting
    each PlaceOrder attempt at the default 1 s made every such checkout fail."""
    await faults.inject(mesh, "payments", Fault.of(delay_ms=1200))
    try:
        outcome = await checkout(mesh_clients, shopper)
    finally:
        await faults.clear(mesh, "payments")

    assert outcome.ok, outcome
    assert outcome.elapsed >= 1.2
