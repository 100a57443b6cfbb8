"""The golden metrics of a mesh over a window, from two samples of its Envoys' stats: for each
service and each edge (caller -> callee), success rate, requests per second, latency quantiles,
retries, circuit-breaker overflows, outlier ejections, and the fault in force. Pure: reading a
running mesh is `shopmesh.observe.stats`.

Where each number comes from (the stat names are in `shopmesh.envoy.metrics`):

- A service: its sidecars' inbound, summed over its replicas. Every call that passed RBAC,
  counted by gRPC status by grpc_stats (so injected faults are the service's failures); latency
  is the app's own (grpc_stats' per-method `upstream_rq_time`). Calls RBAC refused are
  `refused` (`http.inbound.rbac.denied`). Its retries, overflows and ejections are those of
  every edge into it.
- An edge: the caller's egress (summed over the caller's replicas) or the gateway. The answers
  the caller got, retries included; latency as the caller saw it, retries and backoff included
  (the router's `cluster.svc_<callee>.upstream_rq_time`); the retries, overflows and ejections of
  the caller's cluster for the callee.
- The gateway: every call it routed (the sum of its edges), and what it refused before routing:
  `rate_limited` (its local rate limit) and `unrouted` (a method it does not expose).

Success rate: failures are the server-side codes (FAILURE_CODES); any other non-OK code is a
business outcome (a declined card is FAILED_PRECONDITION), counted apart and a success: the
service answered as it should. Health checks and reflection are left out (grpc_stats counts
them in an aggregate of their own).

A window is the difference of two samples (`between`). Counters are read live; histograms as
Envoy last merged them (every STATS_FLUSH_INTERVAL, 1 s), so quantiles cover the window give or
take a second, each exact to within its bucket (HISTOGRAM_BUCKETS: within 1 ms below 10 ms,
within a third of the value up to 10 s).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from shopmesh.envoy.edge import INGRESS
from shopmesh.envoy.faults import Fault
from shopmesh.envoy.metrics import (
    UPSTREAM_RQ_TIME,
    inbound_methods,
    method_stat,
    no_route,
    per_client_stat_prefix,
    rate_limited,
    rbac_denied,
)
from shopmesh.envoy.sidecar import INBOUND, LOCAL_APP
from shopmesh.envoy.upstream import cluster_name
from shopmesh.observe.envoystats import EnvoyStats, EnvoyWindow, Histogram, total
from shopmesh.observe.grpcstatus import STATUS_NAMES
from shopmesh.topology import GATEWAY, Topology

OK = "OK"
OTHER = "OTHER"
"""A status outside 0-16 (grpc_stats' `other`): a failure."""
FAILURE_CODES = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", OTHER}
)
STATUS_STATS: dict[str, str] = {
    **{str(code): name for code, name in STATUS_NAMES.items()},
    "other": OTHER,
}
"""grpc_stats' name for each status (`14`) -> the status name (UNAVAILABLE)."""
RETRIES = "upstream_rq_retry"
RETRY_SUCCESSES = "upstream_rq_retry_success"
OVERFLOWS = (
    "upstream_rq_pending_overflow",
    "upstream_rq_active_overflow",
    "upstream_cx_overflow",
    "upstream_cx_pool_overflow",
    "upstream_rq_retry_overflow",
)
"""Calls, connections and retries a circuit-breaker threshold refused (Envoy 1.40 counts a call
over max_requests as upstream_rq_active_overflow)."""
EJECTIONS = "outlier_detection.ejections_enforced_total"
EJECTED = "outlier_detection.ejections_active"


def cluster_stat(cluster: str, name: str) -> str:
    return f"cluster.{cluster}.{name}"


@dataclass(frozen=True)
class Tally:
    """What is added up over replicas, methods and edges before rates and quantiles."""

    codes: Mapping[str, int] = field(default_factory=dict)
    """Status name -> answers."""
    latency: Histogram = field(default_factory=Histogram)
    retries: int = 0
    retry_successes: int = 0
    overflows: int = 0
    ejections: int = 0
    ejected: int = 0

    def __add__(self, other: Tally) -> Tally:
        codes = collections.Counter(self.codes)
        codes.update(other.codes)
        return Tally(
            dict(codes),
            self.latency + other.latency,
            self.retries + other.retries,
            self.retry_successes + other.retry_successes,
            self.overflows + other.overflows,
            self.ejections + other.ejections,
            self.ejected + other.ejected,
        )

    def resilience(self) -> Tally:
        """Only the retries, overflows and ejections (what a service sums over its edges)."""
        return Tally(
            retries=self.retries,
            retry_successes=self.retry_successes,
            overflows=self.overflows,
            ejections=self.ejections,
            ejected=self.ejected,
        )


def tally_all(tallies: Sequence[Tally]) -> Tally:
    return sum(tallies, Tally())


@dataclass(frozen=True)
class Traffic:
    """The calls of one service or edge in a window."""

    calls: int
    rps: float
    success_rate: float | None
    """Share of calls that did not fail (OK and business outcomes); None without calls."""
    ok: int
    failures: Mapping[str, int]
    """Server-side codes (FAILURE_CODES) -> calls."""
    business: Mapping[str, int]
    """Every other non-OK code -> calls (FAILED_PRECONDITION, NOT_FOUND, ...)."""
    p50_ms: float | None
    """The median latency over the window, in milliseconds; None without calls."""
    p95_ms: float | None
    p99_ms: float | None
    retries: int
    retry_successes: int
    """Calls that succeeded after a retry."""
    overflows: int
    """Refused by a circuit-breaker threshold (OVERFLOWS)."""
    ejections: int
    """Outlier ejections enforced in the window."""
    ejected: int
    """Replicas ejected at the end of the window (each caller's view, added up)."""

    @classmethod
    def of(cls, tally: Tally, seconds: float) -> Traffic:
        ordered = [
            (name, tally.codes[name]) for name in STATUS_STATS.values() if tally.codes.get(name)
        ]
        failures = {name: n for name, n in ordered if name in FAILURE_CODES}
        business = {name: n for name, n in ordered if name != OK and name not in FAILURE_CODES}
        calls = sum(n for _, n in ordered)
        # Without calls, samples merged late (histograms lag up to a second) are not shown.
        latency = tally.latency if calls else Histogram()
        quantiles = [latency.quantile(q) for q in (0.5, 0.95, 0.99)]
        return cls(
            calls=calls,
            rps=calls / seconds,
            success_rate=(calls - sum(failures.values())) / calls if calls else None,
            ok=tally.codes.get(OK, 0),
            failures=failures,
            business=business,
            p50_ms=quantiles[0],
            p95_ms=quantiles[1],
            p99_ms=quantiles[2],
            retries=tally.retries,
            retry_successes=tally.retry_successes,
            overflows=tally.overflows,
            ejections=tally.ejections,
            ejected=tally.ejected,
        )

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ServiceStats:
    """One service: the calls its sidecars served (inbound), summed over its replicas."""

    name: str
    replicas: int
    pods: tuple[str, ...]
    """The replicas whose sidecars were read at both ends of the window."""
    inbound: Traffic
    refused: int
    """Calls its sidecars' RBAC refused (PERMISSION_DENIED; not in `inbound`)."""
    faults: Mapping[str, Fault]
    """Pod -> the fault injected into its calls (pods without one are left out)."""

    @property
    def fault(self) -> str | None:
        """The faults in words: one for the service when every replica has the same."""
        if not self.faults:
            return None
        described = {pod: fault.describe() for pod, fault in self.faults.items()}
        if len(set(described.values())) == 1 and len(described) == len(self.pods):
            return next(iter(described.values()))
        return "; ".join(f"{pod}: {text}" for pod, text in described.items())

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "replicas": self.replicas,
            "pods": list(self.pods),
            "inbound": self.inbound.as_json(),
            "refused": self.refused,
            "faults": {pod: asdict(fault) for pod, fault in self.faults.items()},
            "fault": self.fault,
        }


@dataclass(frozen=True)
class EdgeStats:
    """Calls from `caller` (a service, or "gateway") to `callee`, as the caller's Envoy saw
    them."""

    caller: str
    callee: str
    traffic: Traffic

    def as_json(self) -> dict[str, Any]:
        return {"caller": self.caller, "callee": self.callee, "traffic": self.traffic.as_json()}


@dataclass(frozen=True)
class GatewayStats:
    """The edge gateway: every call it routed, and what it refused before routing."""

    traffic: Traffic
    rate_limited: int
    unrouted: int
    """Methods it does not expose (UNIMPLEMENTED)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "traffic": self.traffic.as_json(),
            "rate_limited": self.rate_limited,
            "unrouted": self.unrouted,
        }


@dataclass(frozen=True)
class MeshStats:
    """The golden metrics of a mesh over one window."""

    window: float
    """Seconds between the two samples."""
    ended: datetime
    gateway: GatewayStats
    services: Mapping[str, ServiceStats]
    edges: tuple[EdgeStats, ...]
    unreachable: tuple[str, ...]
    """Envoys (pods, "gateway") not read at both ends: their calls are missing."""

    def edge(self, caller: str, callee: str) -> EdgeStats:
        for edge in self.edges:
            if (edge.caller, edge.callee) == (caller, callee):
                return edge
        raise KeyError(f"no edge {caller} -> {callee}")

    def as_json(self) -> dict[str, Any]:
        return {
            "window_seconds": self.window,
            "ended": self.ended.isoformat(),
            "gateway": self.gateway.as_json(),
            "services": {name: s.as_json() for name, s in self.services.items()},
            "edges": [edge.as_json() for edge in self.edges],
            "unreachable": list(self.unreachable),
        }


@dataclass(frozen=True)
class Sample:
    """Every Envoy of a mesh read at one moment, with what is needed to make sense of it."""

    at: float
    """time.monotonic() when it was taken."""
    wall: float
    """time.time() when it was taken."""
    topology: Topology
    pods: Mapping[str, str]
    """Pod -> its service."""
    envoys: Mapping[str, EnvoyStats]
    """Envoy (pod name, or "gateway") -> its stats; those that did not answer are left out."""
    faults: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Pod -> the fault runtime keys set on its sidecar (`active_keys`)."""


def calls(window: EnvoyWindow, cluster: str, grpc_service: str, methods: Sequence[str]) -> Tally:
    """The answers grpc_stats counted in `cluster` for `methods`, by status name."""
    codes: collections.Counter[str] = collections.Counter()
    for method in methods:
        for stat, name in STATUS_STATS.items():
            codes[name] += window.counter(method_stat(cluster, grpc_service, method, stat))
    return Tally(codes={name: n for name, n in codes.items() if n})


def served(window: EnvoyWindow, topology: Topology, service: str) -> Tally:
    """What one sidecar of `service` served: its calls and the app's latency."""
    grpc_service = topology.services[service].grpc_service
    methods = inbound_methods(topology, service)[grpc_service]
    latency = total(
        window.histogram(method_stat(LOCAL_APP, grpc_service, method, UPSTREAM_RQ_TIME))
        for method in methods
    )
    return calls(window, LOCAL_APP, grpc_service, methods) + Tally(latency=latency)


def called(window: EnvoyWindow, topology: Topology, callee: str, methods: Sequence[str]) -> Tally:
    """What one caller's Envoy got from `callee`: answers, latency and resilience."""
    cluster = cluster_name(callee)
    grpc_service = topology.services[callee].grpc_service
    return calls(window, cluster, grpc_service, methods) + Tally(
        latency=window.histogram(cluster_stat(cluster, UPSTREAM_RQ_TIME)),
        retries=window.counter(cluster_stat(cluster, RETRIES)),
        retry_successes=window.counter(cluster_stat(cluster, RETRY_SUCCESSES)),
        overflows=sum(window.counter(cluster_stat(cluster, name)) for name in OVERFLOWS),
        ejections=window.counter(cluster_stat(cluster, EJECTIONS)),
        ejected=window.gauge(cluster_stat(cluster, EJECTED)),
    )


def between(before: Sample, after: Sample) -> MeshStats:
    """The golden metrics of the window from `before` to `after` (two samples of one mesh)."""
    seconds = after.at - before.at
    if seconds <= 0:
        raise ValueError("`after` must be taken after `before`")
    topology = after.topology
    windows = {
        name: EnvoyWindow(before.envoys[name], stats)
        for name, stats in after.envoys.items()
        if name in before.envoys
    }
    pods: dict[str, list[str]] = {service: [] for service in topology.services}
    for pod, service in after.pods.items():
        if pod in windows:
            pods[service].append(pod)

    edges: dict[tuple[str, str], Tally] = {}
    gateway = windows.get(GATEWAY)
    for callee, methods in topology.gateway.exposes.items():
        edges[GATEWAY, callee] = (
            Tally() if gateway is None else called(gateway, topology, callee, methods)
        )
    for caller in topology.services.values():
        for callee, methods in caller.calls.items():
            edges[caller.name, callee] = tally_all(
                [called(windows[pod], topology, callee, methods) for pod in pods[caller.name]]
            )

    services = {}
    for name, spec in topology.services.items():
        inbound = tally_all([served(windows[pod], topology, name) for pod in pods[name]])
        resilience = tally_all(
            [t.resilience() for (_, callee), t in edges.items() if callee == name]
        )
        faults = {
            pod: Fault.from_runtime(keys)
            for pod, keys in after.faults.items()
            if keys and after.pods.get(pod) == name
        }
        services[name] = ServiceStats(
            name=name,
            replicas=spec.replicas,
            pods=tuple(pods[name]),
            inbound=Traffic.of(inbound + resilience, seconds),
            refused=sum(windows[pod].counter(rbac_denied(INBOUND)) for pod in pods[name]),
            faults=faults,
        )
    return MeshStats(
        window=seconds,
        ended=datetime.fromtimestamp(after.wall, UTC),
        gateway=GatewayStats(
            traffic=Traffic.of(
                tally_all([t for (caller, _), t in edges.items() if caller == GATEWAY]), seconds
            ),
            rate_limited=0
            if gateway is None
            else sum(
                gateway.counter(rate_limited(prefix))
                for prefix in (INGRESS, per_client_stat_prefix(INGRESS))
            ),
            unrouted=0 if gateway is None else gateway.counter(no_route(INGRESS)),
        ),
        services=services,
        edges=tuple(EdgeStats(c, s, Traffic.of(t, seconds)) for (c, s), t in edges.items()),
        unreachable=tuple(name for name in [*after.pods, GATEWAY] if name not in windows),
    )
