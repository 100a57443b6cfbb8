"""The sidecar of one pod: `inbound` (mTLS from mesh identities -> RBAC per caller and method
-> faults -> the app's Unix socket), `egress` (the app's only way out, a Unix socket routing by
gRPC service name to the upstreams it may call), `health` (only grpc.health.v1.Health/Check,
for probes and `shopmesh status`) and `metrics` (only /stats/prometheus)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from google.rpc import code_pb2

from shopmesh.envoy.builders import (
    HEALTH,
    HEALTH_CHECK_PATH,
    HTTP2_KEEPALIVE,
    Json,
    bootstrap,
    common_tls,
    http_connection_manager,
    listener,
    path_exact,
    single_route_listener,
    socket_cluster,
    tcp,
    typed,
    unix,
)
from shopmesh.envoy.faults import ABORT_GRPC_STATUS, ABORT_PERCENT, DELAY_MS, DELAY_PERCENT
from shopmesh.envoy.metrics import egress_methods, grpc_stats_filter, inbound_methods
from shopmesh.envoy.replies import Refusal, grpc_reply, http_status
from shopmesh.envoy.signin import caller_permission
from shopmesh.envoy.tracing import Tracing, manager_options, traced_bootstrap_parts
from shopmesh.envoy.upstream import (
    STREAM_IDLE_TIMEOUT,
    deadline_replies,
    upstream_cluster,
    upstream_routes,
)
from shopmesh.layout import Layout, Pod
from shopmesh.pki import IdentityFiles
from shopmesh.topology import HEALTH_SERVICE, Topology

LOCAL_APP = "local_app"
INBOUND = "inbound"
EGRESS = "egress"
REQUEST_HEADERS_TIMEOUT = "10s"
"""How long the inbound waits for a request's headers once they begin (a caller's Envoy sends
them at once): a connection cannot hold a stream open by trickling them."""


class RenderError(ValueError):
    """A config cannot be rendered for what was asked (e.g. a pod of an unknown service)."""


def service_paths(topology: Topology, service: str, methods: tuple[str, ...]) -> list[str]:
    """gRPC paths (`/pkg.Service/Method`) of `methods` of `service`."""
    grpc_service = topology.services[service].grpc_service
    return [f"/{grpc_service}/{method}" for method in methods]


def exact_paths(paths: Iterable[str]) -> Json:
    """An RBAC permission for a request whose whole `:path` is one of `paths`. Not `url_path`:
    it drops the query string and fragment, so `GetPayment?x=/Charge` would match GetPayment.
    The path is normalized first (inbound_protections), so `..`, `.` and `//` cannot dress up one
    method as another."""
    return {
        "or_rules": {
            "rules": [{"header": {"name": ":path", "string_match": {"exact": p}}} for p in paths]
        }
    }


def rbac_filter(topology: Topology, service: str) -> Json:
    """Allow each caller exactly the methods the topology grants it (naming a signed-in caller
    only if it may pass one on: caller_permission); health checks from every
    mesh identity. Everything else is denied (refusal_replies: PERMISSION_DENIED with an
    ErrorInfo): server reflection too, which the gateway answers itself (shopmesh.reflection),
    so no caller needs the app's own (it is for calls straight to the app's socket)."""
    policies: Json = {}
    for caller, methods in topology.callers(service).items():
        methods_of = exact_paths(service_paths(topology, service, methods))
        policies[f"caller-{caller}"] = {
            "permissions": [caller_permission(topology, caller, methods_of)],
            "principals": [
                {"authenticated": {"principal_name": {"exact": topology.spiffe_id(caller)}}}
            ],
        }
    policies["mesh-health-checks"] = {
        "permissions": [exact_paths([HEALTH_CHECK_PATH])],
        "principals": [{"authenticated": {"principal_name": {"prefix": topology.spiffe_prefix}}}],
    }
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": typed(
            "envoy.extensions.filters.http.rbac.v3.RBAC",
            rules={"action": "ALLOW", "policies": policies},
        ),
    }


def refusal_replies() -> Json:
    """What the inbound refuses says why. RBAC's 403 is PERMISSION_DENIED; a request Envoy
    rejects before routing (an escaped slash or a fragment in the path: 400) is the caller's
    mistake, INVALID_ARGUMENT, not Envoy's default INTERNAL, which callers' outlier detection
    would count against this replica as a 5xx."""
    denied = Refusal(
        "CALLER_NOT_ALLOWED",
        code_pb2.PERMISSION_DENIED,
        403,
        "the mesh does not allow this caller to call this method",
    )
    malformed = Refusal(
        "MALFORMED_REQUEST",
        code_pb2.INVALID_ARGUMENT,
        400,
        "malformed request: the path must be a plain /package.Service/Method",
    )
    return {
        "mappers": [
            grpc_reply(refusal, http_status(refusal.http_status, INBOUND))
            for refusal in (denied, malformed)
        ]
    }


def fault_filter() -> Json:
    """Injected aborts and delays, off until `shopmesh fault` sets the runtime keys. Health
    checks are exempt so a fault exercises retries instead of ejecting the host."""
    return {
        "name": "envoy.filters.http.fault",
        "typed_config": typed(
            "envoy.extensions.filters.http.fault.v3.HTTPFault",
            abort={"grpc_status": 14, "percentage": {"numerator": 0, "denominator": "HUNDRED"}},
            delay={
                "fixed_delay": "0.001s",
                "percentage": {"numerator": 0, "denominator": "HUNDRED"},
            },
            headers=[
                {
                    "name": ":path",
                    "string_match": {"prefix": f"/{HEALTH_SERVICE}/"},
                    "invert_match": True,
                }
            ],
            abort_percent_runtime=ABORT_PERCENT,
            abort_grpc_status_runtime=ABORT_GRPC_STATUS,
            delay_percent_runtime=DELAY_PERCENT,
            delay_duration_runtime=DELAY_MS,
        ),
    }


def local_app_cluster(layout: Layout, pod: Pod, connect_timeout: timedelta) -> Json:
    return socket_cluster(LOCAL_APP, layout.app_socket(pod), connect_timeout, http2=True)


def stream_routes(topology: Topology, service: str) -> list[Json]:
    """Inbound routes of `service`'s methods without a route timeout (streams): like every
    inbound call, no timeout, and no idle timeout either (STREAM_IDLE_TIMEOUT)."""
    grpc_service = topology.services[service].grpc_service
    return [
        {
            "name": f"{service}.{method}",
            "match": path_exact(f"/{grpc_service}/{method}"),
            "route": {"cluster": LOCAL_APP, "timeout": "0s", "idle_timeout": STREAM_IDLE_TIMEOUT},
        }
        for method, policy in topology.policies[service].methods.items()
        if not policy.route_timeout
    ]


def sidecar_name(service: str) -> str:
    """The service name a sidecar's spans carry."""
    return f"{service}-sidecar"


def inbound_protections(topology: Topology, service: str) -> Json:
    """What the inbound's HTTP connection manager refuses or bounds before any filter runs."""
    return {
        # RBAC, routing and the app see one canonical path (`..`, `.` and `//` resolved); an
        # escaped slash or backslash (%2F, %5C) is refused (refusal_replies): no gRPC method
        # has one.
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "local_reply_config": refusal_replies(),
        "request_headers_timeout": REQUEST_HEADERS_TIMEOUT,
        # Dropped, not refused: REJECT_REQUEST on HTTP/2 resets the stream (INTERNAL with no
        # reason, and a reset the caller's Envoy retries and counts against this replica).
        # Either way no app behind reads `x_forwarded_client_cert` for the header Envoy sets.
        "common_http_protocol_options": {"headers_with_underscores_action": "DROP_HEADER"},
        "http2_protocol_options": {
            "connection_keepalive": HTTP2_KEEPALIVE,
            # A caller's Envoy never has more calls in flight to this service than its
            # circuit breaker allows; a connection asking for more is not one of them.
            "max_concurrent_streams": topology.policies[service].circuit_breaker.max_requests,
        },
    }


def inbound_listener(
    topology: Topology, layout: Layout, pod: Pod, tracing: Tracing | None = None
) -> Json:
    """No timeout here: the caller's sidecar owns the budget, and the app enforces the
    grpc-timeout it forwards (an Envoy timer here would reset streams mid-response: INTERNAL,
    not DEADLINE_EXCEEDED)."""
    files = IdentityFiles(layout.identity_dir(pod.service))
    routes = {
        "name": INBOUND,
        "virtual_hosts": [
            {
                "name": pod.service,
                "domains": ["*"],
                "routes": [
                    *stream_routes(topology, pod.service),
                    {"match": {"prefix": "/"}, "route": {"cluster": LOCAL_APP, "timeout": "0s"}},
                ],
            }
        ],
    }
    tls = typed(
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        require_client_certificate=True,
        common_tls_context=common_tls(files, [{"prefix": topology.spiffe_prefix}]),
    )
    manager = http_connection_manager(
        INBOUND,
        routes,
        # Calls RBAC refuses are not counted by grpc_stats but as http.inbound.rbac.denied;
        # injected faults are, as the service's own failures.
        [
            rbac_filter(topology, pod.service),
            grpc_stats_filter(inbound_methods(topology, pod.service)),
            fault_filter(),
        ],
        layout.access_log(pod.name),
        "HTTP2",
        # The app may read the caller's SPIFFE ID from x-forwarded-client-cert.
        forward_client_cert_details="SANITIZE_SET",
        set_current_client_cert_details={"uri": True},
        **inbound_protections(topology, pod.service),
        **manager_options(tracing, sidecar_name(pod.service), 0, INBOUND),
    )
    return listener(
        INBOUND,
        tcp(layout.inbound(pod)),
        {
            "filters": [manager],
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
        },
    )


def egress_listener(
    topology: Topology, layout: Layout, pod: Pod, tracing: Tracing | None = None
) -> Json:
    """The app's only way out: routes by gRPC service name to the upstreams it may call."""
    upstreams = topology.services[pod.service].calls
    routes = {
        "name": EGRESS,
        "virtual_hosts": [
            {
                "name": EGRESS,
                "domains": ["*"],
                "routes": [
                    route
                    for upstream in upstreams
                    for route in upstream_routes(topology, upstream, None)
                ],
            }
        ],
    }
    manager = http_connection_manager(
        EGRESS,
        routes,
        # A service the app may not call has no route: http.egress.no_route, not grpc_stats.
        [grpc_stats_filter(egress_methods(topology, pod.service))],
        layout.access_log(pod.name),
        "HTTP2",
        local_reply_config=deadline_replies(),
        **manager_options(tracing, sidecar_name(pod.service), 0, EGRESS),
    )
    return listener(EGRESS, unix(layout.egress_socket(pod)), {"filters": [manager]})


def health_listener(topology: Topology, layout: Layout, pod: Pod) -> Json:
    """Plaintext gRPC health of the app, for probes (kubelet, `shopmesh status`) only."""
    return single_route_listener(
        HEALTH,
        tcp(layout.health(pod)),
        HEALTH_CHECK_PATH,
        LOCAL_APP,
        topology.policies[pod.service].health_check.timeout,
        layout.access_log(pod.name),
    )


def render_sidecar(
    topology: Topology, layout: Layout, pod: Pod, tracing: Tracing | None = None
) -> Json:
    """The bootstrap of `pod`'s sidecar (tracing its calls when `tracing` is given)."""
    if pod.service not in topology.services:
        raise RenderError(f"pod {pod.name!r} belongs to unknown service {pod.service!r}")
    service = topology.services[pod.service]
    traced_clusters, runtime_layers = traced_bootstrap_parts(tracing)
    clusters = [
        local_app_cluster(layout, pod, topology.policies[pod.service].connect_timeout),
        *(upstream_cluster(topology, layout, upstream, pod.service) for upstream in service.calls),
        *traced_clusters,
    ]
    listeners = [
        inbound_listener(topology, layout, pod, tracing),
        egress_listener(topology, layout, pod, tracing),
        health_listener(topology, layout, pod),
    ]
    return bootstrap(pod.name, pod.service, layout, listeners, clusters, runtime_layers)
