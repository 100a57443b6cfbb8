"""Fault settings, before they reach a sidecar: what makes sense is turned into the runtime
keys of the inbound fault filter, what does not is refused saying why."""

from __future__ import annotations

import grpc
import pytest

from shopmesh.envoy.faults import (
    ABORT_GRPC_STATUS,
    ABORT_PERCENT,
    DELAY_MS,
    DELAY_PERCENT,
    NO_FAULT,
    Fault,
    FaultError,
    active_keys,
    grpc_status_code,
)


def test_an_abort_defaults_to_unavailable_and_clears_the_delay_keys() -> None:
    fault = Fault.of(abort_percent=30)

    assert fault.runtime() == {
        ABORT_PERCENT: "30",
        ABORT_GRPC_STATUS: "14",
        DELAY_MS: "",
        DELAY_PERCENT: "",
    }
    assert fault.describe() == "30% of calls fail with status 14"


def test_a_delay_defaults_to_every_call() -> None:
    fault = Fault.of(delay_ms=1500)

    assert (fault.delay_ms, fault.delay_percent) == (1500, 100)
    assert Fault.of(delay_ms=10, delay_percent=0).delay_percent == 0
    assert fault.describe() == "100% of calls wait 1500 ms"


@pytest.mark.parametrize(
    ("value", "number"),
    [
        ("UNAVAILABLE", 14),
        ("resource_exhausted", 8),
        ("13", 13),
        (4, 4),
        (grpc.StatusCode.ABORTED, 10),
    ],
)
def test_a_status_is_a_name_a_number_or_a_status_code(value: int | str, number: int) -> None:
    assert grpc_status_code(value) == number


@pytest.mark.parametrize("value", [0, "0", "OK", grpc.StatusCode.OK, 17, "99"])
def test_a_status_that_cannot_fail_a_call_is_refused(value: int | str) -> None:
    with pytest.raises(FaultError, match="cannot fail a call"):
        grpc_status_code(value)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "give abort_percent"),
        ({"abort_percent": 101}, "between 0 and 100"),
        ({"delay_ms": -1}, ">= 0"),
        ({"delay_percent": 50}, "give abort_percent"),
        ({"delay_ms": 5, "delay_percent": 150}, "between 0 and 100"),
        ({"grpc_status": "UNAVAILABLE", "delay_ms": 5}, "grpc_status needs abort_percent"),
        ({"abort_percent": 5, "grpc_status": "LOUD"}, "unknown gRPC status 'LOUD'"),
    ],
)
def test_a_fault_that_makes_no_sense_is_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(FaultError, match=message):
        Fault.of(**settings)  # type: ignore[arg-type]


def test_clearing_removes_every_key_and_only_set_keys_count_as_active() -> None:
    assert set(NO_FAULT) == {ABORT_PERCENT, ABORT_GRPC_STATUS, DELAY_MS, DELAY_PERCENT}
    assert set(NO_FAULT.values()) == {""}
    entries = {
        ABORT_PERCENT: {"final_value": "30"},
        ABORT_GRPC_STATUS: {"final_value": "14"},
        DELAY_MS: {"final_value": ""},
        "ingress.rate_limit.enabled": {"final_value": "100"},
    }
    assert active_keys(entries) == {ABORT_PERCENT: "30", ABORT_GRPC_STATUS: "14"}


@pytest.mark.parametrize(
    "fault",
    [
        Fault.of(abort_percent=30),
        Fault.of(delay_ms=1500, delay_percent=50),
        Fault.of(abort_percent=100, grpc_status="INTERNAL", delay_ms=10),
    ],
)
def test_a_fault_read_back_from_the_runtime_is_the_one_injected(fault: Fault) -> None:
    runtime = {key: {"final_value": value} for key, value in fault.runtime().items()}

    assert Fault.from_runtime(active_keys(runtime)) == fault
