"""Fault injection at a sidecar's inbound listener: the runtime keys its fault filter reads,
and the settings `shopmesh fault` turns into them. The filter is off until the keys are set
through the admin endpoint /runtime_modify, so faults switch on and off without a restart."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc

ABORT_PERCENT = "fault.inbound.abort_percent"
ABORT_GRPC_STATUS = "fault.inbound.abort_grpc_status"
DELAY_PERCENT = "fault.inbound.delay_percent"
DELAY_MS = "fault.inbound.delay_ms"
RUNTIME_KEYS = (ABORT_PERCENT, ABORT_GRPC_STATUS, DELAY_PERCENT, DELAY_MS)


class FaultError(ValueError):
    """A fault setting makes no sense; the message says which and why."""


def grpc_status_code(value: int | str | grpc.StatusCode) -> int:
    """The number of a gRPC status that can fail a call, from a number, a name (UNAVAILABLE)
    or a grpc.StatusCode. OK is refused: an "aborted" call answering OK has no response
    message, which clients report as a broken stream, not as a status."""
    if isinstance(value, grpc.StatusCode):
        number: int = value.value[0]
    elif isinstance(value, str) and not value.isdigit():
        try:
            number = grpc.StatusCode[value.upper()].value[0]
        except KeyError:
            names = ", ".join(code.name for code in grpc.StatusCode if code.value[0])
            raise FaultError(f"unknown gRPC status {value!r}; expected 1-16 or {names}") from None
    else:
        number = int(value)
    if not 1 <= number <= 16:
        raise FaultError(f"gRPC status {number} cannot fail a call; expected 1-16")
    return number


@dataclass(frozen=True)
class Fault:
    """What to inject into every call reaching one service: `abort_percent` of calls fail with
    `grpc_status`; `delay_percent` of calls wait `delay_ms` first. None: not set."""

    abort_percent: int | None = None
    grpc_status: int | None = None
    delay_ms: int | None = None
    delay_percent: int | None = None

    @classmethod
    def of(
        cls,
        *,
        abort_percent: int | None = None,
        grpc_status: int | str | grpc.StatusCode | None = None,
        delay_ms: int | None = None,
        delay_percent: int | None = None,
    ) -> Fault:
        """A checked fault: aborts default to UNAVAILABLE, delays to every call."""
        for label, value in (("abort_percent", abort_percent), ("delay_percent", delay_percent)):
            if value is not None and not 0 <= value <= 100:
                raise FaultError(f"{label} must be between 0 and 100, got {value}")
        if delay_ms is not None and delay_ms < 0:
            raise FaultError(f"delay_ms must be >= 0, got {delay_ms}")
        if abort_percent is None and delay_ms is None:
            raise FaultError("give abort_percent (with grpc_status) or delay_ms (or both)")
        if delay_ms is None and delay_percent is not None:
            raise FaultError("delay_percent needs delay_ms")
        if abort_percent is None and grpc_status is not None:
            raise FaultError("grpc_status needs abort_percent")
        return cls(
            abort_percent=abort_percent,
            grpc_status=None
            if abort_percent is None
            else grpc_status_code("UNAVAILABLE" if grpc_status is None else grpc_status),
            delay_ms=delay_ms,
            delay_percent=None
            if delay_ms is None
            else (100 if delay_percent is None else delay_percent),
        )

    def runtime(self) -> dict[str, str]:
        """The admin runtime values to set; keys left unset are removed (empty value), so a new
        fault replaces the previous one instead of mixing with it."""
        values = {
            ABORT_PERCENT: self.abort_percent,
            ABORT_GRPC_STATUS: self.grpc_status,
            DELAY_MS: self.delay_ms,
            DELAY_PERCENT: self.delay_percent,
        }
        return {key: "" if value is None else str(value) for key, value in values.items()}

    @classmethod
    def from_runtime(cls, values: Mapping[str, str]) -> Fault:
        """The fault that runtime `values` (as `active_keys` reads them) inject: the reverse of
        `runtime()`. Values that are not whole numbers count as unset."""

        def number(key: str) -> int | None:
            value = values.get(key, "")
            return int(value) if value.isdigit() else None

        return cls(
            abort_percent=number(ABORT_PERCENT),
            grpc_status=number(ABORT_GRPC_STATUS),
            delay_ms=number(DELAY_MS),
            delay_percent=number(DELAY_PERCENT),
        )

    def describe(self) -> str:
        """The fault in words, as `shopmesh fault` and `shopmesh status` show it."""
        parts = []
        if self.abort_percent is not None:
            parts.append(f"{self.abort_percent}% of calls fail with status {self.grpc_status}")
        if self.delay_ms is not None:
            parts.append(f"{self.delay_percent}% of calls wait {self.delay_ms} ms")
        return "; ".join(parts) or "none"


NO_FAULT = {key: "" for key in RUNTIME_KEYS}
"""Runtime values that remove every fault (an empty value deletes an admin runtime key)."""


def active_keys(entries: Mapping[str, Mapping[str, object]]) -> dict[str, str]:
    """The fault keys set in an Envoy's /runtime `entries` (empty: no fault)."""
    return {
        key: str(entries[key].get("final_value", ""))
        for key in RUNTIME_KEYS
        if key in entries and entries[key].get("final_value", "") != ""
    }
