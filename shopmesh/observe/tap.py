"""`shopmesh tap SERVICE`: the calls through a service's sidecars as they happen, read from
their JSON access logs (shopmesh.envoy.builders.access_log) — inbound calls with the caller's
SPIFFE ID, outbound calls with the callee's — one line each.

The access logs are the source because every call through a sidecar is in them, sampled or
not, with the attempts Envoy made; Envoy flushes them every 100 ms
(`--file-flush-interval-msec`, shopmesh.envoy.command), which is the tap's latency."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shopmesh.envoy.sidecar import EGRESS, INBOUND
from shopmesh.observe.grpcstatus import STATUS_NAMES, status_name

POLL_SECONDS = 0.1
INBOUND_ARROW, OUTBOUND_ARROW = "←", "→"


@dataclass(frozen=True)
class TapEvent:
    """One call through a sidecar (or the gateway)."""

    time: str
    envoy: str
    direction: str
    """`inbound` (a call the service served) or `outbound` (one it made)."""
    peer: str
    """The other side's SPIFFE ID (the caller inbound, the callee outbound), or `-`."""
    method: str
    status: str
    """The gRPC status name, or `HTTP <code>` for a call without one."""
    duration_ms: int
    attempts: int
    trace_id: str

    def as_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "envoy": self.envoy,
            "direction": self.direction,
            "peer": self.peer,
            "method": self.method,
            "status": self.status,
            "duration_ms": self.duration_ms,
            "attempts": self.attempts,
            "trace_id": self.trace_id,
        }


def call_status(entry: dict[str, Any]) -> str:
    """An access-log entry's gRPC status name, or its HTTP status for a call without one."""
    code = entry.get("grpc_status")
    if isinstance(code, int):
        return status_name(code)
    return f"HTTP {entry.get('http_status')}"


def event(envoy: str, entry: dict[str, Any]) -> TapEvent:
    """An access-log entry as a tap line."""
    outbound = entry.get("listener") == EGRESS
    peer = entry.get("upstream_peer") if outbound else entry.get("peer")
    return TapEvent(
        time=str(entry.get("time", "")),
        envoy=envoy,
        direction="outbound" if outbound else INBOUND,
        peer=str(peer or "-"),
        method=str(entry.get("path") or "-"),
        status=call_status(entry),
        duration_ms=int(entry.get("duration_ms") or 0),
        attempts=int(entry.get("attempts") or 0),
        trace_id=str(entry.get("trace_id") or "-"),
    )


def status_filter(value: str) -> str:
    """`--status` as a status name: `UNAVAILABLE`, `unavailable` or `14`."""
    if value.isdigit():
        if int(value) not in STATUS_NAMES:
            raise ValueError(f"no gRPC status {value} (0 to 16)")
        return STATUS_NAMES[int(value)]
    name = value.upper()
    if name not in STATUS_NAMES.values():
        raise ValueError(f"no gRPC status {value!r}: one of {', '.join(STATUS_NAMES.values())}")
    return name


@dataclass(frozen=True)
class TapFilter:
    """Which calls to show: `method` matches the full path or its last part (`Charge`,
    `PaymentsService/Charge`); `status` is a gRPC status name."""

    method: str | None = None
    status: str | None = None

    def __call__(self, tapped: TapEvent) -> bool:
        if self.status is not None and tapped.status != self.status:
            return False
        if self.method is None:
            return True
        method = self.method.lstrip("/")
        path = tapped.method.lstrip("/")
        return path == method or path.endswith(f"/{method}") or path.endswith(f".{method}")


class _Follower:
    """Lines appended to one log from now on; the log keeper's truncation starts it over."""

    def __init__(self, envoy: str, path: Path) -> None:
        self.envoy, self.path = envoy, path
        self._offset = path.stat().st_size if path.exists() else 0
        self._partial = b""

    def lines(self) -> Iterator[bytes]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size < self._offset:
            self._offset, self._partial = 0, b""
        if size == self._offset:
            return
        with self.path.open("rb") as file:
            file.seek(self._offset)
            chunk = file.read(size - self._offset)
        self._offset += len(chunk)
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        yield from complete


def follow(
    logs: Sequence[tuple[str, Path]],
    keep: Callable[[TapEvent], bool],
    *,
    max_events: int | None = None,
    seconds: float | None = None,
) -> Iterator[TapEvent]:
    """The calls logged to `logs` (Envoy name, access log) from this call on that `keep`
    keeps, until `max_events` were seen or `seconds` passed (or forever)."""
    followers = [_Follower(envoy, path) for envoy, path in logs]
    deadline = None if seconds is None else time.monotonic() + seconds
    return _events(followers, keep, max_events, deadline)


def _events(
    followers: Sequence[_Follower],
    keep: Callable[[TapEvent], bool],
    max_events: int | None,
    deadline: float | None,
) -> Iterator[TapEvent]:
    seen = 0
    while deadline is None or time.monotonic() < deadline:
        for follower in followers:
            for line in follower.lines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # not an access-log line (cannot happen unless hand-edited)
                if not isinstance(entry, dict) or entry.get("listener") not in (INBOUND, EGRESS):
                    continue
                tapped = event(follower.envoy, entry)
                if not keep(tapped):
                    continue
                yield tapped
                seen += 1
                if max_events is not None and seen >= max_events:
                    return
        time.sleep(POLL_SECONDS)


def line(tapped: TapEvent) -> str:
    """A tap event as one terminal line."""
    arrow = INBOUND_ARROW if tapped.direction == INBOUND else OUTBOUND_ARROW
    clock = tapped.time.partition("T")[2].rstrip("Z") or tapped.time
    return (
        f"{clock} {tapped.envoy:<14} {arrow} {tapped.peer:<40} {tapped.method} "
        f"{tapped.status} {tapped.duration_ms} ms attempts={tapped.attempts} "
        f"trace={tapped.trace_id}"
    )
