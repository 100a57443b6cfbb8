"""The edge gateway: HTTP/2 (gRPC) and HTTP/1.1 (JSON through gRPC-JSON transcoding; gRPC-Web
and the storefront's page, shopmesh.envoy.browser) in,
plaintext or, when the layout names an edge certificate, TLS (ALPN picks the protocol); rate
limited, only the methods `gateway.exposes` lists routed, mTLS to the sidecars as the
`gateway` identity, server reflection to the reflection service beside it (a Unix socket);
and its own `health` listener (`GET /healthz`)."""

from __future__ import annotations

from datetime import timedelta

from shopmesh.envoy.browser import (
    MAX_STOREFRONT_FILE_BYTES,
    cors_filters,
    cors_policy,
    grpc_web_filter,
    storefront_routes,
)
from shopmesh.envoy.builders import (
    HEALTH,
    HEALTH_CHECK_PATH,
    HTTP2_KEEPALIVE,
    Json,
    bootstrap,
    edge_tls,
    http_connection_manager,
    listener,
    socket_cluster,
    tcp,
    typed,
)
from shopmesh.envoy.edge import (
    ADAPTIVE_CONCURRENCY,
    INGRESS,
    LUA,
    adaptive_concurrency_filter,
    edge_check_filter,
    edge_manager_options,
    grpc_call_match,
    per_route_filters,
    public_call_match,
    rate_limit_filters,
    refusal_replies,
    size_limit_filter,
)
from shopmesh.envoy.metrics import gateway_methods, grpc_stats_filter
from shopmesh.envoy.sidecar import service_paths
from shopmesh.envoy.signin import caller_removal_filter, jwt_filter
from shopmesh.envoy.tracing import (
    EDGE,
    TRACE_ID_HEADER,
    Tracing,
    manager_options,
    traced_bootstrap_parts,
    untraced,
)
from shopmesh.envoy.upstream import (
    cluster_name,
    route_action,
    upstream_cluster,
    upstream_routes,
)
from shopmesh.layout import Layout
from shopmesh.topology import GATEWAY, REFLECTION_PATHS, Topology

GATEWAY_HEALTH_PATH = "/healthz"
REFLECTION = "reflection"
"""The cluster of the reflection service beside the gateway (its Unix socket)."""
REFLECTION_CONNECT_TIMEOUT = timedelta(seconds=1)


def public_paths(topology: Topology) -> list[str]:
    """The gRPC path of every exposed method. Each takes a single request message (a
    server-streaming watch included): the edge check refuses a call that carries any other
    number of messages."""
    return [
        path
        for service, methods in topology.gateway.exposes.items()
        for path in service_paths(topology, service, methods)
    ]


def reflection_routes(topology: Topology) -> list[Json]:
    """Server reflection (v1alpha and v1) to the reflection service beside the gateway, which
    answers for the whole exposed API (shopmesh.reflection), when the topology offers it."""
    if not topology.gateway.reflection:
        return []
    return [
        {
            "name": path.split("/")[1],
            "match": grpc_call_match(path),
            # A reflection session is a bidirectional stream: no timeout, no retries.
            "route": {"cluster": REFLECTION, "timeout": "0s"},
            "tracing": untraced(),
        }
        for path in REFLECTION_PATHS
    ]


def gateway_routes(topology: Topology, layout: Layout) -> Json:
    """The default virtual host routes every public method (gRPC, gRPC-Web and JSON clients
    need no authority) and server reflection, so grpcurl can `list`, `describe` and call them
    without proto files; it also serves the storefront's files (browser.storefront_routes).
    One virtual host per exposed service, chosen by :authority (`grpcurl -authority users`),
    routes its public methods, reflection (the same: every reflection stream reaches the
    reflection service) and its health check when the topology offers it. Every route matches
    a POST to exactly its path: of gRPC or gRPC-Web for a public method (public_call_match), of
    gRPC for reflection and health (grpc_call_match)."""
    exposes = topology.gateway.exposes
    one_message = {*public_paths(topology), HEALTH_CHECK_PATH}
    virtual_hosts: list[Json] = []
    for service, methods in exposes.items():
        routes = upstream_routes(topology, service, methods, public_call_match)
        routes += reflection_routes(topology)
        if topology.gateway.health:
            routes.append(
                {
                    "name": f"{service}.health",
                    "match": grpc_call_match(HEALTH_CHECK_PATH),
                    "route": route_action(cluster_name(service), topology.policies[service].route),
                    "tracing": untraced(),
                }
            )
        virtual_hosts.append(
            {
                "name": service,
                "domains": [service],
                "routes": per_route_filters(routes, topology, one_message),
            }
        )
    public = [
        route
        for service, methods in exposes.items()
        for route in upstream_routes(topology, service, methods, public_call_match)
    ]
    public += reflection_routes(topology)
    virtual_hosts.append(
        {
            "name": "public",
            "domains": ["*"],
            "routes": [
                *per_route_filters(public, topology, one_message),
                *storefront_routes(topology, layout.storefront(), [LUA, ADAPTIVE_CONCURRENCY]),
            ],
            "typed_per_filter_config": cors_policy(topology),
        }
    )
    return {
        "name": INGRESS,
        "virtual_hosts": virtual_hosts,
        "max_direct_response_body_size_bytes": MAX_STOREFRONT_FILE_BYTES,
        # gRPC requires `te: trailers`, and the Python server resets a call without it: a reset
        # a client that left it out would have counted against the replica. Every route is gRPC.
        "request_headers_to_add": [
            {
                "header": {"key": "te", "value": "trailers"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
        # Every answer names its trace, to look it up: `shopmesh trace <id>`.
        "response_headers_to_add": [
            {
                "header": {"key": TRACE_ID_HEADER, "value": "%TRACE_ID%"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    }


def transcoder_filter(topology: Topology, layout: Layout) -> Json:
    """JSON over HTTP/1.1 for curl: POST /<pkg.Service>/<Method> with a JSON body."""
    return {
        "name": "envoy.filters.http.grpc_json_transcoder",
        "typed_config": typed(
            "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
            proto_descriptor=str(layout.descriptor_set()),
            services=[topology.services[s].grpc_service for s in topology.gateway.exposes],
            auto_mapping=True,
            convert_grpc_status=True,
            print_options={"always_print_primitive_fields": True},
        ),
    }


def gateway_health_listener(layout: Layout) -> Json:
    """HTTP readiness of the gateway itself for probes: 200 on /healthz unless draining."""
    routes = {
        "name": HEALTH,
        "virtual_hosts": [
            {
                "name": HEALTH,
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 404}}],
            }
        ],
    }
    health_check = {
        "name": "envoy.filters.http.health_check",
        "typed_config": typed(
            "envoy.extensions.filters.http.health_check.v3.HealthCheck",
            pass_through_mode=False,
            headers=[{"name": ":path", "string_match": {"exact": GATEWAY_HEALTH_PATH}}],
        ),
    }
    manager = http_connection_manager(
        HEALTH, routes, [health_check], layout.access_log(GATEWAY), "AUTO"
    )
    return listener(HEALTH, tcp(layout.gateway_health()), {"filters": [manager]})


def render_gateway(topology: Topology, layout: Layout, tracing: Tracing | None = None) -> Json:
    """The bootstrap of the edge gateway (tracing `tracing.sampling` of the calls from outside
    when `tracing` is given)."""
    sampling = 0.0 if tracing is None else tracing.sampling
    limits = topology.gateway.limits
    manager = http_connection_manager(
        INGRESS,
        gateway_routes(topology, layout),
        # First gRPC-Web becomes gRPC (browser.py), and CORS answers preflights when on.
        # Then a caller named from outside is removed (only a verified token names one).
        # Then the cheapest refusals: the rate limits before anything reads a body, the access
        # token where the route needs one, then the body's size, its content type and gRPC
        # framing (JSON is checked for its content type only, before the transcoder turns it
        # into well-framed gRPC), then adaptive concurrency, which so also governs JSON calls.
        # grpc_stats last: what the filters before it refuse is counted by them
        # (http_local_rate_limit.rate_limited, jwt_authn.denied,
        # adaptive_concurrency...rq_blocked), and an unrouted method as http.ingress.no_route.
        [
            grpc_web_filter(),
            *cors_filters(topology),
            caller_removal_filter(),
            *rate_limit_filters(topology, INGRESS),
            jwt_filter(topology, layout),
            size_limit_filter(topology),
            edge_check_filter(topology),
            transcoder_filter(topology, layout),
            adaptive_concurrency_filter(topology),
            grpc_stats_filter(gateway_methods(topology)),
        ],
        layout.access_log(GATEWAY),
        "AUTO",
        # Virtual hosts match the authority without its port.
        strip_any_host_port=True,
        local_reply_config={"mappers": refusal_replies(topology)},
        http2_protocol_options={
            "connection_keepalive": HTTP2_KEEPALIVE,
            "max_concurrent_streams": limits.max_concurrent_streams,
        },
        **edge_manager_options(topology),
        **manager_options(tracing, GATEWAY, sampling, EDGE),
    )
    chain: Json = {"filters": [manager]}
    certificate = layout.edge_certificate()
    if certificate is not None:
        chain["transport_socket"] = edge_tls(certificate)
    ingress = listener(INGRESS, tcp(layout.gateway_listener()), chain)
    traced_clusters, runtime_layers = traced_bootstrap_parts(tracing)
    clusters = [
        *(upstream_cluster(topology, layout, s, GATEWAY) for s in topology.gateway.exposes),
        *traced_clusters,
    ]
    if topology.gateway.reflection:
        clusters.append(
            socket_cluster(REFLECTION, layout.reflection_socket(), REFLECTION_CONNECT_TIMEOUT, True)
        )
    listeners = [ingress, gateway_health_listener(layout)]
    return bootstrap(
        GATEWAY, GATEWAY, layout, listeners, clusters, runtime_layers, limits.max_connections
    )
