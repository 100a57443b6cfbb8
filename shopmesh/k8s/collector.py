"""The in-cluster trace collector of the observability component: Jaeger v2, an OpenTelemetry
Collector distribution with Jaeger's storage and UI built in, keeping the last traces in
memory. Its objects (ServiceAccount, Service, Deployment, PodDisruptionBudget), the
NetworkPolicy admitting the mesh to it, and its configuration (a collector config file).

Jaeger rather than the plain OpenTelemetry Collector: the collector alone only forwards spans,
so the cluster would still need a backend to look at a trace; Jaeger v2 receives OTLP with the
collector's own receiver and serves the traces to a browser, in one container with no storage
to run. A cluster with its own backend (Tempo, a vendor) swaps the image and config and keeps
the Service: every Envoy and app only knows `otel-collector:4317`.
"""

from __future__ import annotations

from pathlib import Path

from shopmesh.k8s.layout import KubernetesLayout
from shopmesh.k8s.objects import (
    NAME_LABEL,
    Json,
    container_security,
    disruption_budget,
    labels,
    metadata,
    mount,
    pick,
    pod_security,
    port,
    resources,
    service_account,
)
from shopmesh.layout import Endpoint
from shopmesh.topology import Topology

COLLECTOR = "otel-collector"
"""The Deployment, Service and ServiceAccount: named for the role, not the product, so another
collector can take its place without a change to any Envoy config or app."""
COMPONENT = "observability"
"""The `app.kubernetes.io/component` of everything the component adds."""
COLLECTOR_IMAGE = (
    "cr.jaegertracing.io/jaegertracing/jaeger:2.19.0"
    "@sha256:ede4864215be4cd85bd8c3129a2fea6c5713c5653c7282c429dba123014bc68b"
)
"""Jaeger v2 by tag and by the digest of its multi-platform index, the pin Jaeger's own
compose files use (docker-compose/kafka in the v2.20.0 source tree). Its user is UID 10001."""
OTLP_GRPC_PORT = 4317
UI_PORT = 16686
HEALTH_PORT = 13133
HEALTH_PATH = "/status"
MAX_TRACES = 2000
"""Memory storage keeps this many traces, the oldest dropped first. A checkout is a few dozen
spans, so 2,000 traces stay well inside MEMORY_LIMIT_MIB."""
MEMORY_LIMIT_MIB = 512
MEMORY_SOFT_LIMIT_MIB = 400
"""Where the collector starts refusing spans (memory_limiter) and the Go runtime collects
harder (GOMEMLIMIT): below the container's limit, so it sheds load instead of being killed."""
CONFIG_MAP = f"{COLLECTOR}-config"
CONFIG_FILE = "config.yaml"
CONFIG_DIR = Path("/etc/otel-collector")
STORE = "memstore"


def collector_endpoint(layout: KubernetesLayout) -> Endpoint:
    """Where every Envoy and app sends its spans: the collector Service's cluster DNS name."""
    return Endpoint(layout.service_host(COLLECTOR), OTLP_GRPC_PORT)


def collector_config() -> Json:
    """Jaeger v2's configuration: OTLP/gRPC in, memory storage, the UI; no other receiver."""
    return {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query", "healthcheckv2"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["memory_limiter", "batch"],
                    "exporters": ["jaeger_storage_exporter"],
                }
            },
        },
        "extensions": {
            "healthcheckv2": {
                "use_v2": True,
                "http": {"endpoint": f"0.0.0.0:{HEALTH_PORT}"},
            },
            "jaeger_query": {
                "storage": {"traces": STORE},
                # The UI's own requests are not the mesh's traffic: keep them out of its traces.
                "enable_tracing": False,
                "http": {"endpoint": f"0.0.0.0:{UI_PORT}"},
            },
            "jaeger_storage": {"backends": {STORE: {"memory": {"max_traces": MAX_TRACES}}}},
        },
        "receivers": {
            "otlp": {"protocols": {"grpc": {"endpoint": f"0.0.0.0:{OTLP_GRPC_PORT}"}}},
        },
        "processors": {
            "memory_limiter": {
                "check_interval": "1s",
                "limit_mib": MEMORY_SOFT_LIMIT_MIB,
                "spike_limit_mib": MEMORY_SOFT_LIMIT_MIB // 4,
            },
            "batch": {},
        },
        "exporters": {"jaeger_storage_exporter": {"trace_storage": STORE}},
    }


def collector_container() -> Json:
    health = {"httpGet": {"path": HEALTH_PATH, "port": HEALTH_PORT}}
    return {
        "name": "collector",
        "image": COLLECTOR_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "args": [f"--config={CONFIG_DIR / CONFIG_FILE}"],
        "env": [{"name": "GOMEMLIMIT", "value": f"{MEMORY_SOFT_LIMIT_MIB}MiB"}],
        "ports": [
            port("otlp-grpc", OTLP_GRPC_PORT),
            port("ui", UI_PORT),
            port("health", HEALTH_PORT),
        ],
        "readinessProbe": {**health, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {**health, "periodSeconds": 10, "failureThreshold": 3},
        "resources": resources("50m", "128Mi", "1", f"{MEMORY_LIMIT_MIB}Mi"),
        "securityContext": container_security(),
        "volumeMounts": [
            mount("config", CONFIG_DIR, read_only=True),
            # The image declares /tmp a volume; the root filesystem is read-only.
            mount("tmp", Path("/tmp")),
        ],
    }


def collector_deployment(namespace: str) -> Json:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(COLLECTOR, namespace, COMPONENT),
        "spec": {
            # One replica: the traces are in its memory, and two would each hold part of a trace.
            "replicas": 1,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": {NAME_LABEL: COLLECTOR}},
            "template": {
                "metadata": {"labels": labels(COLLECTOR, COMPONENT)},
                "spec": {
                    "serviceAccountName": COLLECTOR,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security(),
                    "containers": [collector_container()],
                    "volumes": [
                        {"name": "config", "configMap": {"name": CONFIG_MAP}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
                    ],
                },
            },
        },
    }


def collector_service(namespace: str) -> Json:
    """OTLP/gRPC for the mesh, and the UI for `kubectl port-forward` (no policy admits any
    pod to the UI; port-forwarding reaches it from inside the pod's network namespace)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(COLLECTOR, namespace, COMPONENT),
        "spec": {
            "selector": {NAME_LABEL: COLLECTOR},
            "ports": [
                {"name": name, "port": number, "targetPort": name, "protocol": "TCP"}
                for name, number in (("otlp-grpc", OTLP_GRPC_PORT), ("ui", UI_PORT))
            ],
        },
    }


def collector_ingress_policy(topology: Topology) -> Json:
    """Only the mesh's pods (every sidecar, app and the gateway) may send spans, and only to
    the OTLP port."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(f"{COLLECTOR}-ingress", topology.namespace, COMPONENT),
        "spec": {
            "podSelector": {"matchLabels": {NAME_LABEL: COLLECTOR}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": pick(topology.identities)}],
                    "ports": [{"protocol": "TCP", "port": OTLP_GRPC_PORT}],
                }
            ],
        },
    }


def collector_objects(topology: Topology) -> list[Json]:
    namespace = topology.namespace
    # The shared builders label what they make as the mesh's; these are the component's.
    account = service_account(COLLECTOR, namespace)
    account["metadata"] = metadata(COLLECTOR, namespace, COMPONENT)
    budget = disruption_budget(COLLECTOR, namespace)
    budget["metadata"] = metadata(COLLECTOR, namespace, COMPONENT)
    return [
        account,
        collector_service(namespace),
        collector_deployment(namespace),
        budget,
    ]
