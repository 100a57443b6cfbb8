"""The one renderer: topology + addressing -> Envoy bootstrap configs (sidecars and gateway).

Each config is built from small builder functions returning plain dicts, dumped as YAML. The
same builders serve both addressing modes; only an `Addressing` object differs:

- `LocalAddressing`: one pod per replica (`inventory-0`, `inventory-1`, ...) on this machine.
  The app listens on `<var>/run/<pod>/app.sock`, reaches its upstreams through its sidecar's
  `<var>/run/<pod>/egress.sock`; the sidecar's mTLS inbound, admin and health listeners are on
  loopback ports; upstream clusters are STATIC lists of the replicas' inbound ports.
- `KubernetesAddressing`: one config per service (shared by its replicas). Inbound on
  0.0.0.0:15443, health on 0.0.0.0:15021, admin on 127.0.0.1:15000, sockets in the shared
  emptyDir; upstream clusters are STRICT_DNS on the headless Service
  `<svc>.<ns>.svc.<cluster domain>:15443`, so every ready pod is an endpoint.

Names follow one style: listeners `inbound`, `egress`, `health` (sidecar), `ingress`, `health`
(gateway); clusters `local_app`, `svc_<name>`; each stat_prefix is its listener's name.
Certificates are never inlined: every TLS context reads them through file-based SDS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import yaml

from shopmesh.pki import CERTIFICATE_SECRET, VALIDATION_SECRET, IdentityFiles
from shopmesh.topology import (
    GATEWAY,
    HEALTH_SERVICE,
    REFLECTION_SERVICE,
    RoutePolicy,
    Topology,
    UpstreamPolicy,
)

Json = dict[str, Any]

LOCAL_APP = "local_app"
INBOUND = "inbound"
EGRESS = "egress"
HEALTH = "health"
INGRESS = "ingress"
HEALTH_CHECK_PATH = f"/{HEALTH_SERVICE}/Check"
REFLECTION_PREFIX = f"/{REFLECTION_SERVICE}/"
GATEWAY_HEALTH_PATH = "/healthz"
STREAM_IDLE_TIMEOUT = "0s"
"""Idle timeout of stream routes (those without a route timeout, such as a notifications
watch, which may be quiet for hours): none, instead of Envoy's default of 5 minutes. A peer that
disappears is found by HTTP2_KEEPALIVE instead, on every network hop a stream crosses."""
HTTP2_KEEPALIVE: dict[str, str] = {"interval": "30s", "timeout": "10s"}


@dataclass(frozen=True)
class FaultRuntimeKeys:
    """Runtime keys of the inbound fault filter; `shopmesh fault` sets them through the admin
    endpoint /runtime_modify, so faults switch on and off without a restart."""

    abort_percent: str = "fault.inbound.abort_percent"
    abort_grpc_status: str = "fault.inbound.abort_grpc_status"
    delay_percent: str = "fault.inbound.delay_percent"
    delay_ms: str = "fault.inbound.delay_ms"


FAULT_RUNTIME = FaultRuntimeKeys()


class RenderError(ValueError):
    """A config cannot be rendered: the addressing lacks a value it needs."""


def cluster_name(service: str) -> str:
    """The cluster through which callers reach `service`."""
    return f"svc_{service}"


@dataclass(frozen=True)
class Pod:
    """What one sidecar config is rendered for: a replica locally, a Deployment on Kubernetes."""

    service: str
    name: str


@dataclass(frozen=True)
class Upstream:
    """How a cluster finds its endpoints: Envoy's discovery type and the addresses."""

    discovery: str
    addresses: tuple[Json, ...]


class Addressing(Protocol):
    """Where everything listens and where files live; the only thing that differs between the
    local layout and Kubernetes."""

    def pods(self, topology: Topology) -> list[Pod]: ...
    def app(self, pod: Pod) -> Json: ...
    def egress(self, pod: Pod) -> Json: ...
    def inbound(self, pod: Pod) -> Json: ...
    def health(self, pod: Pod) -> Json: ...
    def admin(self, pod: Pod) -> Json: ...
    def upstream(self, topology: Topology, service: str) -> Upstream: ...
    def identity(self, identity: str) -> IdentityFiles: ...
    def access_log(self, name: str) -> str: ...
    def gateway_listener(self) -> Json: ...
    def gateway_health(self) -> Json: ...
    def gateway_admin(self) -> Json: ...
    def descriptor_set(self) -> Path: ...


def tcp(host: str, port: int) -> Json:
    """An Envoy address for host:port."""
    return {"socket_address": {"address": host, "port_value": port}}


def unix(path: Path) -> Json:
    """An Envoy address for a Unix domain socket."""
    return {"pipe": {"path": str(path)}}


@dataclass(frozen=True)
class PodPorts:
    """The TCP ports of one local sidecar (0 lets the OS choose; read them from admin)."""

    inbound: int
    admin: int
    health: int


@dataclass(frozen=True)
class GatewayPorts:
    """The TCP ports of the local gateway."""

    listener: int
    admin: int
    health: int


def local_pods(topology: Topology) -> list[Pod]:
    """One pod per replica, named `<service>-<index>`."""
    return [
        Pod(service.name, f"{service.name}-{index}")
        for service in topology.services.values()
        for index in range(service.replicas)
    ]


@dataclass(frozen=True)
class LocalAddressing:
    """Everything on one machine under `var_dir`; TCP only on `host` (loopback)."""

    var_dir: Path
    certs_dir: Path
    descriptor: Path
    host: str
    ports: Mapping[str, PodPorts]
    """Pod name -> its ports; every pod of the topology needs an entry."""
    gateway: GatewayPorts

    @classmethod
    def sequential(
        cls,
        topology: Topology,
        var_dir: Path,
        certs_dir: Path,
        descriptor: Path,
        gateway: GatewayPorts,
        first_port: int,
        host: str = "127.0.0.1",
    ) -> LocalAddressing:
        """Give every pod three consecutive ports from `first_port` on, in topology order."""
        ports = {
            pod.name: PodPorts(
                inbound=first_port + 3 * index,
                admin=first_port + 3 * index + 1,
                health=first_port + 3 * index + 2,
            )
            for index, pod in enumerate(local_pods(topology))
        }
        return cls(
            var_dir.resolve(), certs_dir.resolve(), descriptor.resolve(), host, ports, gateway
        )

    def _ports(self, pod: Pod) -> PodPorts:
        try:
            return self.ports[pod.name]
        except KeyError:
            raise RenderError(f"no ports for pod {pod.name!r} in the local addressing") from None

    def socket_dir(self, pod: Pod) -> Path:
        """The directory holding the pod's app and egress sockets."""
        return self.var_dir / "run" / pod.name

    def log_dir(self) -> Path:
        """Every process's logs, in one folder."""
        return self.var_dir / "log"

    def make_directories(self, topology: Topology) -> None:
        """Create the socket and log directories the rendered configs refer to (Envoy opens
        access logs at start and refuses a config whose log directory is missing)."""
        self.log_dir().mkdir(parents=True, exist_ok=True)
        for pod in local_pods(topology):
            self.socket_dir(pod).mkdir(parents=True, exist_ok=True)

    def pods(self, topology: Topology) -> list[Pod]:
        return local_pods(topology)

    def app(self, pod: Pod) -> Json:
        return unix(self.socket_dir(pod) / "app.sock")

    def egress(self, pod: Pod) -> Json:
        return unix(self.socket_dir(pod) / "egress.sock")

    def inbound(self, pod: Pod) -> Json:
        return tcp(self.host, self._ports(pod).inbound)

    def health(self, pod: Pod) -> Json:
        return tcp(self.host, self._ports(pod).health)

    def admin(self, pod: Pod) -> Json:
        return tcp(self.host, self._ports(pod).admin)

    def upstream(self, topology: Topology, service: str) -> Upstream:
        replicas = [pod for pod in local_pods(topology) if pod.service == service]
        return Upstream("STATIC", tuple(self.inbound(pod) for pod in replicas))

    def identity(self, identity: str) -> IdentityFiles:
        return IdentityFiles(self.certs_dir / identity)

    def access_log(self, name: str) -> str:
        return str(self.log_dir() / f"{name}.access.log")

    def gateway_listener(self) -> Json:
        return tcp(self.host, self.gateway.listener)

    def gateway_health(self) -> Json:
        return tcp(self.host, self.gateway.health)

    def gateway_admin(self) -> Json:
        return tcp(self.host, self.gateway.admin)

    def descriptor_set(self) -> Path:
        return self.descriptor


@dataclass(frozen=True)
class KubernetesAddressing:
    """The in-cluster layout; the manifests mount volumes at these paths."""

    namespace: str
    cluster_domain: str
    socket_dir: Path
    """The emptyDir shared by the app and sidecar containers."""
    tls_dir: Path
    """The mounted Secret with the identity's certificate, key, trust bundle and SDS files."""
    descriptor: Path
    inbound_port: int
    health_port: int
    admin_port: int
    gateway_port: int

    @classmethod
    def standard(cls, topology: Topology) -> KubernetesAddressing:
        """The conventional ports and mount paths the Kubernetes manifests use."""
        return cls(
            namespace=topology.namespace,
            cluster_domain="cluster.local",
            socket_dir=Path("/var/run/shopmesh"),
            tls_dir=Path("/etc/shopmesh/tls"),
            descriptor=Path("/etc/shopmesh/descriptors/shop.pb"),
            inbound_port=15443,
            health_port=15021,
            admin_port=15000,
            gateway_port=8080,
        )

    def pods(self, topology: Topology) -> list[Pod]:
        return [Pod(name, name) for name in topology.services]

    def app(self, pod: Pod) -> Json:
        return unix(self.socket_dir / "app.sock")

    def egress(self, pod: Pod) -> Json:
        return unix(self.socket_dir / "egress.sock")

    def inbound(self, pod: Pod) -> Json:
        return tcp("0.0.0.0", self.inbound_port)

    def health(self, pod: Pod) -> Json:
        return tcp("0.0.0.0", self.health_port)

    def admin(self, pod: Pod) -> Json:
        return tcp("127.0.0.1", self.admin_port)

    def upstream(self, topology: Topology, service: str) -> Upstream:
        host = f"{service}.{self.namespace}.svc.{self.cluster_domain}"
        return Upstream("STRICT_DNS", (tcp(host, self.inbound_port),))

    def identity(self, identity: str) -> IdentityFiles:
        return IdentityFiles(self.tls_dir)

    def access_log(self, name: str) -> str:
        return "/dev/stdout"

    def gateway_listener(self) -> Json:
        return tcp("0.0.0.0", self.gateway_port)

    def gateway_health(self) -> Json:
        return tcp("0.0.0.0", self.health_port)

    def gateway_admin(self) -> Json:
        return tcp("127.0.0.1", self.admin_port)

    def descriptor_set(self) -> Path:
        return self.descriptor


# --- small builders -------------------------------------------------------------------------


def duration(value: timedelta) -> str:
    """A protobuf Duration in JSON form, exact to the millisecond."""
    millis = value // timedelta(milliseconds=1)
    return f"{millis // 1000}.{millis % 1000:03d}s"


def typed(type_name: str, **fields: Any) -> Json:
    """A typed_config Any of `type_name` (without the type.googleapis.com/ prefix)."""
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


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


# The gRPC code of each HTTP status Envoy answers by itself (a body the transcoder cannot
# parse, a method the gateway does not route, the rate limit, no healthy upstream, a timeout).
LOCAL_REPLY_CODES = {400: 3, 404: 12, 429: 8, 503: 14, 504: 4}


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


def http_connection_manager(
    name: str,
    routes: Json,
    filters: Sequence[Json],
    log_path: str,
    codec: str,
    **extra: Any,
) -> Json:
    """A network filter chain entry: an HTTP connection manager whose stat_prefix is `name`."""
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": typed(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            stat_prefix=name,
            codec_type=codec,
            route_config=routes,
            http_filters=[*filters, router()],
            access_log=access_log(log_path, name),
            **extra,
        ),
    }


def listener(name: str, address: Json, filter_chain: Json) -> Json:
    return {"name": name, "address": address, "filter_chains": [filter_chain]}


def path_exact(path: str) -> Json:
    return {"path": path}


def service_methods(topology: Topology, service: str, methods: Sequence[str]) -> list[str]:
    """gRPC paths (`/pkg.Service/Method`) of `methods` of `service`."""
    grpc_service = topology.services[service].grpc_service
    return [f"/{grpc_service}/{method}" for method in methods]


# --- routes and clusters to upstream services -----------------------------------------------


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
        action["idle_timeout"] = STREAM_IDLE_TIMEOUT
    # Without a route timeout (streams) Envoy leaves the client's deadline to the client and
    # the app: a stream that has sent its headers cannot get a local reply, so Envoy would
    # reset it and the client would see INTERNAL instead of DEADLINE_EXCEEDED.
    return action


def upstream_routes(topology: Topology, service: str, methods: Sequence[str] | None) -> list[Json]:
    """Routes to `service`: its per-method overrides first, then either every method (a prefix
    route on the gRPC service, as the egress routes by service name) or only `methods`."""
    policy = topology.policies[service]
    cluster = cluster_name(service)
    grpc_service = topology.services[service].grpc_service
    routes: list[Json] = []
    overridden = [m for m in policy.methods if methods is None or m in methods]
    for method in overridden:
        routes.append(
            {
                "name": f"{service}.{method}",
                "match": path_exact(f"/{grpc_service}/{method}"),
                "route": route_action(cluster, policy.methods[method]),
            }
        )
    if methods is None:
        routes.append(
            {
                "name": service,
                "match": {"prefix": f"/{grpc_service}/"},
                "route": route_action(cluster, policy.route),
            }
        )
    else:
        for method in methods:
            if method not in policy.methods:
                routes.append(
                    {
                        "name": f"{service}.{method}",
                        "match": path_exact(f"/{grpc_service}/{method}"),
                        "route": route_action(cluster, policy.route),
                    }
                )
    return routes


def upstream_cluster(
    topology: Topology, addressing: Addressing, service: str, identity: str
) -> Json:
    """The cluster `identity` uses to reach `service`: mTLS with `identity`'s certificate,
    requiring `service`'s SPIFFE ID; bulkheads, retry budget, outlier detection and active
    gRPC health checks from the policy.

    The health checks travel over the same mTLS connection settings as the calls, so the
    callee's RBAC sees the caller's identity; it allows grpc.health.v1.Health/Check to every
    mesh identity.
    """
    policy: UpstreamPolicy = topology.policies[service]
    upstream = addressing.upstream(topology, service)
    files = addressing.identity(identity)
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
                        {"endpoint": {"address": address}} for address in upstream.addresses
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


# --- bootstrap ------------------------------------------------------------------------------


def bootstrap(node: Pod, admin: Json, listeners: Sequence[Json], clusters: Sequence[Json]) -> Json:
    """A complete static bootstrap. The admin runtime layer lets /runtime_modify change runtime
    keys (faults) of a running Envoy."""
    return {
        "node": {"id": node.name, "cluster": node.service},
        "admin": {"address": admin},
        "layered_runtime": {"layers": [{"name": "admin", "admin_layer": {}}]},
        "static_resources": {"listeners": list(listeners), "clusters": list(clusters)},
    }


# --- sidecar --------------------------------------------------------------------------------


def rbac_filter(topology: Topology, service: str) -> Json:
    """Allow each caller exactly the methods the topology grants it; health checks from every
    mesh identity; server reflection from the gateway when it offers reflection. Everything
    else is denied (403, which gRPC clients see as PERMISSION_DENIED)."""
    policies: Json = {}
    for caller, methods in topology.callers(service).items():
        paths = service_methods(topology, service, methods)
        policies[f"caller-{caller}"] = {
            "permissions": [
                {"or_rules": {"rules": [{"url_path": {"path": {"exact": p}}} for p in paths]}}
            ],
            "principals": [
                {"authenticated": {"principal_name": {"exact": topology.spiffe_id(caller)}}}
            ],
        }
    policies["mesh-health-checks"] = {
        "permissions": [{"url_path": {"path": {"exact": HEALTH_CHECK_PATH}}}],
        "principals": [{"authenticated": {"principal_name": {"prefix": topology.spiffe_prefix}}}],
    }
    if topology.gateway.reflection:
        policies["gateway-reflection"] = {
            "permissions": [{"url_path": {"path": {"prefix": REFLECTION_PREFIX}}}],
            "principals": [
                {"authenticated": {"principal_name": {"exact": topology.spiffe_id(GATEWAY)}}}
            ],
        }
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": typed(
            "envoy.extensions.filters.http.rbac.v3.RBAC",
            rules={"action": "ALLOW", "policies": policies},
        ),
    }


def fault_filter() -> Json:
    """Injected aborts and delays, off until `shopmesh fault` sets the runtime keys. Health
    checks are exempt so a fault exercises retries instead of ejecting the host, and so is
    reflection, so grpcurl keeps working during a fault demo."""
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
                {"name": ":path", "string_match": {"prefix": prefix}, "invert_match": True}
                for prefix in (f"/{HEALTH_SERVICE}/", REFLECTION_PREFIX)
            ],
            abort_percent_runtime=FAULT_RUNTIME.abort_percent,
            abort_grpc_status_runtime=FAULT_RUNTIME.abort_grpc_status,
            delay_percent_runtime=FAULT_RUNTIME.delay_percent,
            delay_duration_runtime=FAULT_RUNTIME.delay_ms,
        ),
    }


def local_app_cluster(addressing: Addressing, pod: Pod, connect_timeout: timedelta) -> Json:
    return {
        "name": LOCAL_APP,
        "type": "STATIC",
        "connect_timeout": duration(connect_timeout),
        "typed_extension_protocol_options": http2_options(),
        "load_assignment": {
            "cluster_name": LOCAL_APP,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addressing.app(pod)}}]}],
        },
    }


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


def inbound_listener(topology: Topology, addressing: Addressing, pod: Pod) -> Json:
    """mTLS from mesh identities only -> RBAC per caller and method -> faults -> the app. No
    timeout here: the caller's sidecar owns the budget, and the app enforces the grpc-timeout
    it forwards (an Envoy timer here would reset streams mid-response: INTERNAL, not
    DEADLINE_EXCEEDED)."""
    files = addressing.identity(pod.service)
    routes = {
        "name": INBOUND,
        "virtual_hosts": [
            {
                "name": pod.service,
                "domains": ["*"],
                "routes": [
                    *stream_routes(topology, pod.service),
                    {
                        "match": {"prefix": "/"},
                        "route": {"cluster": LOCAL_APP, "timeout": "0s"},
                    },
                ],
            }
        ],
    }
    tls = typed(
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        require_client_certificate=True,
        common_tls_context=common_tls(files, [{"prefix": topology.spiffe_prefix}]),
    )
    return listener(
        INBOUND,
        addressing.inbound(pod),
        {
            "filters": [
                http_connection_manager(
                    INBOUND,
                    routes,
                    [rbac_filter(topology, pod.service), fault_filter()],
                    addressing.access_log(pod.name),
                    "HTTP2",
                    # The app may read the caller's SPIFFE ID from x-forwarded-client-cert.
                    forward_client_cert_details="SANITIZE_SET",
                    set_current_client_cert_details={"uri": True},
                    http2_protocol_options={"connection_keepalive": HTTP2_KEEPALIVE},
                )
            ],
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
        },
    )


def egress_listener(topology: Topology, addressing: Addressing, pod: Pod) -> Json:
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
    return listener(
        EGRESS,
        addressing.egress(pod),
        {
            "filters": [
                http_connection_manager(
                    EGRESS,
                    routes,
                    [],
                    addressing.access_log(pod.name),
                    "HTTP2",
                    local_reply_config=deadline_replies(),
                )
            ]
        },
    )


def health_listener(topology: Topology, addressing: Addressing, pod: Pod) -> Json:
    """Plaintext gRPC health of the app, for probes (kubelet, `shopmesh status`) only."""
    routes = {
        "name": HEALTH,
        "virtual_hosts": [
            {
                "name": HEALTH,
                "domains": ["*"],
                "routes": [
                    {
                        "match": path_exact(HEALTH_CHECK_PATH),
                        "route": {
                            "cluster": LOCAL_APP,
                            "timeout": duration(
                                topology.policies[pod.service].health_check.timeout
                            ),
                        },
                    }
                ],
            }
        ],
    }
    return listener(
        HEALTH,
        addressing.health(pod),
        {
            "filters": [
                http_connection_manager(
                    HEALTH, routes, [], addressing.access_log(pod.name), "HTTP2"
                )
            ]
        },
    )


def render_sidecar(topology: Topology, addressing: Addressing, pod: Pod) -> Json:
    """The bootstrap of `pod`'s sidecar."""
    if pod.service not in topology.services:
        raise RenderError(f"pod {pod.name!r} belongs to unknown service {pod.service!r}")
    service = topology.services[pod.service]
    clusters = [
        local_app_cluster(addressing, pod, topology.policies[pod.service].connect_timeout),
        *(
            upstream_cluster(topology, addressing, upstream, pod.service)
            for upstream in service.calls
        ),
    ]
    listeners = [
        inbound_listener(topology, addressing, pod),
        egress_listener(topology, addressing, pod),
        health_listener(topology, addressing, pod),
    ]
    return bootstrap(pod, addressing.admin(pod), listeners, clusters)


# --- gateway --------------------------------------------------------------------------------


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
                }
            )
        if topology.gateway.health:
            routes.append(
                {
                    "name": f"{service}.health",
                    "match": path_exact(HEALTH_CHECK_PATH),
                    "route": route_action(cluster_name(service), topology.policies[service].route),
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
    return {"name": INGRESS, "virtual_hosts": virtual_hosts}


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


def transcoder_filter(topology: Topology, addressing: Addressing) -> Json:
    """JSON over HTTP/1.1 for curl: POST /<pkg.Service>/<Method> with a JSON body."""
    return {
        "name": "envoy.filters.http.grpc_json_transcoder",
        "typed_config": typed(
            "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
            proto_descriptor=str(addressing.descriptor_set()),
            services=[topology.services[s].grpc_service for s in topology.gateway.exposes],
            auto_mapping=True,
            convert_grpc_status=True,
            print_options={"always_print_primitive_fields": True},
        ),
    }


def gateway_health_listener(addressing: Addressing) -> Json:
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
    return listener(
        HEALTH,
        addressing.gateway_health(),
        {
            "filters": [
                http_connection_manager(
                    HEALTH, routes, [health_check], addressing.access_log(GATEWAY), "AUTO"
                )
            ]
        },
    )


def render_gateway(topology: Topology, addressing: Addressing) -> Json:
    """The bootstrap of the edge gateway: plaintext HTTP/2 (gRPC) and HTTP/1.1 (JSON) in,
    rate limited, only the exposed methods routed, mTLS to the sidecars as `gateway`."""
    ingress = listener(
        INGRESS,
        addressing.gateway_listener(),
        {
            "filters": [
                http_connection_manager(
                    INGRESS,
                    gateway_routes(topology),
                    # The transcoder first, so a JSON request refused by the rate limit is
                    # known as one (gateway_replies) and answered in JSON.
                    [transcoder_filter(topology, addressing), local_rate_limit_filter(topology)],
                    addressing.access_log(GATEWAY),
                    "AUTO",
                    # Virtual hosts match the authority without its port.
                    strip_any_host_port=True,
                    local_reply_config=gateway_replies(),
                    http2_protocol_options={"connection_keepalive": HTTP2_KEEPALIVE},
                )
            ]
        },
    )
    clusters = [
        upstream_cluster(topology, addressing, service, GATEWAY)
        for service in topology.gateway.exposes
    ]
    return bootstrap(
        Pod(GATEWAY, GATEWAY),
        addressing.gateway_admin(),
        [ingress, gateway_health_listener(addressing)],
        clusters,
    )


# --- all configs ----------------------------------------------------------------------------


def render_all(topology: Topology, addressing: Addressing) -> dict[str, Json]:
    """File name -> bootstrap, for every sidecar and the gateway."""
    configs = {
        f"{pod.name}.yaml": render_sidecar(topology, addressing, pod)
        for pod in addressing.pods(topology)
    }
    configs[f"{GATEWAY}.yaml"] = render_gateway(topology, addressing)
    return configs


def dump(config: Json) -> str:
    """A config as YAML, keys in the order the builders wrote them."""
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def write_all(configs: Mapping[str, Json], directory: Path) -> list[Path]:
    """Write each config into `directory`; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, config in configs.items():
        path = directory / name
        path.write_text(dump(config), encoding="utf-8")
        written.append(path)
    return written
