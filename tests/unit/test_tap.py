"""`shopmesh tap`'s reading of the sidecars' access logs: which calls, told how, from when."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shopmesh.observe.tap import TapFilter, event, follow, line, status_filter

INBOUND_CHARGE = {
    "time": "2026-12-02T00:07:04.860Z",
    "listener": "inbound",
    "path": "/shop.payments.v1.PaymentsService/Charge",
    "peer": "spiffe://shop.local/ns/shop/sa/orders",
    "upstream_peer": None,
    "grpc_status": 0,
    "http_status": 200,
    "duration_ms": 4,
    "attempts": 1,
    "trace_id": "ab" * 16,
}
OUTBOUND_GET_USER = {
    **INBOUND_CHARGE,
    "listener": "egress",
    "path": "/shop.users.v1.UsersService/GetUser",
    "peer": None,
    "upstream_peer": "spiffe://shop.local/ns/shop/sa/users",
    "grpc_status": 14,
    "attempts": 3,
}


def test_inbound_calls_name_the_caller_and_outbound_ones_the_callee() -> None:
    inbound = event("payments-0", INBOUND_CHARGE)
    assert (inbound.direction, inbound.peer, inbound.status) == (
        "inbound",
        "spiffe://shop.local/ns/shop/sa/orders",
        "OK",
    )
    outbound = event("orders-0", OUTBOUND_GET_USER)
    assert (outbound.direction, outbound.peer, outbound.status, outbound.attempts) == (
        "outbound",
        "spiffe://shop.local/ns/shop/sa/users",
        "UNAVAILABLE",
        3,
    )
    assert "→ spiffe://shop.local/ns/shop/sa/users" in line(outbound)
    assert "00:07:04.860" in line(outbound)


def test_a_call_without_grpc_status_shows_its_http_status() -> None:
    refused = {**INBOUND_CHARGE, "grpc_status": None, "http_status": 503}
    assert event("orders-0", refused).status == "HTTP 503"


@pytest.mark.parametrize(
    ("method", "kept"),
    [
        ("Charge", True),
        ("PaymentsService/Charge", True),
        ("/shop.payments.v1.PaymentsService/Charge", True),
        ("Refund", False),
        ("arge", False),
    ],
)
def test_the_method_filter_matches_whole_names(method: str, kept: bool) -> None:
    assert TapFilter(method=method)(event("payments-0", INBOUND_CHARGE)) is kept


def test_statuses_are_given_by_name_or_number() -> None:
    assert status_filter("14") == status_filter("unavailable") == "UNAVAILABLE"
    with pytest.raises(ValueError, match="no gRPC status 99"):
        status_filter("99")
    with pytest.raises(ValueError, match="no gRPC status 'BROKEN'"):
        status_filter("BROKEN")
    assert not TapFilter(status="UNAVAILABLE")(event("payments-0", INBOUND_CHARGE))


def test_only_calls_logged_after_the_tap_started_are_shown(tmp_path: Path) -> None:
    log = tmp_path / "payments-0.access.log"
    log.write_text(json.dumps(INBOUND_CHARGE) + "\n")
    calls = follow([("payments-0", log)], TapFilter(), max_events=1, seconds=5.0)
    with log.open("a") as file:
        file.write(json.dumps(OUTBOUND_GET_USER) + "\n")
    assert [tapped.method for tapped in calls] == ["/shop.users.v1.UsersService/GetUser"]


def test_the_tap_ends_after_its_seconds(tmp_path: Path) -> None:
    log = tmp_path / "payments-0.access.log"
    log.write_text(json.dumps(INBOUND_CHARGE) + "\n")
    assert list(follow([("payments-0", log)], TapFilter(), seconds=0.2)) == []


def test_the_tap_ends_after_max_calls_and_survives_truncation(tmp_path: Path) -> None:
    log = tmp_path / "payments-0.access.log"
    log.write_text(json.dumps(INBOUND_CHARGE) + "\n" * 5000)
    calls = follow([("payments-0", log)], TapFilter(), max_events=2, seconds=5.0)
    log.write_text("")  # the log keeper emptied it (its old part went to .1)
    with log.open("a") as file:
        file.write(json.dumps(OUTBOUND_GET_USER) + "\n" + "not json\n")
        file.write(json.dumps(INBOUND_CHARGE) + "\n" + json.dumps(INBOUND_CHARGE))
    seen = [tapped.direction for tapped in calls]
    assert seen == ["outbound", "inbound"]
