"""The edge gateway: plaintext HTTP/2 (gRPC) and HTTP/1.1 (JSON through gRPC-JSON
transcoding) in, rate limited, only the methods `gateway.exposes` lists routed, mTLS to the
sidecars as the `gateway` identity; and its own `health` listener (`GET /healthz`)."""

from __future__ import annotations

from shopmesh.envoy.builders import (
    HEALTH,
    HEALTH_CHECK_PATH,
    HTTP2_KEEPALIVE,
    Json,
    bootstrap,
    duration,
    http_connection_manager,
    listener,
    path_exact,
    tcp,
    typed,
)
from shopmesh.envoy.metrics import gateway_methods, grpc_stats_filter
from shopmesh.envoy.sidecar import REFLECTION_PREFIX
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
    deadline_replies,
    route_action,
    upstream_cluster,
    upstream_routes,
)
from shopmesh.layout import Layout
from shopmesh.topology import GATEWAY, Topology

INGRESS = "ingress"
GATEWAY_HEALTH_PATH = "/healthz"
# The gRPC code of each HTTP status Envoy answers by itself (a body the transcoder cannot
# parse, a method the gateway does not route, the rate limit, no healthy upstream, a timeout).
LOCAL_REPLY_CODES = {400: 3, 404: 12, 429: 8, 503: 14, 504: 4}


def gateway_routes(topology: Topology) -> Json:
    """One virtual host per exposed service, chosen by :authority (`grpcurl -authority users`):
    its public methods, plus reflection and health when the topology offers them, so grpcurl
    can `list` and `describe` each service without proto files. The default virtual host
    routes every public method (gRPC and JSON clients need no authority)."""
    exposes = topology.gateway.exposes
    virtual_hosts: list[Json] = []
    for service, methods in exposes.items():
        routes = upstream_routes(topology, service, methods)
        if topology.gateway.reflection:
            routes.append(
                {
                    "name": f"{service}.reflection",
                    "match": {"prefix": REFLECTION_PREFIX},
                    # A reflection session is a bidirectional stream: no timeout, no retries.
                    "route": {"cluster": cluster_name(service), "timeout": "0s"},
                    "tracing": untraced(),
                }
            )
        if topology.gateway.health:
            routes.append(
                {
                    "name": f"{service}.health",
                    "match": path_exact(HEALTH_CHECK_PATH),
                    "route": route_action(cluster_name(service), topology.policies[service].route),
                    "tracing": untraced(),
                }
            )
        virtual_hosts.append({"name": service, "domains": [service], "routes": routes})
    virtual_hosts.append(
        {
            "name": "public",
            "domains": ["*"],
            "routes": [
                route
                for service, methods in exposes.items()
                for route in upstream_routes(topology, service, methods)
            ],
        }
    )
    return {
        "name": INGRESS,
        "virtual_hosts": virtual_hosts,
        # Every answer names its trace, to look it up: `shopmesh trace <id>`.
        "response_headers_to_add": [
            {
                "header": {"key": TRACE_ID_HEADER, "value": "%TRACE_ID%"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    }


def local_rate_limit_filter(topology: Topology) -> Json:
    limit = topology.gateway.local_rate_limit
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": typed(
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            stat_prefix=INGRESS,
            token_bucket={
                "max_tokens": limit.max_tokens,
                "tokens_per_fill": limit.tokens_per_fill,
                "fill_interval": duration(limit.fill_interval),
            },
            filter_enabled={**always, "runtime_key": "ingress.rate_limit.enabled"},
            filter_enforced={**always, "runtime_key": "ingress.rate_limit.enforced"},
            rate_limited_as_resource_exhausted=True,
        ),
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


def gateway_replies() -> Json:
    """Envoy's own replies to a JSON (transcoded) request come as the JSON google.rpc.Status
    the transcoder renders the services' errors as (`{"code": 3, "message": "..."}`), not as
    plain text. The transcoder marks what it transcoded with x-envoy-original-method; gRPC
    clients keep Envoy's gRPC replies, with `deadline_replies`."""
    json_replies = [
        {
            "filter": {
                "and_filter": {
                    "filters": [
                        {
                            "header_filter": {
                                "header": {"name": "x-envoy-original-method", "present_match": True}
                            }
                        },
                        {
                            "status_code_filter": {
                                "comparison": {
                                    "op": "EQ",
                                    "value": {
                                        "default_value": status,
                                        "runtime_key": f"ingress.local_reply.{status}",
                                    },
                                }
                            }
                        },
                    ]
                }
            },
            "body_format_override": {
                "json_format": {"code": code, "message": "%LOCAL_REPLY_BODY%"}
            },
        }
        for status, code in LOCAL_REPLY_CODES.items()
    ]
    return {"mappers": [*json_replies, *deadline_replies()["mappers"]]}


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
    manager = http_connection_manager(
        INGRESS,
        gateway_routes(topology),
        # The transcoder first, so a JSON request refused by the rate limit is known as one
        # (gateway_replies) and answered in JSON, and grpc_stats counts JSON calls by their
        # gRPC status too. grpc_stats after the rate limit: what it refuses is counted as
        # http_local_rate_limit.rate_limited, and an unrouted method as http.ingress.no_route.
        [
            transcoder_filter(topology, layout),
            local_rate_limit_filter(topology),
            grpc_stats_filter(gateway_methods(topology)),
        ],
        layout.access_log(GATEWAY),
        "AUTO",
        # Virtual hosts match the authority without its port.
        strip_any_host_port=True,
        local_reply_config=gateway_replies(),
        http2_protocol_options={"connection_keepalive": HTTP2_KEEPALIVE},
        **manager_options(tracing, GATEWAY, sampling, EDGE),
    )
    ingress = listener(INGRESS, tcp(layout.gateway_listener()), {"filters": [manager]})
    traced_clusters, runtime_layers = traced_bootstrap_parts(tracing)
    clusters = [
        *(upstream_cluster(topology, layout, s, GATEWAY) for s in topology.gateway.exposes),
        *traced_clusters,
    ]
    listeners = [ingress, gateway_health_listener(layout)]
    return bootstrap(GATEWAY, GATEWAY, layout, listeners, clusters, runtime_layers)
