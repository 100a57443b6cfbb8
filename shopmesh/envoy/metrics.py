"""Golden metrics in every Envoy: the grpc_stats filter (calls counted by gRPC status, per
method, with latency histograms), the histogram buckets, and the names of the stats they
produce, which `shopmesh.observe.stats` reads (writer and reader of one contract).

grpc_stats counts only the requests that reach it, so where it sits in a filter chain decides
what it counts: after the gateway's rate limit and the inbound RBAC, before the inbound fault
filter. What is refused before it is counted elsewhere: `rbac_denied`, `no_route`,
`rate_limited`.

Per-method stats exist only for the methods of the allowlist rendered from the topology; any
other path (health checks, reflection, a method nobody may call, a fuzzed name) is counted in
one aggregate per cluster (`cluster.<c>.grpc.<code>`), so no caller can create new stats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shopmesh.topology import Topology

GRPC_STATS = "envoy.filters.http.grpc_stats"
UPSTREAM_RQ_TIME = "upstream_rq_time"
STATS_FLUSH_INTERVAL = "1s"
"""How often Envoy merges its worker threads' histograms into what admin and Prometheus show
(its default, 5 s, would leave the last seconds of a window out of its latency quantiles).
Counters need no flush: admin reads them live."""

HISTOGRAM_BUCKETS: tuple[float, ...] = (
    *(0.5, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    *(10, 12, 15, 20, 25, 30, 40, 50, 60, 80),
    *(100, 120, 150, 200, 250, 300, 400, 500, 600, 800),
    *(1_000, 1_200, 1_500, 2_000, 2_500, 3_000, 4_000, 5_000, 6_000, 8_000),
    *(10_000, 15_000, 30_000, 60_000, 300_000, 600_000, 1_800_000, 3_600_000),
)
"""Upper bounds (ms) of every `upstream_rq_time` histogram: ten a decade from 10 ms to 10 s,
each at most 4/3 of the one below, so a quantile read from them is off by less than a third of
its value (interpolation usually does much better); below 10 ms every whole millisecond, which
is all Envoy records (truncated: a call under 1 ms is a 0, below the first bound)."""


def grpc_stats_filter(methods: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The grpc_stats filter with per-method stats for `methods` (gRPC service -> method names)
    and upstream latency histograms (`cluster.<c>.grpc.<service>.<method>.upstream_rq_time`)."""
    return {
        "name": GRPC_STATS,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
            "enable_upstream_stats": True,
            "individual_method_stats_allowlist": {
                "services": [
                    {"name": service, "method_names": list(names)}
                    for service, names in methods.items()
                ]
            },
        },
    }


def method_stat(cluster: str, grpc_service: str, method: str, stat: str) -> str:
    """The name of a per-method grpc_stats stat: `stat` is a status code number (`14`),
    `other` (a code outside 0-16), `total`, or `upstream_rq_time` (the histogram)."""
    return f"cluster.{cluster}.grpc.{grpc_service}.{method}.{stat}"


def rbac_denied(listener: str) -> str:
    """Requests the RBAC filter of `listener` refused (before grpc_stats)."""
    return f"http.{listener}.rbac.denied"


def no_route(listener: str) -> str:
    """Requests `listener` had no route for (never reach grpc_stats: no cluster to count in)."""
    return f"http.{listener}.no_route"


def rate_limited(stat_prefix: str) -> str:
    """Requests the local rate limit with `stat_prefix` refused (before grpc_stats)."""
    return f"{stat_prefix}.http_local_rate_limit.rate_limited"


def per_client_stat_prefix(stat_prefix: str) -> str:
    """The stat_prefix of the per-client rate limit beside the shared one of `stat_prefix`."""
    return f"{stat_prefix}_per_client"


def inbound_methods(topology: Topology, service: str) -> dict[str, list[str]]:
    """What a sidecar counts per method inbound: every method of `service` some caller may
    call (RBAC refuses the rest before grpc_stats sees them)."""
    granted = [m for methods in topology.callers(service).values() for m in methods]
    return {topology.services[service].grpc_service: list(dict.fromkeys(granted))}


def egress_methods(topology: Topology, service: str) -> dict[str, list[str]]:
    """What `service`'s sidecars count per method at the egress: the methods it may call."""
    calls = topology.services[service].calls
    return {topology.services[u].grpc_service: list(methods) for u, methods in calls.items()}


def gateway_methods(topology: Topology) -> dict[str, list[str]]:
    """What the gateway counts per method: the public API."""
    exposes = topology.gateway.exposes
    return {topology.services[s].grpc_service: list(methods) for s, methods in exposes.items()}


GRPC_TAGS = {
    # The service's dots would make Envoy's default extractors take its first two parts for
    # service and method; these take the whole service, the method and the status code.
    "envoy.grpc_bridge_service": r"^cluster\.[^.]+\.grpc\.((.+)\.)[^.]+\.[^.]+$",
    "envoy.grpc_bridge_method": r"^cluster\.[^.]+\.grpc\..+\.(([^.]+)\.)[^.]+$",
    "grpc_status": r"^cluster\.[^.]+\.grpc(?:\..+)?(\.(\d+|other))$",
}
"""Tags (Prometheus labels) of the grpc_stats counters: `envoy_cluster_grpc{
envoy_cluster_name, envoy_grpc_bridge_service, envoy_grpc_bridge_method, grpc_status}`."""


def stats_config() -> dict[str, Any]:
    """The bootstrap's `stats_config`: the latency buckets (HISTOGRAM_BUCKETS) for every
    `upstream_rq_time` histogram (the others keep Envoy's defaults), and GRPC_TAGS."""
    return {
        "stats_tags": [{"tag_name": name, "regex": regex} for name, regex in GRPC_TAGS.items()],
        "allow_default_tag_overrides": True,
        "histogram_bucket_settings": [
            {"match": {"suffix": UPSTREAM_RQ_TIME}, "buckets": list(HISTOGRAM_BUCKETS)}
        ],
    }
