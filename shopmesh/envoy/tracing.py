"""Tracing in every Envoy: Envoy's OpenTelemetry tracer exporting OTLP/gRPC to the collector.

Who decides: the gateway alone starts traces, for `sampling` of the calls from outside, and
starts a fresh one whatever `traceparent` (or `x-request-id`, `x-client-trace-id`,
`x-envoy-force-trace`, W3C `baggage`) an outside caller sends: those headers are removed before
the tracer sees them, so a caller can neither force tracing nor carry baggage into the mesh.
Envoy keeps its decision in the `x-request-id` it generates; sidecars never start a trace
(random sampling 0) and trace exactly the calls whose `x-request-id` says so, which the apps
pass on from each call they serve to the calls they make. Each attempt at an upstream is a
span of its own (`spawn_upstream_span`), so a retried call shows every try.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shopmesh.envoy.builders import Json, http2_options, tcp, typed, unix
from shopmesh.layout import Endpoint

COLLECTOR = "otel_collector"
"""The cluster every Envoy exports its spans through."""
FLUSH_INTERVAL_MS = 500
"""How often Envoy sends its spans (Envoy's default, 5 s, leaves traces incomplete for long)."""
MIN_FLUSH_SPANS = 1000
"""Spans an Envoy buffers before it sends them early. Envoy's default, 5, meant one Export call
per 5 spans: under checkout load the collector spent most of its CPU receiving those calls. With
the interval above, a busy sidecar now sends its spans every 500 ms in one call, and the bound
keeps what one Envoy buffers small (a span is a few hundred bytes)."""
OUTSIDE_TRACE_HEADERS = (
    "traceparent",
    "tracestate",
    "baggage",
    "x-request-id",
    "x-client-trace-id",
    "x-envoy-force-trace",
)
TRACE_ID_HEADER = "x-trace-id"
"""The gateway's answer carries the trace id of the call, to look it up (`shopmesh trace`)."""
# Requests from these addresses (the mesh's own hops: Unix sockets from the apps, loopback
# locally, pod addresses on Kubernetes) keep their x-request-id, and so Envoy's decision.
INTERNAL_RANGES = (
    ("127.0.0.0", 8),
    ("10.0.0.0", 8),
    ("172.16.0.0", 12),
    ("192.168.0.0", 16),
    ("::1", 128),
    ("fc00::", 7),
)


@dataclass(frozen=True)
class Tracing:
    """Where spans go and how many calls the gateway traces (0 to 1)."""

    collector: Path | Endpoint
    """The collector's Unix socket, or the host:port of the user's own (Jaeger, Tempo...)."""
    sampling: float
    flush_interval_ms: int = FLUSH_INTERVAL_MS

    def __post_init__(self) -> None:
        if not 0 <= self.sampling <= 1:
            raise ValueError(f"sampling must be between 0 and 1, got {self.sampling}")


def tracing_config(tracing: Tracing, service_name: str, sampling: float, role: str) -> Json:
    """The `tracing` block of an HTTP connection manager: random sampling of `sampling` (0 to
    1) of the requests nobody decided for, spans sent as `service_name`. A span is named by
    the listener's `role` and the gRPC method (`inbound /shop.users.v1.UsersService/GetUser`),
    each attempt by the cluster it went to."""
    return {
        "random_sampling": {"value": round(sampling * 100, 6)},
        "spawn_upstream_span": True,
        "operation": f"{role} %REQ(:PATH)%",
        "upstream_operation": "attempt %UPSTREAM_CLUSTER%",
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": typed(
                "envoy.config.trace.v3.OpenTelemetryConfig",
                grpc_service={"envoy_grpc": {"cluster_name": COLLECTOR}},
                service_name=service_name,
            ),
        },
    }


def internal_addresses() -> Json:
    """Which downstreams are the mesh's own (see INTERNAL_RANGES)."""
    return {
        "unix_sockets": True,
        "cidr_ranges": [
            {"address_prefix": address, "prefix_len": length} for address, length in INTERNAL_RANGES
        ],
    }


def outside_headers_removed() -> list[Json]:
    """Early header mutation of the gateway: tracing headers from outside are dropped before
    the tracer reads them."""
    return [
        {
            "name": "envoy.http.early_header_mutation.header_mutation",
            "typed_config": typed(
                "envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
                mutations=[{"remove": header} for header in OUTSIDE_TRACE_HEADERS],
            ),
        }
    ]


def untraced() -> Json:
    """A route's tracing override for the mesh's own chatter (health checks, reflection)."""
    return {"overall_sampling": {"numerator": 0, "denominator": "HUNDRED"}}


def collector_cluster(tracing: Tracing) -> Json:
    """The cluster spans are exported through (OTLP/gRPC, plaintext: loopback or the user's
    collector)."""
    if isinstance(tracing.collector, Path):
        address = unix(tracing.collector)
        discovery = "STATIC"
    else:
        address = tcp(tracing.collector)
        discovery = "STRICT_DNS"
    cluster: Json = {
        "name": COLLECTOR,
        "type": discovery,
        "connect_timeout": "1s",
        "typed_extension_protocol_options": http2_options(),
        "load_assignment": {
            "cluster_name": COLLECTOR,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }
    if discovery == "STRICT_DNS":
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    return cluster


def runtime_layer(tracing: Tracing) -> Json:
    """Static runtime values of the tracer: a short flush interval, and few early flushes."""
    return {
        "name": "tracing",
        "static_layer": {
            "tracing.opentelemetry.flush_interval_ms": tracing.flush_interval_ms,
            "tracing.opentelemetry.min_flush_spans": MIN_FLUSH_SPANS,
        },
    }


def traced_bootstrap_parts(tracing: Tracing | None) -> tuple[list[Json], list[Json]]:
    """The clusters and runtime layers a bootstrap adds when its Envoy traces."""
    if tracing is None:
        return [], []
    return [collector_cluster(tracing)], [runtime_layer(tracing)]


EDGE = "edge"
"""The role of the gateway's listener in span names; sidecars' are `inbound` and `egress`."""


def manager_options(tracing: Tracing | None, service_name: str, sampling: float, role: str) -> Json:
    """What an HTTP connection manager adds when its Envoy traces: the tracer; at the `EDGE`
    (the gateway) the removal of tracing headers from outside, elsewhere which downstreams are
    the mesh's own."""
    if tracing is None:
        return {}
    options: Json = {"tracing": tracing_config(tracing, service_name, sampling, role)}
    if role == EDGE:
        options["early_header_mutation_extensions"] = outside_headers_removed()
    else:
        options["internal_address_config"] = internal_addresses()
    return options
