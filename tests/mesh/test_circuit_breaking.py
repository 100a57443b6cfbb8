"""Circuit breaking / bulkheads in the real mesh.

The test plays the orders app: it calls through orders-0's egress socket, so the limits at
work are the orders sidecar's per-upstream circuit breakers from envoy/mesh.yaml. With
payments slowed down, more concurrent calls than payments' `max_requests` leave the excess
failing at once with UNAVAILABLE (Envoy's overflow, never retried) instead of queueing behind
the slow ones, while calls to inventory, a separate cluster with its own limits, stay fast.

Switch-off check (by hand, not part of the suite): with payments' `circuit_breaker.
max_requests` raised to 1000 in a copy of envoy/mesh.yaml (the `mesh` fixture overridden to
start `running_mesh(topology=<copy>)`, the test's load kept at 32 + 16 calls), all 48 calls
waited out the delay, none overflowed, and the test failed.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from shopmesh.envoy.faults import Fault
from shopmesh.local import faults
from shopmesh.local.mesh import RunningMesh
from tests.support.callers import as_user
from tests.support.calls import (
    RELEASED_NOTHING,
    Outcome,
    bounded,
    get_payment,
    release_nothing,
    summary,
    timed,
)
from tests.support.clients import channel, egress
from tests.support.observe import stats_of

pytestmark = pytest.mark.asyncio(loop_scope="module")

EXCESS = 16
DELAY_MS = 1000
FAST = 0.5
"""Seconds within which a call that is not delayed (or fails fast) must end."""
INVENTORY_CALLS = 20
SHOPPER = as_user("usr_0123456789abcdef0123456789abcdef")
"""The caller orders names when it calls on a shopper's behalf."""


async def test_excess_calls_to_a_slow_upstream_fail_fast_while_others_stay_healthy(
    mesh: RunningMesh,
) -> None:
    limit = mesh.topology.policies["payments"].circuit_breaker.max_requests
    gauges: dict[str, int] = {}
    async with channel(egress(mesh, "orders-0")) as target:
        # One call first, so the sidecar's connection to payments exists: without it every
        # call would queue for the connection and max_pending_requests would trip instead.
        warm_up = await timed(get_payment(target, "pay_missing", metadata=SHOPPER))
        assert warm_up.code is grpc.StatusCode.NOT_FOUND, warm_up
        orders = await stats_of(mesh, "orders-0")
        await faults.inject(mesh, "payments", Fault.of(delay_ms=DELAY_MS))
        try:
            payments_calls = [
                asyncio.create_task(
                    timed(get_payment(target, f"pay_missing_{index}", metadata=SHOPPER))
                )
                for index in range(limit + EXCESS)
            ]
            # While payments is saturated: inventory, behind the same sidecar, answers at once.
            await asyncio.wait(payments_calls, timeout=FAST)
            stats = await mesh.admin("orders-0").stats()
            gauges = {
                name: stats[f"cluster.svc_payments.circuit_breakers.default.{name}"]
                for name in ("rq_open", "remaining_rq")
            }

            async def one_release(_: int) -> Outcome:
                return await timed(release_nothing(target))

            inventory = await bounded(INVENTORY_CALLS, 4, one_release)
            payments = await asyncio.gather(*payments_calls)
        finally:
            await faults.clear(mesh, "payments")

    overflowed = [outcome for outcome in payments if outcome.code is grpc.StatusCode.UNAVAILABLE]
    waited = [outcome for outcome in payments if outcome.code is not grpc.StatusCode.UNAVAILABLE]
    assert (len(overflowed), len(waited)) == (EXCESS, limit), summary(payments)
    assert max(outcome.elapsed for outcome in overflowed) < FAST
    assert {outcome.detail.rpartition(" ")[2] for outcome in overflowed} == {"overflow"}
    # The admitted calls reached the payments app (which knows no such payment).
    assert {outcome.code for outcome in waited} == {grpc.StatusCode.NOT_FOUND}
    assert min(outcome.elapsed for outcome in waited) >= DELAY_MS / 1000
    assert gauges == {"rq_open": 1, "remaining_rq": 0}

    # Answered by an inventory app (ReleaseStock naming no order), at once.
    assert summary(inventory) == {RELEASED_NOTHING: INVENTORY_CALLS}
    assert max(outcome.elapsed for outcome in inventory) < FAST
    # Envoy counts the calls max_requests refused (and none that queued for a connection).
    assert await orders.delta(
        "cluster.svc_payments.upstream_rq_active_overflow",
        "cluster.svc_payments.upstream_rq_pending_overflow",
        "cluster.svc_payments.upstream_rq_retry",
        "cluster.svc_inventory.upstream_rq_active_overflow",
    ) == {
        "cluster.svc_payments.upstream_rq_active_overflow": EXCESS,
        "cluster.svc_payments.upstream_rq_pending_overflow": 0,
        "cluster.svc_payments.upstream_rq_retry": 0,
        "cluster.svc_inventory.upstream_rq_active_overflow": 0,
    }
