"""Outlier detection and active gRPC health checks in the real mesh.

inventory runs two replicas, each an app with its own sidecar. The test plays the orders app
(calls through orders-0's egress socket), so the orders sidecar's view of the replicas
(admin /clusters health flags) is the one that counts:

- a replica whose calls fail while its health checks still pass is ejected by outlier
  detection, and comes back once healthy after the ejection time;
- a replica whose app is gone fails its active health checks and is removed from load
  balancing before any call has to find out, and returns as soon as its app serves again.

Switch-off checks (by hand, not part of the suite; the `mesh` fixture overridden to start
the mesh with the change): with `consecutive_5xx` and `consecutive_gateway_failure` at
1000000 the failing replica is never ejected; without `successful_active_health_check_
uneject_host: false` in the rendered clusters each passing health check lets it back in
(268 retries in the window that must need none); with the health-check interval at 3600 s
the killed replica is never flagged /failed_active_hc. Each fails its test.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from datetime import timedelta

import pytest

from shopmesh.local.mesh import RunningMesh
from tests.support.calls import (
    RELEASED_NOTHING,
    Outcome,
    answered,
    bounded,
    release_nothing,
    running_load,
    summary,
    timed,
)
from tests.support.clients import channel, egress
from tests.support.observe import host_flags, pod_fault, stats_of
from tests.support.polling import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

CALLER = "orders-0"
FAILING = "inventory-1"
CALLS = 200
WINDOW = 100
IN_FLIGHT = 4
RETRIES = "cluster.svc_inventory.upstream_rq_retry"
ABORTED = "http.inbound.fault.aborts_injected"
HEALTH_PASSED = "cluster.svc_inventory.health_check.success"
MARGIN = 3.0
"""Seconds a state change may take beyond what the policy implies (a loaded machine)."""
MAX_WAIT = 15.0
LOAD_LIMIT = 20_000
"""Calls at most in one load window (a window lasts a couple of seconds)."""


async def inventory_calls(mesh: RunningMesh, count: int) -> list[Outcome]:
    """`count` calls to inventory as the orders app, IN_FLIGHT at a time: each a ReleaseStock
    naming no order, which a replica that is reached answers INVALID_ARGUMENT at once."""
    async with channel(egress(mesh, CALLER)) as target:

        async def one(_: int) -> Outcome:
            return await timed(release_nothing(target))

        return await bounded(count, IN_FLIGHT, one)


async def wait_for_flags(
    mesh: RunningMesh, condition: Callable[[str], bool], what: str, within: timedelta
) -> None:
    """Poll the caller's health flags of the failing replica until `condition` holds: for
    the time the policy needs plus a margin, at most MAX_WAIT seconds."""

    async def holds() -> bool:
        return condition(await host_flags(mesh, CALLER, FAILING))

    seconds = min(within.total_seconds() + MARGIN, MAX_WAIT)
    await eventually(holds, seconds, f"{CALLER} to see {FAILING} {what}", interval=0.1)


async def requests_sent(mesh: RunningMesh, pod: str) -> int:
    """How many requests the caller's Envoy has sent to replica `pod` (its /clusters rq_total)."""
    body = await mesh.admin(CALLER).get("/clusters")
    prefix = f"svc_inventory::{mesh.pod(pod).inbound}::rq_total::"
    (total,) = [line[len(prefix) :] for line in body.splitlines() if line.startswith(prefix)]
    return int(total)


async def wait_for_traffic(mesh: RunningMesh, pod: str) -> None:
    """Call inventory (in small batches, for a bounded time) until calls reach `pod` again;
    every call must be answered by an app meanwhile."""
    before = await requests_sent(mesh, pod)
    outcomes: list[Outcome] = []

    async def reached() -> bool:
        outcomes.extend(await inventory_calls(mesh, 10))
        return await requests_sent(mesh, pod) > before

    await eventually(reached, within=5, what=f"calls to reach {pod} again")
    assert summary(outcomes) == {RELEASED_NOTHING: len(outcomes)}


async def test_replica_failing_its_calls_is_ejected_and_success_recovers(
    mesh: RunningMesh,
) -> None:
    outlier = mesh.topology.policies["inventory"].outlier_detection
    caller = await stats_of(mesh, CALLER)
    failing = await stats_of(mesh, FAILING)
    # Every call reaching inventory-1 is aborted UNAVAILABLE; its health checks (exempt from
    # faults) keep passing, so only outlier detection can take it out.
    await pod_fault(mesh, FAILING, abort_percent=100, abort_grpc_status=14)
    try:
        during = await inventory_calls(mesh, CALLS)
        await wait_for_flags(
            mesh,
            lambda flags: "/failed_outlier_check" in flags,
            "ejected",
            within=timedelta(seconds=2),
        )
        assert "/failed_active_hc" not in await host_flags(mesh, CALLER, FAILING)
        ejected = await caller.delta(
            "cluster.svc_inventory.outlier_detection.ejections_enforced_total", RETRIES
        )
        assert ejected["cluster.svc_inventory.outlier_detection.ejections_enforced_total"] >= 1
        # The few calls that hit inventory-1 before its ejection were retried elsewhere.
        assert ejected[RETRIES] >= outlier.consecutive_gateway_failure

        # Ejected: the calls go to inventory-0 at the first attempt, and inventory-1 stays
        # out although it passes health checks meanwhile (two rounds, each of which would
        # let it back in if a passing check ended an ejection).
        caller = await stats_of(mesh, CALLER)
        failing = await stats_of(mesh, FAILING)
        async with (
            channel(egress(mesh, CALLER)) as target,
            running_load(
                lambda: timed(release_nothing(target)), IN_FLIGHT, limit=LOAD_LIMIT
            ) as load,
        ):

            async def two_health_rounds() -> bool:
                passed = await caller.delta(HEALTH_PASSED)
                return passed[HEALTH_PASSED] >= 2 * len(mesh.replicas("inventory"))

            await eventually(two_health_rounds, within=10, what="two health-check rounds")
        after = load.outcomes
        assert await caller.delta(RETRIES) == {RETRIES: 0}
        assert await failing.delta(ABORTED) == {ABORTED: 0}
    finally:
        await pod_fault(mesh, FAILING)

    assert summary(after) == {RELEASED_NOTHING: len(after)}
    outcomes = during + after
    assert sum(answered(outcome) for outcome in outcomes) >= 0.99 * len(outcomes), summary(outcomes)

    # Back after the ejection time, once the fault is gone, and sent calls again.
    back = outlier.base_ejection_time + 2 * outlier.interval
    await wait_for_flags(mesh, lambda flags: flags == "healthy", "healthy again", within=back)
    await wait_for_traffic(mesh, FAILING)


async def test_replica_whose_app_is_gone_is_removed_by_health_checks(mesh: RunningMesh) -> None:
    health = mesh.topology.policies["inventory"].health_check
    detection = health.interval * health.unhealthy_threshold + health.timeout
    mesh.signal_app(FAILING, signal.SIGKILL)
    try:
        await mesh.wait_app_exit(FAILING, within=5)
        # No call is made meanwhile: only the active health checks can notice.
        await wait_for_flags(
            mesh,
            lambda flags: "/failed_active_hc" in flags,
            "fail its health checks",
            within=detection,
        )
        assert "/failed_outlier_check" not in await host_flags(mesh, CALLER, FAILING)

        caller = await stats_of(mesh, CALLER)
        sent = await requests_sent(mesh, FAILING)
        removed = await inventory_calls(mesh, WINDOW)
        assert summary(removed) == {RELEASED_NOTHING: WINDOW}
        assert await caller.delta(RETRIES) == {RETRIES: 0}
        assert await requests_sent(mesh, FAILING) == sent
    finally:
        app = mesh.pod(FAILING).app
        if app is None or not app.alive():
            await mesh.start_app(FAILING)

    await wait_for_flags(
        mesh,
        lambda flags: flags == "healthy",
        "healthy again",
        within=health.interval * health.healthy_threshold + health.timeout,
    )
    await wait_for_traffic(mesh, FAILING)
