"""Small builders of Envoy config pieces, shared by the sidecar and the gateway: each returns
a plain dict in Envoy's v3 JSON form.

Names follow one style: listeners `inbound`, `egress`, `health`, `metrics` (sidecar),
`ingress`, `health`, `metrics` (gateway); clusters `local_app`, `admin`, `svc_<name>`; each
stat_prefix is its listener's name. Certificates are never inlined: every TLS context reads them
through file-based SDS.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from services.common.caller import CALLER_HEADER
from shopmesh.envoy.metrics import STATS_FLUSH_INTERVAL, stats_config
from shopmesh.layout import ADMIN_SOCKET_MODE, EdgeCertificate, Endpoint, Layout
from shopmesh.pki import CERTIFICATE_SECRET, EDGE_SECRET, VALIDATION_SECRET, IdentityFiles
from shopmesh.topology import HEALTH_SERVICE

Json = dict[str, Any]

ADMIN = "admin"
METRICS = "metrics"
HEALTH = "health"
HEALTH_CHECK_PATH = f"/{HEALTH_SERVICE}/Check"
PROMETHEUS_PATH = "/stats/prometheus"
MAX_CONNECTIONS = 1024
"""Downstream connections an Envoy accepts at once, over all its listeners, unless told."""
HTTP2_KEEPALIVE: dict[str, str] = {"interval": "30s", "timeout": "10s"}
"""HTTP/2 PINGs on every connection between Envoys and from clients: a peer that vanished
without closing is found within 40 s, which matters for streams that have no idle timeout."""


def tcp(endpoint: Endpoint) -> Json:
    """An Envoy address for a TCP endpoint."""
    return {"socket_address": {"address": endpoint.host, "port_value": endpoint.port}}


def unix(path: Path, mode: int | None = None) -> Json:
    """An Envoy address for a Unix domain socket (created with `mode` when Envoy listens)."""
    pipe: Json = {"path": str(path)}
    if mode is not None:
        pipe["mode"] = mode
    return {"pipe": pipe}


def duration(value: timedelta) -> str:
    """A protobuf Duration in JSON form, exact to the millisecond."""
    millis = value // timedelta(milliseconds=1)
    return f"{millis // 1000}.{millis % 1000:03d}s"


def typed(type_name: str, **fields: Any) -> Json:
    """A typed_config Any of `type_name` (without the type.googleapis.com/ prefix)."""
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def path_exact(path: str) -> Json:
    return {"path": path}


def sds(name: str, path: Path, watched: Path) -> Json:
    """An SDS secret read from a file, reloaded when an entry is moved into `watched`."""
    return {
        "name": name,
        "sds_config": {
            "path_config_source": {"path": str(path), "watched_directory": {"path": str(watched)}},
            "resource_api_version": "V3",
        },
    }


def common_tls(files: IdentityFiles, peer_sans: Sequence[Json]) -> Json:
    """Our certificate plus validation of the peer: it must chain to the mesh CA and carry one
    of `peer_sans` (URI SAN matchers)."""
    return {
        # Both ends are our Envoys: TLS 1.3 only. (Envoy's client side caps at 1.2 unless
        # told otherwise, so the maximum must be raised along with the minimum.)
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_3",
            "tls_maximum_protocol_version": "TLSv1_3",
        },
        "tls_certificate_sds_secret_configs": [
            sds(CERTIFICATE_SECRET, files.certificate_sds, files.directory)
        ],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": matcher} for matcher in peer_sans
                ]
            },
            "validation_context_sds_secret_config": sds(
                VALIDATION_SECRET, files.validation_sds, files.directory
            ),
        },
        "alpn_protocols": ["h2"],
    }


def edge_tls(certificate: EdgeCertificate) -> Json:
    """The transport socket of a public TLS listener: `certificate` (through file-based SDS,
    so a rotated certificate is served without a restart), no client certificate asked for,
    HTTP/2 (gRPC) or HTTP/1.1 (curl's JSON) chosen by ALPN."""
    context = {
        # Public clients: TLS 1.2 (curl and grpcurl builds that lack 1.3 still connect) and up.
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
        "tls_certificate_sds_secret_configs": [
            sds(EDGE_SECRET, certificate.sds, certificate.watched)
        ],
        "alpn_protocols": ["h2", "http/1.1"],
    }
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": typed(
            "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            common_tls_context=context,
        ),
    }


def access_log(path: str, listener: str) -> list[Json]:
    """One JSON line per request: enough to follow a call across sidecars by request id.
    Health checks (every second or two from every caller) are left out; their outcome shows in
    each caller's cluster stats and /clusters health flags."""
    fields = {
        "time": "%START_TIME%",
        "listener": listener,
        "request_id": "%REQ(X-REQUEST-ID)%",
        "path": "%REQ(:PATH)%",
        "authority": "%REQ(:AUTHORITY)%",
        "peer": "%DOWNSTREAM_PEER_URI_SAN%",
        # The signed-in shopper the call is made for, as the gateway verified it (null if none).
        "caller": f"%REQ({CALLER_HEADER})%",
        "user_agent": "%REQ(USER-AGENT)%",
        "upstream_peer": "%UPSTREAM_PEER_URI_SAN%",
        "http_status": "%RESPONSE_CODE%",
        "grpc_status": "%GRPC_STATUS_NUMBER%",
        "flags": "%RESPONSE_FLAGS%",
        "duration_ms": "%DURATION%",
        "upstream_cluster": "%UPSTREAM_CLUSTER%",
        "upstream_host": "%UPSTREAM_HOST%",
        "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
        "upstream_failure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
        "bytes_in": "%BYTES_RECEIVED%",
        "bytes_out": "%BYTES_SENT%",
        "trace_id": "%TRACE_ID%",
    }
    return [
        {
            "name": "envoy.access_loggers.file",
            "filter": {
                "header_filter": {
                    "header": {
                        "name": ":path",
                        "string_match": {"exact": HEALTH_CHECK_PATH},
                        "invert_match": True,
                    }
                }
            },
            "typed_config": typed(
                "envoy.extensions.access_loggers.file.v3.FileAccessLog",
                path=path,
                log_format={"json_format": fields},
            ),
        }
    ]


def http2_options(keepalive: bool = False) -> Json:
    """Upstream protocol options: gRPC needs HTTP/2 to the upstream. With `keepalive`
    (connections to other Envoys), HTTP/2 PINGs find a peer that vanished without closing."""
    options: Json = {"connection_keepalive": HTTP2_KEEPALIVE} if keepalive else {}
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            explicit_http_config={"http2_protocol_options": options},
        )
    }


def router() -> Json:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": typed("envoy.extensions.filters.http.router.v3.Router"),
    }


def http_connection_manager(
    name: str,
    routes: Json,
    filters: Sequence[Json],
    log_path: str | None,
    codec: str,
    **extra: Any,
) -> Json:
    """A network filter chain entry: an HTTP connection manager whose stat_prefix is `name`
    (no access log when `log_path` is None)."""
    manager = typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix=name,
        codec_type=codec,
        route_config=routes,
        http_filters=[*filters, router()],
        **extra,
    )
    if log_path is not None:
        manager["access_log"] = access_log(log_path, name)
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}


def listener(name: str, address: Json, filter_chain: Json) -> Json:
    return {"name": name, "address": address, "filter_chains": [filter_chain]}


def single_route_listener(
    name: str, address: Json, path: str, cluster: str, timeout: timedelta, log_path: str | None
) -> Json:
    """A plaintext listener that routes exactly one path to `cluster` and answers 404 to
    anything else: what probes and scrapers may reach, and nothing more."""
    routes = {
        "name": name,
        "virtual_hosts": [
            {
                "name": name,
                "domains": ["*"],
                "routes": [
                    {
                        "match": path_exact(path),
                        "route": {"cluster": cluster, "timeout": duration(timeout)},
                    }
                ],
            }
        ],
    }
    return listener(
        name,
        address,
        {"filters": [http_connection_manager(name, routes, [], log_path, "AUTO")]},
    )


def metrics_listener(layout: Layout, envoy: str) -> Json:
    """Loopback (locally) TCP listener for Prometheus: `/stats/prometheus` of this Envoy's
    admin, which itself listens only on a Unix socket in a private directory (a scraper cannot
    reach a Unix socket, and must not reach the rest of admin)."""
    return single_route_listener(
        METRICS, tcp(layout.metrics(envoy)), PROMETHEUS_PATH, ADMIN, timedelta(seconds=5), None
    )


def socket_cluster(name: str, path: Path, connect_timeout: timedelta, http2: bool = False) -> Json:
    """A cluster of one process beside this Envoy, listening on the Unix socket `path`
    (speaking HTTP/2, for gRPC, with `http2`)."""
    cluster: Json = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": duration(connect_timeout),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": unix(path)}}]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = http2_options()
    return cluster


def admin_cluster(layout: Layout, envoy: str) -> Json:
    """This Envoy's own admin endpoint, as a cluster the metrics listener routes to."""
    return socket_cluster(ADMIN, layout.admin_socket(envoy), timedelta(seconds=1))


def bootstrap(
    node_id: str,
    cluster: str,
    layout: Layout,
    listeners: Sequence[Json],
    clusters: Sequence[Json],
    runtime_layers: Sequence[Json] = (),
    max_connections: int = MAX_CONNECTIONS,
) -> Json:
    """A complete static bootstrap for the Envoy `node_id`: admin on its Unix socket, a
    metrics listener, the latency histograms' buckets, `runtime_layers` of static runtime
    values, the admin runtime layer through which /runtime_modify changes runtime keys
    (faults) of a running Envoy, and at most `max_connections` downstream connections."""
    return {
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": typed(
                        "envoy.extensions.resource_monitors.downstream_connections.v3."
                        "DownstreamConnectionsConfig",
                        max_active_downstream_connections=max_connections,
                    ),
                }
            ]
        },
        "node": {"id": node_id, "cluster": cluster},
        "admin": {"address": unix(layout.admin_socket(node_id), ADMIN_SOCKET_MODE)},
        "layered_runtime": {"layers": [*runtime_layers, {"name": "admin", "admin_layer": {}}]},
        "stats_config": stats_config(),
        "stats_flush_interval": STATS_FLUSH_INTERVAL,
        "static_resources": {
            "listeners": [*listeners, metrics_listener(layout, node_id)],
            "clusters": [*clusters, admin_cluster(layout, node_id)],
        },
    }
