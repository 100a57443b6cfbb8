"""How a caller's Envoy (a sidecar's egress, or the gateway) reaches an upstream service: its
routes with timeouts and retries, and its cluster with mTLS, bulkheads, retry budget, outlier
detection and active gRPC health checks, all from the topology's resilience policy."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from shopmesh.envoy.builders import (
    Json,
    common_tls,
    duration,
    http2_options,
    path_exact,
    tcp,
    typed,
)
from shopmesh.layout import Layout
from shopmesh.pki import IdentityFiles
from shopmesh.topology import RoutePolicy, Topology, UpstreamPolicy

STREAM_IDLE_TIMEOUT = "0s"
"""Idle timeout of stream routes (those without a route timeout, such as a notifications
watch, which may be quiet for hours): none, instead of Envoy's default of 5 minutes. A peer that
disappears is found by HTTP2_KEEPALIVE instead, on every network hop a stream crosses."""


def cluster_name(service: str) -> str:
    """The cluster through which callers reach `service`."""
    return f"svc_{service}"


def deadline_replies() -> Json:
    """Timeouts Envoy enforces answer DEADLINE_EXCEEDED, as the caller's own deadline would:
    a route timeout (UT) or an expired grpc-timeout (DT) is a spent budget, not a transient
    outage, so no caller upstream of this one retries it as UNAVAILABLE (Envoy's default
    mapping of 504)."""
    return {
        "mappers": [
            {
                "filter": {"response_flag_filter": {"flags": ["UT", "DT"]}},
                "headers_to_add": [
                    {
                        "header": {"key": "grpc-status", "value": "4"},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                ],
            }
        ]
    }


def route_action(cluster: str, policy: RoutePolicy) -> Json:
    """Forward to `cluster` with the policy's timeouts and retries. A client's grpc-timeout is
    honoured but capped at the route timeout; a zero route timeout means no limit (streams)."""
    retry = policy.retry
    retry_policy: Json = {
        "retry_on": ",".join(retry.retry_on),
        "num_retries": retry.num_retries,
        "retry_back_off": {
            "base_interval": duration(retry.backoff_base),
            "max_interval": duration(retry.backoff_max),
        },
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": typed(
                    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                ),
            }
        ],
        "host_selection_retry_max_attempts": retry.host_selection_max_attempts,
    }
    if policy.per_try_timeout:
        retry_policy["per_try_timeout"] = duration(policy.per_try_timeout)
    action: Json = {
        "cluster": cluster,
        "timeout": duration(policy.route_timeout),
        "retry_policy": retry_policy,
    }
    if policy.route_timeout:
        # With max_stream_duration on a route the router ignores `timeout` (Envoy's "new
        # timeouts"), so the route timeout is also the stream's limit when a client sends no
        # grpc-timeout; a grpc-timeout is honoured up to the same limit.
        action["max_stream_duration"] = {
            "max_stream_duration": duration(policy.route_timeout),
            "grpc_timeout_header_max": duration(policy.route_timeout),
        }
    else:
        # Without a route timeout (streams) Envoy leaves the client's deadline to the client
        # and the app: a stream that has sent its headers cannot get a local reply, so Envoy
        # would reset it and the client would see INTERNAL instead of DEADLINE_EXCEEDED.
        action["idle_timeout"] = STREAM_IDLE_TIMEOUT
    return action


Match = Callable[[str], Json]
"""The route match of one gRPC method path."""


def method_route(
    topology: Topology, service: str, method: str, policy: RoutePolicy, match: Match = path_exact
) -> Json:
    grpc_service = topology.services[service].grpc_service
    return {
        "name": f"{service}.{method}",
        "match": match(f"/{grpc_service}/{method}"),
        "route": route_action(cluster_name(service), policy),
    }


def upstream_routes(
    topology: Topology, service: str, methods: Sequence[str] | None, match: Match = path_exact
) -> list[Json]:
    """Routes to `service`: its per-method overrides first, then either every method (a prefix
    route on the gRPC service, as the egress routes by service name) or only `methods`, each
    matched by `match`."""
    policy = topology.policies[service]
    overridden = [m for m in policy.methods if methods is None or m in methods]
    routes = [method_route(topology, service, m, policy.methods[m], match) for m in overridden]
    if methods is None:
        grpc_service = topology.services[service].grpc_service
        routes.append(
            {
                "name": service,
                "match": {"prefix": f"/{grpc_service}/"},
                "route": route_action(cluster_name(service), policy.route),
            }
        )
    else:
        routes += [
            method_route(topology, service, m, policy.route, match)
            for m in methods
            if m not in policy.methods
        ]
    return routes


def upstream_cluster(topology: Topology, layout: Layout, service: str, identity: str) -> Json:
    """The cluster `identity` uses to reach `service`: mTLS with `identity`'s certificate,
    requiring `service`'s SPIFFE ID; bulkheads, retry budget, outlier detection and active
    gRPC health checks from the policy.

    The health checks travel over the same mTLS connection settings as the calls, so the
    callee's RBAC sees the caller's identity; it allows grpc.health.v1.Health/Check to every
    mesh identity.
    """
    policy: UpstreamPolicy = topology.policies[service]
    upstream = layout.upstream(service)
    files = IdentityFiles(layout.identity_dir(identity))
    name = cluster_name(service)
    breaker = policy.circuit_breaker
    outlier = policy.outlier_detection
    health = policy.health_check
    cluster: Json = {
        "name": name,
        "type": upstream.discovery,
        "connect_timeout": duration(policy.connect_timeout),
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": http2_options(keepalive=True),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": tcp(endpoint)}} for endpoint in upstream.endpoints
                    ]
                }
            ],
        },
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": typed(
                "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                common_tls_context=common_tls(files, [{"exact": topology.spiffe_id(service)}]),
            ),
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": breaker.max_connections,
                    "max_pending_requests": breaker.max_pending_requests,
                    "max_requests": breaker.max_requests,
                    "retry_budget": {
                        "budget_percent": {"value": policy.retry_budget.budget_percent},
                        "min_retry_concurrency": policy.retry_budget.min_retry_concurrency,
                    },
                    "track_remaining": True,
                }
            ]
        },
        "outlier_detection": {
            "consecutive_5xx": outlier.consecutive_5xx,
            "consecutive_gateway_failure": outlier.consecutive_gateway_failure,
            "enforcing_consecutive_gateway_failure": 100,
            "interval": duration(outlier.interval),
            "base_ejection_time": duration(outlier.base_ejection_time),
            "max_ejection_percent": outlier.max_ejection_percent,
            # A replica that answers health checks but fails calls stays out for the ejection
            # time; by default each passing health check would let it straight back in.
            "successful_active_health_check_uneject_host": False,
        },
        "health_checks": [
            {
                "timeout": duration(health.timeout),
                "interval": duration(health.interval),
                "no_traffic_interval": duration(health.no_traffic_interval),
                "unhealthy_threshold": health.unhealthy_threshold,
                "healthy_threshold": health.healthy_threshold,
                "grpc_health_check": {
                    "service_name": topology.services[service].grpc_service,
                    "authority": service,
                },
            }
        ],
        "common_lb_config": {
            "healthy_panic_threshold": {"value": policy.panic_threshold_percent},
            # Health-check and ejection verdicts steer traffic at once; Envoy's default 1 s
            # merge window (meant for big, noisy clusters) would add up to a second to every
            # removal and return of a replica, and make /clusters run ahead of the routing.
            "update_merge_window": "0s",
        },
    }
    if upstream.discovery == "STRICT_DNS":
        cluster["dns_lookup_family"] = "V4_ONLY"
    return cluster
