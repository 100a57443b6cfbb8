"""Traces read back as trees (attempts numbered), and drawn as a waterfall."""

from __future__ import annotations

from rich.console import Console

from shopmesh.observe.traces import failed, summarize, tree
from shopmesh.observe.traceview import short, traces_table, waterfall
from tests.support.spans import MS, RETRIED, span


def test_attempts_are_numbered_in_start_order_and_orphans_are_roots() -> None:
    roots = tree(RETRIED)
    assert [root.span.span_id for root in roots] == ["egress", "late"]
    tries = roots[0].children
    assert [(n.span.span_id, n.attempt, n.attempts) for n in tries] == [
        ("try-1", 1, 2),
        ("try-2", 2, 2),
    ]
    assert failed(tries[0].span)
    assert not failed(tries[1].span)


def test_a_non_zero_grpc_status_is_a_failure_even_without_error_status() -> None:
    aborted = span("a", "", "inbound x", 0, 1, attributes={"grpc.status_code": "14"})
    assert failed(aborted)


def test_the_summary_is_the_earliest_root_and_the_whole_extent() -> None:
    summary = summarize("t" * 32, RETRIED)
    assert summary is not None
    assert (summary.root_name, summary.duration_ns, summary.span_count) == (
        "egress /shop.payments.v1.PaymentsService/Charge",
        30 * MS,
        4,
    )
    assert not summary.failed
    assert summarize("t" * 32, []) is None


def test_the_waterfall_shows_each_attempt_under_its_call() -> None:
    console = Console(width=200, record=True)
    console.print(waterfall("t" * 32, RETRIED))
    text = console.export_text()
    lines = [line for line in text.splitlines() if "attempt svc_payments" in line]
    assert len(lines) == 2
    assert "1/2" in lines[0]
    assert "UNAVAILABLE" in lines[0]
    assert "2/2" in lines[1]
    assert "egress PaymentsService/Charge" in text


def test_method_packages_are_left_out_of_span_names() -> None:
    assert short("inbound /shop.users.v1.UsersService/GetUser") == "inbound UsersService/GetUser"
    assert short("saga CHARGE_PAYMENT") == "saga CHARGE_PAYMENT"


def test_names_from_outside_callers_are_shown_as_they_are() -> None:
    """Span names hold request paths any caller of the gateway chooses: markup in them is
    text, not styling (nor an error)."""
    hostile = [span("a", "", "edge /x[/]y[link=http://evil.example]click[/link]", 0, 1)]
    console = Console(width=200, record=True)
    console.print(waterfall("t" * 32, hostile))
    assert "edge /x[/]y[link=http://evil.example]click[/link]" in console.export_text()
    summary = summarize("t" * 32, hostile)
    assert summary is not None
    console.print(traces_table([summary]))
    assert "[link=http://evil.example]" in console.export_text()
