"""The overload bench's parts that decide a verdict (scripts.bench.open_loop, .overload): the
percentile, what a run offered and admitted, which step is the capacity, which access-log lines
are the gateway's PlaceOrder calls, and when the orders are consistent afterwards."""

from __future__ import annotations

import json
import math

from scripts.bench.open_loop import OK, REFUSED, Call, Run, percentile
from scripts.bench.overload import (
    CONFIRMED,
    PENDING,
    PLACE_ORDER,
    Consistency,
    Logged,
    Overload,
    Step,
    capacity_of,
    gateway_calls,
)
from scripts.bench.overload_report import floor_rows, min_rtt_windows


def admitted(due: float, latency_ms: float, order_id: str = "") -> Call:
    return Call(due, due, latency_ms, OK, order_id=order_id, order_status=CONFIRMED)


def refused(due: float) -> Call:
    return Call(due, due, 1.0, REFUSED, "OVERLOADED", True)


def test_the_percentile_is_the_nearest_rank_of_the_sorted_values() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.5) == 50.0
    assert percentile([7.0], 0.99) == 7.0
    assert math.isnan(percentile([], 0.99))


def test_a_run_splits_its_calls_into_admitted_refused_and_the_rest() -> None:
    calls = [
        admitted(0.0, 10.0),
        refused(0.1),
        Call(0.2, 0.2, 5000.0, "DEADLINE_EXCEEDED"),
    ]
    run = Run(10.0, 0.3, calls, 5.2)
    assert (len(run.admitted), len(run.refused), len(run.failed)) == (1, 1, 1)
    assert run.admitted_share == 1 / 3
    assert run.outcomes() == {
        CONFIRMED: 1,
        "RESOURCE_EXHAUSTED OVERLOADED": 1,
        "DEADLINE_EXCEEDED (no reason)": 1,
    }


def test_a_generator_that_kept_its_schedule_offered_the_rate() -> None:
    run = Run(100.0, 1.0, [admitted(i / 100, 10.0) for i in range(100)], 1.1)
    assert round(run.offered_rate) == 100
    assert not run.generator_bound


def test_a_generator_that_sent_late_was_the_bottleneck() -> None:
    # Due every 10 ms, but each left 4 ms later than the one before: behind and slower.
    calls = [Call(i / 100, i / 100 + i * 0.004, 10.0, OK) for i in range(100)]
    run = Run(100.0, 1.0, calls, 1.5)
    assert run.offered_rate < 0.95 * run.rate
    assert run.generator_bound


def step(rate: float, p99_ms: float, refusals: int = 0) -> Step:
    calls = [admitted(i / rate, p99_ms) for i in range(100 - refusals)]
    calls += [refused(1.0) for _ in range(refusals)]
    return Step(Run(rate, 1.0, calls, 1.0), bound_ms=100.0)


def test_the_capacity_is_the_highest_rate_within_the_bound_with_99_percent_admitted() -> None:
    steps = [step(40, 50), step(60, 90), step(80, 150)]
    assert [s.passed for s in steps] == [True, True, False]
    assert capacity_of(steps) == 60


def test_a_step_that_refuses_more_than_1_percent_is_beyond_capacity() -> None:
    assert step(60, 50, refusals=1).passed
    assert not step(60, 50, refusals=2).passed
    assert capacity_of([step(60, 50, refusals=2)]) is None


def log_line(path: str, status: str, duration: int, listener: str = "ingress") -> str:
    entry = {"listener": listener, "path": path, "grpc_status": status, "duration_ms": duration}
    return json.dumps({**entry, "flags": "-"})


def test_the_gateway_calls_are_the_public_listeners_lines_of_the_path() -> None:
    lines = [
        log_line(PLACE_ORDER, "8", 1),
        log_line("/shop.orders.v1.OrdersService/GetOrder", "0", 3),
        log_line(PLACE_ORDER, "0", 40, listener="gateway_health"),
        log_line(PLACE_ORDER, "0", 42),
        log_line(PLACE_ORDER, "0", 42)[:20],  # still being written
    ]
    assert gateway_calls(lines, PLACE_ORDER) == [Logged("8", 1, "-"), Logged("0", 42, "-")]


def consistency(statuses: dict[str, str], unanswered: int = 0, sold: int = 2) -> Consistency:
    return Consistency(statuses, {"a", "b"}, unanswered, 0.0, sold)


def test_orders_are_consistent_when_each_admitted_is_confirmed_and_sold_once() -> None:
    assert consistency({"a": CONFIRMED, "b": CONFIRMED}).consistent


def test_an_order_no_call_was_told_of_is_inconsistent_unless_a_call_went_unanswered() -> None:
    statuses = {"a": CONFIRMED, "b": CONFIRMED, "c": CONFIRMED}
    assert consistency(statuses, sold=3).unexplained == 1
    assert not consistency(statuses, sold=3).consistent
    assert consistency(statuses, unanswered=1, sold=3).consistent


def test_a_missing_pending_or_unsold_order_is_inconsistent() -> None:
    assert consistency({"a": CONFIRMED}, sold=1).missing == {"b"}
    assert consistency({"a": CONFIRMED, "b": PENDING}, sold=1).pending == 1
    assert not consistency({"a": CONFIRMED, "b": CONFIRMED}, sold=3).consistent


def test_min_rtt_windows_count_each_start_of_the_controllers_re_measurement() -> None:
    def samples(*active: int) -> list[dict[str, int]]:
        return [{"min_rtt_calculation_active": value} for value in active]

    assert min_rtt_windows(samples(0, 0, 0)) == 0
    assert min_rtt_windows(samples(1, 1, 0, 0, 1, 0)) == 2
    assert min_rtt_windows(samples(0, 1, 1, 1)) == 1
    assert min_rtt_windows([{"concurrency_limit": 4}]) == 0


def test_the_floor_rows_apply_littles_law_to_the_measured_capacity() -> None:
    figures = Overload(100.0, Run(10.0, 1.0, [admitted(0.0, 30.0)], 1.0), capacity=80.0)
    figures.min_concurrency = 16
    needs, wait = (text for _, text in floor_rows(figures, 30.0))
    assert needs == "80.0/s x 30.0 ms = 2.4"
    assert wait == "16 / 80.0/s = 200 ms"
    assert floor_rows(Overload(100.0, figures.baseline), 30.0) == []
