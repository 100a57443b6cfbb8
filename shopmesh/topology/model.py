"""The mesh topology as frozen dataclasses: services, who may call what, the gateway and the
resilience policy of every upstream. `shopmesh.topology.loader` builds it from envoy/mesh.yaml."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from types import MappingProxyType

GATEWAY = "gateway"
"""The identity of the edge gateway; it may appear wherever a caller identity is expected."""

HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
REFLECTION_SERVICES: tuple[str, ...] = (REFLECTION_SERVICE, "grpc.reflection.v1.ServerReflection")
"""Server reflection as grpcurl 1.8 and grpcio-reflection speak it (v1alpha), and v1: the same
messages under a new name."""
REFLECTION_PATHS: tuple[str, ...] = tuple(f"/{s}/ServerReflectionInfo" for s in REFLECTION_SERVICES)
"""Every gRPC path of server reflection (its one bidirectional-streaming method, per version)."""


class TopologyError(ValueError):
    """The topology file is malformed; the message names the file and the bad key."""


@dataclass(frozen=True)
class RetryPolicy:
    """Route-level retries: which failures are retried, how often and with what backoff."""

    retry_on: tuple[str, ...]
    num_retries: int
    backoff_base: timedelta
    backoff_max: timedelta
    host_selection_max_attempts: int
    """How many times Envoy may re-pick a host to avoid one that already failed this request
    (the previous-hosts retry predicate)."""


@dataclass(frozen=True)
class RoutePolicy:
    """Timeouts and retries of the routes to one upstream (or one of its methods).

    A zero route_timeout disables it (long-lived streams); a zero per_try_timeout leaves each
    attempt bounded only by the route timeout.
    """

    route_timeout: timedelta
    per_try_timeout: timedelta
    retry: RetryPolicy


@dataclass(frozen=True)
class RetryBudget:
    """Retries allowed at once, as a share of the requests in flight to the upstream."""

    budget_percent: float
    min_retry_concurrency: int


@dataclass(frozen=True)
class CircuitBreaker:
    """Bulkhead limits per upstream cluster; beyond them calls fail fast."""

    max_connections: int
    max_pending_requests: int
    max_requests: int


@dataclass(frozen=True)
class OutlierDetection:
    """Passive ejection of replicas that keep failing."""

    consecutive_5xx: int
    consecutive_gateway_failure: int
    interval: timedelta
    base_ejection_time: timedelta
    max_ejection_percent: int


@dataclass(frozen=True)
class HealthCheck:
    """Active gRPC health checks (grpc.health.v1) of every replica, through mTLS."""

    interval: timedelta
    no_traffic_interval: timedelta
    timeout: timedelta
    unhealthy_threshold: int
    healthy_threshold: int


@dataclass(frozen=True)
class UpstreamPolicy:
    """Everything a caller's Envoy applies to calls to one upstream service."""

    connect_timeout: timedelta
    route: RoutePolicy
    methods: Mapping[str, RoutePolicy]
    """Per-method route overrides (e.g. no timeout for a server-streaming watch)."""
    retry_budget: RetryBudget
    circuit_breaker: CircuitBreaker
    outlier_detection: OutlierDetection
    health_check: HealthCheck
    panic_threshold_percent: int


SHARED_WORK = frozenset({"orders", "notifications"})
"""Services whose replicas share background work through their database: orders' saga sweep
and outbox relay (row leases and a turn), notifications' fan-out to watchers (LISTEN/NOTIFY).
SQLite gives them neither across machines, so on SQLite each runs as one replica."""


@dataclass(frozen=True)
class Service:
    """One service of the mesh: its gRPC service, replica count and what it may call."""

    name: str
    grpc_service: str
    replicas: int
    """How many replicas run: `replicas` of the file, or its `replicas_on_postgres` in a
    topology `on_postgres()` gave."""
    standalone_port: int
    """The TCP port the app listens on when run on its own, without the mesh (`make run`)."""
    calls: Mapping[str, tuple[str, ...]]
    """Upstream service name -> the methods of it this service may call."""
    replicas_on_postgres: int = 1
    """How many replicas run when the services keep their data in Postgres (the loader's
    default: `replicas`)."""


@dataclass(frozen=True)
class LocalRateLimit:
    """A token bucket at the gateway: a call takes one token, or is refused."""

    max_tokens: int
    tokens_per_fill: int
    fill_interval: timedelta


@dataclass(frozen=True)
class EdgeLimits:
    """What one request or connection may take at the gateway."""

    max_request_bytes: int
    request_timeout: timedelta
    """The longest a unary call from outside may take (the longest route timeout exposed)."""
    request_headers_timeout: timedelta
    max_connections: int
    max_concurrent_streams: int


@dataclass(frozen=True)
class AdaptiveConcurrency:
    """One adaptive concurrency controller for `methods` (service -> methods) at the edge."""

    methods: Mapping[str, tuple[str, ...]]
    min_rtt_interval: timedelta
    min_concurrency: int
    max_concurrency: int


@dataclass(frozen=True)
class SignIn:
    """Who may call the exposed methods: `issuer` (a service) signs shoppers' access tokens, the
    gateway verifies them, and every exposed method but the `public` ones needs one. The gateway
    passes the signed-in caller on to the services it calls; so may the services in
    `passed_on_by`, which call on a shopper's behalf. No other caller may name one."""

    issuer: str
    public: Mapping[str, tuple[str, ...]]
    passed_on_by: tuple[str, ...]

    def is_public(self, service: str, method: str) -> bool:
        return method in self.public.get(service, ())


@dataclass(frozen=True)
class Gateway:
    """The edge gateway: the public methods, and what else it offers to outside clients."""

    exposes: Mapping[str, tuple[str, ...]]
    reflection: bool
    """Answer server reflection for the whole exposed API (shopmesh.reflection, beside the
    gateway), whatever the :authority."""
    health: bool
    """Route grpc.health.v1.Health/Check to each service, chosen by :authority."""
    local_rate_limit: LocalRateLimit
    per_client_rate_limit: LocalRateLimit
    """A bucket per source address, taken from on top of the shared one."""
    limits: EdgeLimits
    adaptive_concurrency: AdaptiveConcurrency
    sign_in: SignIn
    cors_allowed_origins: tuple[str, ...]
    """Origins besides the gateway's own whose pages may call it over gRPC-Web (CORS); none:
    the storefront is served by the gateway itself, from its own origin."""


@dataclass(frozen=True)
class Topology:
    """The whole mesh. Build it with `shopmesh.topology.load_topology`."""

    trust_domain: str
    namespace: str
    services: Mapping[str, Service]
    gateway: Gateway
    policies: Mapping[str, UpstreamPolicy]
    """Service name -> the policy every caller applies to it (defaults merged with overrides)."""

    def on_postgres(self) -> Topology:
        """This mesh with its services' data in Postgres: each at `replicas_on_postgres`."""
        services = {
            name: replace(service, replicas=service.replicas_on_postgres)
            for name, service in self.services.items()
        }
        return replace(self, services=MappingProxyType(services))

    def spiffe_id(self, identity: str) -> str:
        """The SPIFFE ID in the certificate of `identity` (a service name or "gateway")."""
        if identity != GATEWAY and identity not in self.services:
            raise KeyError(f"unknown identity {identity!r}")
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{identity}"

    @property
    def spiffe_prefix(self) -> str:
        """What every mesh identity's SPIFFE ID starts with."""
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/"

    @property
    def identities(self) -> tuple[str, ...]:
        """Every identity that gets a certificate: each service, then the gateway."""
        return (*self.services, GATEWAY)

    @property
    def spiffe_ids(self) -> dict[str, str]:
        """Every identity -> the SPIFFE ID in its certificate."""
        return {identity: self.spiffe_id(identity) for identity in self.identities}

    def drain_seconds(self, service: str) -> float:
        """How long a replica of `service` keeps serving after SIGTERM while reporting
        NOT_SERVING: long enough for every caller's active health check to see it
        `unhealthy_threshold` times, one interval apart, each answered within the check's
        timeout."""
        check = self.policies[service].health_check
        return (check.unhealthy_threshold * check.interval + check.timeout).total_seconds()

    def callers(self, service: str) -> dict[str, tuple[str, ...]]:
        """Caller identity -> the methods of `service` it may call (the gateway included)."""
        allowed = {
            caller.name: caller.calls[service]
            for caller in self.services.values()
            if service in caller.calls
        }
        if service in self.gateway.exposes:
            allowed[GATEWAY] = self.gateway.exposes[service]
        return allowed

    def start_waves(self) -> list[list[str]]:
        """Services grouped so that each one only calls services of earlier groups (the
        services of a call cycle, which the topology does not forbid, share the last group)."""
        remaining = dict(self.services)
        waves: list[list[str]] = []
        placed: set[str] = set()
        while remaining:
            wave = [name for name, s in remaining.items() if set(s.calls) <= placed]
            if not wave:
                waves.append(list(remaining))
                break
            waves.append(wave)
            placed.update(wave)
            for name in wave:
                del remaining[name]
        return waves
