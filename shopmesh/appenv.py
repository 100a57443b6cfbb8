"""The one writer of an app's environment (the SHOPMESH_* variables), for every way shopmesh
runs an app: a pod of the local mesh, a Kubernetes container, or a plain process next to the
others (`shopmesh run`). `services/common/config.py` is the reader; both use its variable
names, and tests/unit/test_config.py checks, for every service of the topology, that what is
written here is what the app reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common.config import (
    DATABASE_URL,
    DB_PATH,
    DRAIN_SECONDS,
    GRACE_SECONDS,
    LISTEN,
    LOG_LEVEL,
    REPLICA,
    upstream_variable,
)
from services.users.keys import KEYS_DIR_VARIABLE
from shopmesh.envoy.tracing import FLUSH_INTERVAL_MS
from shopmesh.layout import Layout, Pod
from shopmesh.topology import Topology

MESH_OWNED = (
    LISTEN,
    DB_PATH,
    DATABASE_URL,
    GRACE_SECONDS,
    DRAIN_SECONDS,
    LOG_LEVEL,
    REPLICA,
    KEYS_DIR_VARIABLE,
)
"""Variables shopmesh sets for the apps (plus SHOPMESH_UPSTREAM_<NAME> for each upstream; the
signing keys' directory for the sign-in issuer only; the database URL only for services on
Postgres: one URL in the caller's environment would put every service in one database, so it
never passes through); any other variable of the caller's environment reaches the apps
unchanged."""


@dataclass(frozen=True)
class AppTracing:
    """Where an app sends its spans (an OTLP/gRPC endpoint: `unix:///path` or
    `http://host:port`) and the share of its own root spans it samples."""

    endpoint: str
    sampling: float
    flush_interval_ms: int = FLUSH_INTERVAL_MS


@dataclass(frozen=True)
class AppSettings:
    """What is the same for every app of one mesh."""

    log_level: str = "INFO"
    grace_seconds: float = 5.0
    tracing: AppTracing | None = None
    database_urls: Mapping[str, str] = field(default_factory=dict)
    """service -> its Postgres database's URL; a service not named uses its SQLite file."""


def unix_target(path: object) -> str:
    """A Unix socket path as a gRPC target."""
    return f"unix:{path}"


def seconds(value: float) -> str:
    """Seconds as the apps read them, without float noise (3.0 -> "3", 0.25 -> "0.25")."""
    return f"{value:g}"


def is_mesh_owned(variable: str) -> bool:
    """Whether shopmesh sets `variable` itself (a value from the caller's environment for it
    would be replaced)."""
    return variable in MESH_OWNED or variable.startswith(upstream_variable(""))


def tracing_environment(tracing: AppTracing | None, service: str, pod: str) -> dict[str, str]:
    """The standard OTEL_* variables the OpenTelemetry SDK of an app reads
    (services/common/telemetry.py): where spans go, the service's name, and a parent-based
    ratio sampler, so a call follows its caller's decision and background work is sampled at
    the mesh's rate."""
    if tracing is None:
        return {}
    return {
        "OTEL_SERVICE_NAME": service,
        "OTEL_RESOURCE_ATTRIBUTES": f"service.instance.id={pod}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": tracing.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": f"{tracing.sampling:g}",
        "OTEL_BSP_SCHEDULE_DELAY": str(tracing.flush_interval_ms),
    }


def pod_environment(
    topology: Topology, layout: Layout, pod: Pod, settings: AppSettings
) -> dict[str, str]:
    """The environment of `pod`'s app in the mesh: it listens on its Unix socket and reaches
    every upstream through its sidecar's egress socket, by gRPC service name."""
    egress = unix_target(layout.egress_socket(pod))
    return {
        LISTEN: unix_target(layout.app_socket(pod)),
        DB_PATH: str(layout.database(pod.service)),
        **database_environment(settings, pod.service),
        **{
            upstream_variable(upstream): egress for upstream in topology.services[pod.service].calls
        },
        GRACE_SECONDS: seconds(settings.grace_seconds),
        DRAIN_SECONDS: seconds(topology.drain_seconds(pod.service)),
        LOG_LEVEL: settings.log_level,
        REPLICA: pod.name,
        **tracing_environment(settings.tracing, pod.service, pod.name),
        **signing_environment(topology, layout, pod.service),
    }


def database_environment(settings: AppSettings, service: str) -> dict[str, str]:
    """Which database `service` uses: its Postgres URL if it has one (else its SQLite file)."""
    url = settings.database_urls.get(service)
    return {} if url is None else {DATABASE_URL: url}


def signing_environment(topology: Topology, layout: Layout, service: str) -> dict[str, str]:
    """Where the sign-in issuer keeps the keys it signs access tokens with: where the layout
    says the gateway finds their JWKS."""
    if service != topology.gateway.sign_in.issuer:
        return {}
    return {KEYS_DIR_VARIABLE: str(layout.signing_keys())}


def standalone_environment(
    topology: Topology, service: str, host: str, database: str, settings: AppSettings
) -> dict[str, str]:
    """The environment of `service` run on its own, without the mesh: it listens on its
    `standalone_port` and calls its upstreams straight at theirs (no retries, no mTLS)."""
    upstreams = topology.services[service].calls
    return {
        LISTEN: f"{host}:{topology.services[service].standalone_port}",
        DB_PATH: database,
        **database_environment(settings, service),
        **{
            upstream_variable(name): f"{host}:{topology.services[name].standalone_port}"
            for name in upstreams
        },
        GRACE_SECONDS: seconds(settings.grace_seconds),
        DRAIN_SECONDS: seconds(0),
        LOG_LEVEL: settings.log_level,
    }
