"""envoy/mesh.yaml loaded and validated into the frozen dataclasses of
`shopmesh.topology.model`.

The topology is the single source of truth for every rendered Envoy config, so the loader is
strict: every key is required, unknown keys are refused, and each error names the offending key
by its path in the file (`services.orders.calls.userz`). When a descriptor set is given (the
`gen/shop.pb` written by scripts/generate.py), every gRPC service and method the file names is
checked against the contracts too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType

import yaml
from google.protobuf import descriptor_pb2

from shopmesh.topology.model import (
    GATEWAY,
    SHARED_WORK,
    AdaptiveConcurrency,
    CircuitBreaker,
    EdgeLimits,
    Gateway,
    HealthCheck,
    LocalRateLimit,
    OutlierDetection,
    RetryBudget,
    RetryPolicy,
    RoutePolicy,
    Service,
    SignIn,
    Topology,
    TopologyError,
    UpstreamPolicy,
)
from shopmesh.topology.sections import Section, fail

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_DNS_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_GRPC_SERVICE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\.[A-Z][A-Za-z0-9]*$")
_METHOD = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_RETRY_ON = frozenset(
    {
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
        "reset",
        "connect-failure",
        "refused-stream",
        "retriable-4xx",
        "gateway-error",
        "5xx",
    }
)


def load_topology(path: Path, descriptor_set: Path | None = None) -> Topology:
    """Load and validate the topology at `path`.

    With `descriptor_set` (a serialized FileDescriptorSet, e.g. gen/shop.pb), every gRPC service
    and method named in the file must exist in it; without, names are only checked for form.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise TopologyError(f"{path}: cannot read the topology: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise TopologyError(f"{path}: not valid YAML: {error}") from None
    contracts = _read_descriptor_set(descriptor_set) if descriptor_set is not None else None
    return parse_topology(raw, source=str(path), contracts=contracts)


def parse_topology(
    raw: object, source: str, contracts: Mapping[str, frozenset[str]] | None = None
) -> Topology:
    """Validate an already-parsed topology document (`source` names it in errors).

    `contracts` maps full gRPC service names to their method names; None skips that check.
    """
    root = Section.of(raw, source, "")
    trust_domain = root.text("trust_domain", _DNS_NAME, "a DNS name such as shop.local")
    namespace = root.text("namespace", _NAME, "a lower-case name such as shop")

    services_section = root.section("services")
    names = services_section.entries()
    if not names:
        root.fail("services", "at least one service is required")
    grpc_services: dict[str, str] = {}
    for name in names:
        if not _NAME.fullmatch(name) or name == GATEWAY:
            services_section.fail(name, f"{name!r} is not a valid service name")
        section = services_section.section(name)
        grpc_service = section.text(
            "grpc_service", _GRPC_SERVICE, "a full gRPC service name (shop.users.v1.UsersService)"
        )
        if contracts is not None and grpc_service not in contracts:
            section.fail("grpc_service", f"{grpc_service} is not in the descriptor set")
        grpc_services[name] = grpc_service
    methods = _MethodChecker(grpc_services, contracts)

    services: dict[str, Service] = {}
    ports: dict[int, str] = {}
    for name in names:
        section = services_section.section(name)
        replicas = section.integer("replicas", minimum=1)
        on_postgres = section.optional_integer("replicas_on_postgres", replicas, minimum=1)
        if name in SHARED_WORK and replicas > 1:
            section.fail(
                "replicas",
                f"{name} runs one replica on SQLite (its replicas share work through the "
                "database, which SQLite cannot do across processes): set replicas: 1 and "
                "replicas_on_postgres to run more with `shopmesh up --db postgres`",
            )
        port = section.integer("standalone_port", minimum=1, maximum=65535)
        if port in ports:
            section.fail("standalone_port", f"{port} is also the port of {ports[port]}")
        ports[port] = name
        calls = methods.method_map(section.section("calls"), caller=name)
        section.done()
        services[name] = Service(
            name, grpc_services[name], replicas, port, MappingProxyType(calls), on_postgres
        )
    services_section.done()

    gateway_section = root.section("gateway")
    exposes = methods.method_map(gateway_section.section("exposes"), caller=GATEWAY)
    limits = gateway_section.section("limits")
    edge_limits = EdgeLimits(
        max_request_bytes=limits.integer("max_request_bytes", minimum=1024),
        request_timeout=limits.duration("request_timeout", minimum=_ONE_MS),
        request_headers_timeout=limits.duration("request_headers_timeout", minimum=_ONE_MS),
        max_connections=limits.integer("max_connections", minimum=1),
        max_concurrent_streams=limits.integer("max_concurrent_streams", minimum=1),
    )
    limits.done()
    adaptive = gateway_section.section("adaptive_concurrency")
    admitted = methods.method_map(adaptive.section("methods"), caller=GATEWAY)
    _refuse_unexposed(adaptive, "methods", admitted, exposes)
    adaptive_concurrency = AdaptiveConcurrency(
        methods=MappingProxyType(admitted),
        min_rtt_interval=adaptive.duration("min_rtt_interval", minimum=timedelta(seconds=1)),
        min_concurrency=adaptive.integer("min_concurrency", minimum=1),
        max_concurrency=adaptive.integer("max_concurrency", minimum=1),
    )
    if adaptive_concurrency.max_concurrency < adaptive_concurrency.min_concurrency:
        adaptive.fail("max_concurrency", "must be at least min_concurrency")
    adaptive.done()
    gateway = Gateway(
        exposes=MappingProxyType(exposes),
        reflection=gateway_section.boolean("reflection"),
        health=gateway_section.boolean("health"),
        local_rate_limit=_parse_bucket(gateway_section.section("local_rate_limit")),
        per_client_rate_limit=_parse_bucket(gateway_section.section("per_client_rate_limit")),
        limits=edge_limits,
        adaptive_concurrency=adaptive_concurrency,
        sign_in=_parse_sign_in(gateway_section.section("sign_in"), methods, exposes, services),
        cors_allowed_origins=_parse_cors(gateway_section.section("cors")),
    )
    gateway_section.done()

    resilience = root.section("resilience")
    defaults_raw = resilience.mapping("defaults")
    # Parsed alone first, so a bad default is reported where it is written.
    _parse_policy(Section.of(defaults_raw, source, "resilience.defaults"), {})
    overrides = resilience.section("overrides")
    for target in overrides.entries():
        if target not in services:
            overrides.fail(target, f"unknown service {target!r}; known: {', '.join(names)}")
    policies: dict[str, UpstreamPolicy] = {}
    for name in names:
        path = f"resilience.overrides.{name}"
        override = dict(overrides.mapping(name)) if name in overrides.data else {}
        method_overrides = override.pop("methods", {})
        merged = _merge(defaults_raw, override, source, path)
        method_routes: dict[str, RoutePolicy] = {}
        methods_section = Section.of(method_overrides, source, f"{path}.methods")
        for method in methods_section.entries():
            methods.check(methods_section, method, method, name)
            method_path = f"{path}.methods.{method}"
            method_raw = methods_section.mapping(method)
            for key in method_raw:
                if key not in _ROUTE_KEYS:
                    fail(source, f"{method_path}.{key}", f"may only set {', '.join(_ROUTE_KEYS)}")
            route_raw = {key: merged[key] for key in _ROUTE_KEYS}
            method_merged = _merge(route_raw, method_raw, source, method_path)
            method_routes[method] = _parse_route(Section.of(method_merged, source, method_path))
        methods_section.done()
        policies[name] = _parse_policy(Section.of(merged, source, path), method_routes)
    overrides.done()
    resilience.done()
    root.done()
    for service, exposed in exposes.items():
        policy = policies[service]
        for method in exposed:
            timeout = policy.methods.get(method, policy.route).route_timeout
            if timeout > edge_limits.request_timeout:
                fail(
                    source,
                    f"resilience: {service}.{method}",
                    f"route_timeout {timeout.total_seconds()}s exceeds the gateway's "
                    f"limits.request_timeout ({edge_limits.request_timeout.total_seconds()}s)",
                )

    return Topology(
        trust_domain=trust_domain,
        namespace=namespace,
        services=MappingProxyType(services),
        gateway=gateway,
        policies=MappingProxyType(policies),
    )


_ONE_MS = timedelta(milliseconds=1)
_ROUTE_KEYS = ("route_timeout", "per_try_timeout", "retry")


def _refuse_unexposed(
    section: Section,
    key: str,
    chosen: Mapping[str, tuple[str, ...]],
    exposes: Mapping[str, tuple[str, ...]],
) -> None:
    for service, methods in chosen.items():
        unexposed = set(methods) - set(exposes.get(service, ()))
        if unexposed:
            section.fail(key, f"{service}: {', '.join(sorted(unexposed))} not exposed")


_ORIGIN = re.compile(r"^https?://[a-z0-9.-]+(:[0-9]{1,5})?$")
"""A browser origin: scheme, host and port, no path, no wildcard."""


def _parse_cors(section: Section) -> tuple[str, ...]:
    """The origins other than the gateway's own whose pages may call it (a wildcard never:
    any page a shopper opens could then call with their token, if it had one)."""
    origins = section.text_list(
        "allowed_origins", _ORIGIN, "origins such as https://shop.example.com (never *)"
    )
    section.done()
    return origins


def _parse_sign_in(
    section: Section,
    methods: _MethodChecker,
    exposes: Mapping[str, tuple[str, ...]],
    services: Mapping[str, Service],
) -> SignIn:
    issuer = section.text("issuer", _NAME, "the service that signs access tokens")
    if issuer not in services:
        section.fail("issuer", f"unknown service {issuer!r}; known: {', '.join(services)}")
    if not exposes.get(issuer):
        section.fail("issuer", f"{issuer} exposes nothing: nobody could sign in")
    public = methods.method_map(section.section("public"), caller=GATEWAY)
    _refuse_unexposed(section, "public", public, exposes)
    passed_on_by = section.text_list("passed_on_by", _NAME, "service names such as orders")
    for service in passed_on_by:
        if service not in services:
            section.fail("passed_on_by", f"unknown service {service!r}")
    section.done()
    return SignIn(issuer, MappingProxyType(public), passed_on_by)


def _merge(
    defaults: Mapping[str, object], override: Mapping[str, object], source: str, path: str
) -> dict[str, object]:
    """`defaults` with `override` laid over it; an override may only set keys the defaults
    have, so a typo cannot silently fall back to a default."""
    merged = dict(defaults)
    for key, value in override.items():
        if key not in defaults:
            fail(source, f"{path}.{key}", "unknown key (not in resilience.defaults)")
        base = defaults[key]
        if isinstance(base, dict):
            if not isinstance(value, dict):
                fail(source, f"{path}.{key}", "expected a mapping")
            merged[key] = _merge(base, value, source, f"{path}.{key}")
        else:
            merged[key] = value
    return merged


class _MethodChecker:
    """Checks method names against the contracts when a descriptor set was given."""

    def __init__(
        self, grpc_services: Mapping[str, str], contracts: Mapping[str, frozenset[str]] | None
    ) -> None:
        self.grpc_services = grpc_services
        self.contracts = contracts

    def check(self, section: Section, key: str, method: str, service: str) -> None:
        if not isinstance(method, str) or not _METHOD.fullmatch(method):
            section.fail(key, f"{method!r} is not a gRPC method name such as GetUser")
        if self.contracts is not None:
            grpc_service = self.grpc_services[service]
            if method not in self.contracts[grpc_service]:
                section.fail(key, f"{grpc_service} has no method {method!r}")

    def method_map(self, section: Section, caller: str) -> dict[str, tuple[str, ...]]:
        """A `service: [Method, ...]` mapping whose services and methods all exist."""
        result: dict[str, tuple[str, ...]] = {}
        for target in section.entries():
            if target not in self.grpc_services:
                known = ", ".join(self.grpc_services)
                section.fail(target, f"unknown service {target!r}; known: {known}")
            if target == caller:
                section.fail(target, "a service does not call itself through the mesh")
            methods = section.text_list(target, _METHOD, "gRPC method names such as GetUser")
            if not methods:
                section.fail(target, "list at least one method (or remove the entry)")
            for method in methods:
                self.check(section, target, method, target)
            result[target] = methods
        section.done()
        return result


def _parse_bucket(section: Section) -> LocalRateLimit:
    bucket = LocalRateLimit(
        max_tokens=section.integer("max_tokens", minimum=1),
        tokens_per_fill=section.integer("tokens_per_fill", minimum=1),
        fill_interval=section.duration("fill_interval", minimum=_ONE_MS),
    )
    section.done()
    return bucket


def _parse_route(section: Section) -> RoutePolicy:
    retry = section.section("retry")
    retry_on = retry.text_list("retry_on", re.compile(r"^[a-z0-9-]+$"), "retry conditions")
    for condition in retry_on:
        if condition not in _RETRY_ON:
            retry.fail("retry_on", f"unknown condition {condition!r}; known: {sorted(_RETRY_ON)}")
    policy = RoutePolicy(
        route_timeout=section.duration("route_timeout"),
        per_try_timeout=section.duration("per_try_timeout"),
        retry=RetryPolicy(
            retry_on=retry_on,
            num_retries=retry.integer("num_retries", minimum=0),
            backoff_base=retry.duration("backoff_base", minimum=_ONE_MS),
            backoff_max=retry.duration("backoff_max", minimum=_ONE_MS),
            host_selection_max_attempts=retry.integer("host_selection_max_attempts", minimum=1),
        ),
    )
    if policy.retry.backoff_max < policy.retry.backoff_base:
        retry.fail("backoff_max", "must be >= backoff_base")
    retry.done()
    if policy.route_timeout and policy.per_try_timeout > policy.route_timeout:
        section.fail("per_try_timeout", "must not exceed route_timeout, which bounds all tries")
    return policy


def _parse_policy(section: Section, methods: Mapping[str, RoutePolicy]) -> UpstreamPolicy:
    route = _parse_route(section)
    budget = section.section("retry_budget")
    breaker = section.section("circuit_breaker")
    outlier = section.section("outlier_detection")
    health = section.section("health_check")
    policy = UpstreamPolicy(
        connect_timeout=section.duration("connect_timeout", minimum=_ONE_MS),
        route=route,
        methods=MappingProxyType(dict(methods)),
        retry_budget=RetryBudget(
            budget_percent=budget.number("budget_percent", 0.0, 100.0),
            min_retry_concurrency=budget.integer("min_retry_concurrency", minimum=0),
        ),
        circuit_breaker=CircuitBreaker(
            max_connections=breaker.integer("max_connections", minimum=1),
            max_pending_requests=breaker.integer("max_pending_requests", minimum=1),
            max_requests=breaker.integer("max_requests", minimum=1),
        ),
        outlier_detection=OutlierDetection(
            consecutive_5xx=outlier.integer("consecutive_5xx", minimum=1),
            consecutive_gateway_failure=outlier.integer("consecutive_gateway_failure", minimum=1),
            interval=outlier.duration("interval", minimum=_ONE_MS),
            base_ejection_time=outlier.duration("base_ejection_time", minimum=_ONE_MS),
            max_ejection_percent=outlier.integer("max_ejection_percent", minimum=0, maximum=100),
        ),
        health_check=HealthCheck(
            interval=health.duration("interval", minimum=_ONE_MS),
            no_traffic_interval=health.duration("no_traffic_interval", minimum=_ONE_MS),
            timeout=health.duration("timeout", minimum=_ONE_MS),
            unhealthy_threshold=health.integer("unhealthy_threshold", minimum=1),
            healthy_threshold=health.integer("healthy_threshold", minimum=1),
        ),
        panic_threshold_percent=section.integer("panic_threshold_percent", 0, 100),
    )
    for part in (budget, breaker, outlier, health):
        part.done()
    section.done()
    return policy


def _read_descriptor_set(path: Path) -> dict[str, frozenset[str]]:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TopologyError(f"{path}: cannot read the descriptor set: {error.strerror}") from None
    descriptors = descriptor_pb2.FileDescriptorSet()
    descriptors.ParseFromString(data)
    contracts: dict[str, frozenset[str]] = {}
    for file in descriptors.file:
        for service in file.service:
            full_name = f"{file.package}.{service.name}" if file.package else service.name
            contracts[full_name] = frozenset(method.name for method in service.method)
    return contracts
