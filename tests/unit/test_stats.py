"""Golden metrics from Envoy stats, without a mesh: window histograms and their quantiles,
counter deltas across restarts, what counts as a failure, and the whole computation on real
Envoy stats (tests/unit/data/envoy-stats.json, see tests.support.golden) checked against what
the client saw of the same traffic."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from rich.console import Console

from shopmesh.envoy.faults import Fault
from shopmesh.envoy.metrics import HISTOGRAM_BUCKETS
from shopmesh.observe.envoystats import UPTIME, EnvoyStats, EnvoyWindow, Histogram
from shopmesh.observe.golden import Tally
from shopmesh.observe.statcommand import parse_duration
from shopmesh.observe.stats import STATS_PATTERN, MeshStats, Sample, Sampler, Traffic, between
from shopmesh.observe.statview import selected, stats_view
from shopmesh.topology import GATEWAY
from tests.support.golden import DECLINED, PRODUCT_READS, Fixture, load_fixture
from tests.support.paths import TOPOLOGY

BOUNDS = (1.0, 2.0, 5.0, 10.0)


@pytest.fixture(scope="module")
def fixture() -> Fixture:
    return load_fixture()


@pytest.fixture(scope="module")
def stats(fixture: Fixture) -> MeshStats:
    return between(fixture.before, fixture.after)


# --- histograms ---------------------------------------------------------------------------------


def test_a_quantile_is_interpolated_within_its_bucket() -> None:
    histogram = Histogram(BOUNDS, (0, 4, 8, 8))  # 4 samples in (1, 2], 4 in (2, 5]

    assert histogram.quantile(0.5) == 2.0
    assert histogram.quantile(0.75) == pytest.approx(3.5)
    assert histogram.quantile(0.25) == pytest.approx(1.5)
    assert histogram.quantile(1.0) == 5.0


def test_the_first_bucket_starts_at_zero() -> None:
    assert Histogram(BOUNDS, (10, 10, 10, 10)).quantile(0.5) == pytest.approx(0.5)


def test_no_samples_no_quantile() -> None:
    assert Histogram(BOUNDS, (0, 0, 0, 0)).quantile(0.99) is None
    assert Histogram().quantile(0.5) is None


@pytest.mark.parametrize("q", [0, -0.5, 1.5])
def test_a_quantile_outside_zero_to_one_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        Histogram(BOUNDS, (1, 1, 1, 1)).quantile(q)


def test_the_window_holds_the_difference_of_the_cumulative_counts() -> None:
    before = Histogram(BOUNDS, (5, 5, 6, 6))
    after = Histogram(BOUNDS, (5, 9, 16, 17))

    window = after.since(before)

    assert window == Histogram(BOUNDS, (0, 4, 10, 11))
    # Old samples (all at most 1 ms) no longer pull the median down.
    assert window.quantile(0.5) == pytest.approx(2 + 3 * (5.5 - 4) / 6)


def test_a_histogram_that_shrank_was_restarted_so_all_its_samples_are_new() -> None:
    before = Histogram(BOUNDS, (5, 9, 16, 17))
    after = Histogram(BOUNDS, (1, 2, 2, 2))

    assert after.since(before) == after


def test_histograms_with_the_same_buckets_add_up() -> None:
    one = Histogram(BOUNDS, (1, 2, 3, 4))

    assert one + Histogram(BOUNDS, (0, 0, 1, 1)) == Histogram(BOUNDS, (1, 2, 4, 5))
    assert one + Histogram() == one == Histogram() + one
    with pytest.raises(ValueError, match="different buckets"):
        one + Histogram((1.0,), (1,))


# --- counters -----------------------------------------------------------------------------------


def envoy(uptime: int, **values: int) -> EnvoyStats:
    return EnvoyStats({UPTIME: uptime, **values}, {})


def test_a_counter_grows_by_the_difference_and_a_new_one_from_zero() -> None:
    window = EnvoyWindow(envoy(10, calls=7), envoy(12, calls=10, new=3))

    assert (window.counter("calls"), window.counter("new"), window.counter("absent")) == (3, 3, 0)


def test_after_a_restart_every_count_is_new() -> None:
    # More calls since the restart than before it: only the uptime tells.
    window = EnvoyWindow(envoy(100, calls=7), envoy(2, calls=9))

    assert window.restarted
    assert window.counter("calls") == 9


def test_a_gauge_is_read_at_the_end_of_the_window() -> None:
    window = EnvoyWindow(envoy(1, ejected=1), envoy(2, ejected=0))

    assert window.gauge("ejected") == 0


# --- success rate -------------------------------------------------------------------------------


def test_server_side_codes_fail_and_business_outcomes_do_not() -> None:
    codes = {"OK": 90, "UNAVAILABLE": 3, "INTERNAL": 1, "FAILED_PRECONDITION": 4, "NOT_FOUND": 2}

    traffic = Traffic.of(Tally(codes=codes), seconds=10)

    assert (traffic.calls, traffic.ok, traffic.rps) == (100, 90, 10.0)
    assert traffic.failures == {"INTERNAL": 1, "UNAVAILABLE": 3}
    assert traffic.business == {"NOT_FOUND": 2, "FAILED_PRECONDITION": 4}
    assert traffic.success_rate == pytest.approx(0.96)


def test_without_calls_there_is_no_success_rate_and_no_latency() -> None:
    traffic = Traffic.of(Tally(), seconds=5)

    assert (traffic.calls, traffic.rps, traffic.success_rate, traffic.p99_ms) == (0, 0, None, None)


# --- real Envoy stats ---------------------------------------------------------------------------


def test_envoy_renders_the_configured_latency_buckets(fixture: Fixture) -> None:
    histograms = fixture.after.envoys[GATEWAY].histograms

    assert histograms["cluster.svc_orders.upstream_rq_time"].bounds == HISTOGRAM_BUCKETS


def test_the_gateway_counted_what_the_client_got(fixture: Fixture, stats: MeshStats) -> None:
    checkouts = sum(
        sum(codes.values()) for kind, codes in fixture.client.items() if "PlaceOrder" in kind
    )

    orders = stats.edge(GATEWAY, "orders").traffic
    inventory = stats.edge(GATEWAY, "inventory").traffic
    assert (orders.calls, orders.ok, orders.success_rate) == (checkouts, checkouts, 1.0)
    assert (inventory.calls, inventory.ok) == (PRODUCT_READS, PRODUCT_READS)
    assert stats.gateway.traffic.calls == checkouts + PRODUCT_READS
    # The method the gateway does not expose never reached a cluster: refused, apart.
    assert (stats.gateway.unrouted, stats.gateway.rate_limited) == (1, 0)


def test_injected_aborts_are_the_services_failures_and_the_callers_retries(
    stats: MeshStats,
) -> None:
    payments = stats.services["payments"]
    edge = stats.edge("orders", "payments").traffic

    aborted = payments.inbound.failures["UNAVAILABLE"]
    assert aborted > 0
    # Every aborted attempt was retried by orders' sidecar, or was the answer orders got.
    assert aborted == edge.retries + edge.failures.get("UNAVAILABLE", 0)
    assert payments.inbound.retries == edge.retries
    assert edge.success_rate is not None
    assert payments.inbound.success_rate is not None
    assert edge.success_rate > payments.inbound.success_rate
    assert payments.faults == {"payments-0": Fault(abort_percent=30, grpc_status=14)}
    assert payments.fault == "30% of calls fail with status 14"


def test_declined_cards_are_business_outcomes_counted_apart(stats: MeshStats) -> None:
    payments = stats.services["payments"].inbound
    edge = stats.edge("orders", "payments").traffic

    assert payments.business == {"FAILED_PRECONDITION": DECLINED}
    assert edge.business == {"FAILED_PRECONDITION": DECLINED}
    assert edge.success_rate == pytest.approx(1 - edge.failed / edge.calls)


def test_calls_refused_by_rbac_are_not_the_services_calls(stats: MeshStats) -> None:
    users = stats.services["users"]

    assert users.refused == 1
    assert users.inbound.failures == {}
    assert users.inbound.calls == stats.edge("orders", "users").traffic.calls


def test_a_service_sums_its_replicas(fixture: Fixture, stats: MeshStats) -> None:
    inventory = stats.services["inventory"]
    replicas = [
        between(only(fixture.before, pod), only(fixture.after, pod)).services["inventory"]
        for pod in ("inventory-0", "inventory-1")
    ]

    assert inventory.pods == ("inventory-0", "inventory-1")
    assert inventory.inbound.calls == sum(r.inbound.calls for r in replicas)
    assert all(r.inbound.calls for r in replicas)


def test_latency_quantiles_come_from_the_window_histograms(
    fixture: Fixture, stats: MeshStats
) -> None:
    name = "cluster.svc_payments.upstream_rq_time"
    window = EnvoyWindow(fixture.before.envoys["orders-0"], fixture.after.envoys["orders-0"])
    edge = stats.edge("orders", "payments").traffic

    assert edge.p99_ms == window.histogram(name).quantile(0.99)
    for traffic in [edge, *(s.inbound for s in stats.services.values())]:
        assert traffic.p50_ms is not None
        assert traffic.p95_ms is not None
        assert traffic.p99_ms is not None
        assert 0 < traffic.p50_ms <= traffic.p95_ms <= traffic.p99_ms


def test_rates_are_per_second_of_the_window(fixture: Fixture, stats: MeshStats) -> None:
    assert stats.window == fixture.after.at - fixture.before.at
    orders = stats.services["orders"].inbound
    assert orders.rps == pytest.approx(orders.calls / stats.window)


class Recording(Mapping[str, int]):
    """Counters that remember which names were asked for."""

    def __init__(self, counters: Mapping[str, int], asked: set[str]) -> None:
        self._counters, self._asked = counters, asked

    def __getitem__(self, name: str) -> int:
        self._asked.add(name)
        return self._counters[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._counters)

    def __len__(self) -> int:
        return len(self._counters)


def test_every_stat_read_is_one_the_admin_query_asks_envoy_for(fixture: Fixture) -> None:
    asked: set[str] = set()

    def recording(sample: Sample) -> Sample:
        envoys = {
            name: EnvoyStats(Recording(stats.values, asked), stats.histograms)
            for name, stats in sample.envoys.items()
        }
        return dataclasses.replace(sample, envoys=envoys)

    between(recording(fixture.before), recording(fixture.after))

    assert asked
    assert [name for name in asked if not re.fullmatch(STATS_PATTERN, name)] == []


def only(sample: Sample, *envoys: str) -> Sample:
    return dataclasses.replace(
        sample, envoys={name: s for name, s in sample.envoys.items() if name in envoys}
    )


def test_an_envoy_not_read_twice_is_named_and_left_out(fixture: Fixture) -> None:
    everyone_but_payments = [name for name in fixture.after.envoys if name != "payments-0"]

    stats = between(fixture.before, only(fixture.after, *everyone_but_payments))

    assert stats.unreachable == ("payments-0",)
    assert stats.services["payments"].pods == ()
    assert stats.services["payments"].inbound.calls == 0


def test_the_json_form_is_plain_json(stats: MeshStats) -> None:
    document = json.loads(json.dumps(stats.as_json()))

    assert document["services"]["payments"]["inbound"]["business"] == {
        "FAILED_PRECONDITION": DECLINED
    }
    assert document["services"]["payments"]["faults"]["payments-0"]["abort_percent"] == 30
    assert [(e["caller"], e["callee"]) for e in document["edges"]][:2] == [
        (GATEWAY, "users"),
        (GATEWAY, "inventory"),
    ]
    assert document["window_seconds"] == stats.window


# --- recent samples -----------------------------------------------------------------------------


def empty(at: float) -> Sample:
    return Sample(at=at, wall=at, topology=TOPOLOGY, pods={}, envoys={})


async def sampler_at(*times: float, keep: float = 600.0) -> Sampler:
    pending = iter(times)

    async def take() -> Sample:
        return empty(next(pending))

    sampler = Sampler(take, keep)
    for _ in times:
        await sampler.poll()
    return sampler


async def test_a_window_starts_at_the_newest_sample_old_enough() -> None:
    sampler = await sampler_at(0, 1, 2, 3, 4, 5)

    window = sampler.window(2.5)

    assert window is not None
    assert window.window == 3


async def test_a_window_longer_than_what_was_sampled_covers_all_of_it() -> None:
    sampler = await sampler_at(10, 11, 12)

    window = sampler.window(30)

    assert window is not None
    assert window.window == 2


async def test_one_sample_is_no_window() -> None:
    assert (await sampler_at(1)).window(30) is None


async def test_samples_older_than_kept_are_dropped() -> None:
    sampler = await sampler_at(0, 5, 10, 15, keep=7)

    assert [s.at for s in sampler.samples] == [10, 15]


# --- the command and its tables -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("1m", 60),
        ("500ms", 0.5),
        ("1m30s", 90),
        ("2.5", 2.5),
        (" 2S ", 2),
        ("1h", 3600),
    ],
)
def test_a_window_is_a_duration_with_units_or_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1x", "s", "30s1", "0s", "0", "-1", "1m-5s"])
def test_a_window_that_is_no_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def rendered(view: Any, width: int = 260) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(view)
    return console.export_text()


def test_the_tables_show_each_service_and_edge_with_failures_apart(stats: MeshStats) -> None:
    services, edges = rendered(stats_view(stats, window=stats.window)).split(
        "edges (at the caller)"
    )
    rows = {line.split("│")[1].strip(): line for line in services.splitlines() if "│" in line}
    edge_rows = [[cell.strip() for cell in line.split("│")[1:3]] for line in edges.splitlines()]

    assert list(rows) == [GATEWAY, *TOPOLOGY.services]
    payments = rows["payments"]
    aborted = stats.services["payments"].inbound.failures["UNAVAILABLE"]
    assert f"UNAVAILABLE {aborted}" in payments
    assert f"FAILED_PRECONDITION {DECLINED}" in payments
    assert "30% of calls fail with status 14" in payments
    assert "1 unrouted" in rows[GATEWAY]
    assert [row for row in edge_rows if len(row) == 2 and row[0] != "from"] == [
        [edge.caller, edge.callee] for edge in stats.edges
    ]


def test_a_narrow_terminal_gets_compact_tables_that_fit(stats: MeshStats) -> None:
    text = rendered(stats_view(stats, window=stats.window, compact=True), width=120)

    assert max(len(line) for line in text.splitlines()) <= 120
    payments = next(line for line in text.splitlines() if line.startswith("│ payments"))
    aborted = stats.services["payments"].inbound.failures["UNAVAILABLE"]
    assert [cell.strip() for cell in payments.split("│")[7:9]] == [str(aborted), str(DECLINED)]
    assert "p95" not in text


def test_one_service_shows_only_its_edges(stats: MeshStats) -> None:
    shown = selected(stats, "payments")

    assert list(shown.services) == ["payments"]
    assert {(e.caller, e.callee) for e in shown.edges} == {
        (GATEWAY, "payments"),
        ("orders", "payments"),
    }
    assert shown.gateway == stats.gateway
