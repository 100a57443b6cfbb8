"""The Kubernetes objects of one service: ServiceAccount, headless Service, PVC, Deployment (the
app and its Envoy sidecar sharing an emptyDir for the sockets), PodDisruptionBudget and
NetworkPolicies; plus the pieces the gateway's objects share with them. The Deployment keeps
its data as a `Storage` says: a SQLite file on the PVC here, its own Postgres database in the
postgres component (shopmesh.k8s.postgres)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.config import REPLICA
from shopmesh.appenv import AppSettings, pod_environment
from shopmesh.envoy.command import envoy_args
from shopmesh.k8s.layout import KubernetesLayout
from shopmesh.layout import Pod, app_module
from shopmesh.topology import GATEWAY, Topology

Json = dict[str, Any]

ENVOY_IMAGE = "envoyproxy/envoy:v1.40.0"
"""The official Envoy image, at the version of the `envoy` the local mesh and tests run."""
APP_IMAGE = "shopmesh"
"""The service image (Dockerfile); overlays give it a registry and tag with `images:`."""
RUN_AS = 10001
"""The UID and GID of every container: the Dockerfile's user. App and sidecar must share it,
because each connects to a Unix socket the other created (sockets need write permission)."""
STATEFUL_REPLICAS = 1
"""On SQLite every service keeps its state in a file on its own volume, so it runs one pod:
a second replica would have a second, diverging database (see k8s/README.md)."""
GATEWAY_REPLICAS = 2
"""The gateway is stateless; overlays scale it."""
ENVOY_CONCURRENCY = 2
"""Envoy worker threads; without it Envoy starts one per node core, whatever the CPU limit."""
PART_OF = "shopmesh"
NAME_LABEL = "app.kubernetes.io/name"
APP_CONTAINER = "app"
"""The service's own container in its pod (the other is the Envoy sidecar)."""
METRICS_PORT = "metrics"
"""The name of every Envoy's container port for Prometheus (`/stats/prometheus`)."""


@dataclass(frozen=True)
class ReadOnlyVolume:
    volume: Json
    """The pod's volume, with its name."""
    path: Path
    """Where the app container mounts it."""


@dataclass(frozen=True)
class Storage:
    """Where a service's pods keep their data, and so how many of them may run."""

    replicas: int
    settings: AppSettings = field(default_factory=AppSettings)
    """The app environment's settings: `database_urls` names a Postgres database."""
    data: Json | None = None
    """The source of the volume mounted at the layout's data directory (the SQLite file's
    PVC); None: nothing is mounted there."""
    secret_env: tuple[Json, ...] = ()
    """Variables from Secrets (`valueFrom.secretKeyRef`), after the app environment."""
    read_only: tuple[ReadOnlyVolume, ...] = ()
    """Volumes the app container mounts read-only."""

    @property
    def claims_a_volume(self) -> bool:
        """Whether the pods share a ReadWriteOnce claim (one pod at a time may mount it)."""
        return self.data is not None and "persistentVolumeClaim" in self.data


def sqlite_storage(layout: KubernetesLayout, service: str) -> Storage:
    """One pod with its SQLite file on the service's PVC (`data_claim`)."""
    claim = {"persistentVolumeClaim": {"claimName": layout.data_claim(service)}}
    return Storage(STATEFUL_REPLICAS, data=claim)


def labels(name: str, component: str) -> dict[str, str]:
    return {
        NAME_LABEL: name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
    }


def metadata(name: str, namespace: str, component: str) -> Json:
    return {"name": name, "namespace": namespace, "labels": labels(name, component)}


def component_of(identity: str) -> str:
    return "gateway" if identity == GATEWAY else "service"


def pick(names: Sequence[str]) -> Json:
    """A label selector for the pods of the named services (and gateway)."""
    return {"matchExpressions": [{"key": NAME_LABEL, "operator": "In", "values": sorted(names)}]}


def resources(cpu: str, memory: str, cpu_limit: str, memory_limit: str) -> Json:
    return {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": cpu_limit, "memory": memory_limit},
    }


def pod_security() -> Json:
    """Pod-level: no root, the runtime's default seccomp profile, volumes owned by RUN_AS."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> Json:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def mount(name: str, path: Path, read_only: bool = False) -> Json:
    entry: Json = {"name": name, "mountPath": str(path)}
    if read_only:
        entry["readOnly"] = True
    return entry


SECRET_FILE_MODE = 0o440
"""Mounted Secret files: readable by root and the pod's group (fsGroup) only, which is also
what Postgres accepts for its key."""


def secret_source(secret: str, keys: Sequence[str] = ()) -> Json:
    """A volume source with Secret `secret`'s files: `keys` only, each under its own name
    (none: every key)."""
    source: Json = {"secretName": secret, "defaultMode": SECRET_FILE_MODE}
    if keys:
        source["items"] = [{"key": key, "path": key} for key in keys]
    return {"secret": source}


def secret_volume(name: str, secret: str, keys: Sequence[str] = ()) -> Json:
    """Volume `name` with Secret `secret`'s files (`secret_source`)."""
    return {"name": name, **secret_source(secret, keys)}


def envoy_volumes(layout: KubernetesLayout, identity: str) -> list[Json]:
    """The Envoy config and the TLS Secret of `identity`, and the private admin directory."""
    return [
        {"name": "envoy-config", "configMap": {"name": layout.config_map(identity)}},
        secret_volume("tls", layout.tls_secret(identity)),
        {"name": "envoy-admin", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
    ]


def envoy_mounts(layout: KubernetesLayout) -> list[Json]:
    return [
        mount("envoy-config", layout.config_dir, read_only=True),
        mount("tls", layout.tls_dir, read_only=True),
        # Admin is a Unix socket here: no other container of the pod mounts this volume, so
        # only Envoy itself (and `kubectl exec` into its container) reaches it.
        mount("envoy-admin", layout.admin_dir),
    ]


def envoy_container_args(layout: KubernetesLayout) -> list[str]:
    return envoy_args(layout.config_path(), concurrency=ENVOY_CONCURRENCY)


def port(name: str, number: int) -> Json:
    return {"name": name, "containerPort": number, "protocol": "TCP"}


def sidecar(layout: KubernetesLayout, pod: Pod) -> Json:
    """The Envoy sidecar, as a native sidecar (an init container that keeps running): it is
    started, and listening, before the app, and stopped only after the app has exited, so the
    app can reach its upstreams from its first to its last request."""
    return {
        "name": "envoy",
        "image": ENVOY_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "command": ["/usr/local/bin/envoy"],
        "args": envoy_container_args(layout),
        "ports": [
            port("mesh", layout.inbound_port),
            port("health", layout.health_port),
            port(METRICS_PORT, layout.metrics_port),
        ],
        # The app starts once the listeners are bound.
        "startupProbe": {
            "tcpSocket": {"port": layout.health_port},
            "periodSeconds": 1,
            "failureThreshold": 60,
        },
        "resources": resources("50m", "64Mi", "1", "128Mi"),
        "securityContext": container_security(),
        "volumeMounts": [mount("sockets", layout.socket_dir), *envoy_mounts(layout)],
    }


def grpc_probe(port_number: int, service: str, period: int, failures: int) -> Json:
    return {
        "grpc": {"port": port_number, "service": service},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def app_container(topology: Topology, layout: KubernetesLayout, pod: Pod, storage: Storage) -> Json:
    """The service process: listens on the app socket, calls upstreams through the egress
    socket, keeps its data as `storage` says. Probed through the sidecar's health port,
    which asks the app's own grpc.health.v1 for the service by name."""
    service = topology.services[pod.service]
    environment = pod_environment(topology, layout, pod, storage.settings)
    data = [mount("data", layout.data_dir)] if storage.data is not None else []
    health = layout.health_port
    return {
        "name": APP_CONTAINER,
        "image": APP_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "args": [app_module(pod.service)],
        "env": [
            *(env_variable(name, value) for name, value in environment.items()),
            *storage.secret_env,
        ],
        "startupProbe": grpc_probe(health, service.grpc_service, period=2, failures=30),
        "readinessProbe": grpc_probe(health, service.grpc_service, period=5, failures=2),
        "livenessProbe": grpc_probe(health, service.grpc_service, period=10, failures=3),
        "resources": resources("50m", "96Mi", "1", "256Mi"),
        "securityContext": container_security(),
        "volumeMounts": [
            mount("sockets", layout.socket_dir),
            *data,
            # SQLite's temporary files; the root filesystem is read-only.
            mount("tmp", Path("/tmp")),
            *signing_mounts(topology, layout, pod.service),
            *(mount(v.volume["name"], v.path, read_only=True) for v in storage.read_only),
        ],
    }


def env_variable(name: str, value: str) -> Json:
    """One variable of the app's environment. Its replica name is the pod's own: never shared
    by two, the same when the pod's container restarts; a pod that replaces another is a new
    replica (the old one's sagas are taken over once their leases lapse)."""
    if name == REPLICA:
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    return {"name": name, "value": value}


def signing_volumes(topology: Topology, layout: KubernetesLayout, service: str) -> list[Json]:
    """The sign-in issuer's signing keys: a Secret (`shopmesh k8s issue-keys` writes its files)
    that the app only reads."""
    if service != topology.gateway.sign_in.issuer:
        return []
    return [secret_volume("signing-keys", layout.signing_keys_secret)]


def signing_mounts(topology: Topology, layout: KubernetesLayout, service: str) -> list[Json]:
    if service != topology.gateway.sign_in.issuer:
        return []
    return [mount("signing-keys", layout.signing_keys(), read_only=True)]


def service_deployment(
    topology: Topology, layout: KubernetesLayout, pod: Pod, storage: Storage
) -> Json:
    name = pod.service
    data = [] if storage.data is None else [{"name": "data", **storage.data}]
    # The old pod lets go of a ReadWriteOnce volume before the new one opens it; without one,
    # a new pod is ready before an old one stops.
    strategy: Json = (
        {"type": "Recreate"}
        if storage.claims_a_volume
        else {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(name, topology.namespace, "service"),
        "spec": {
            "replicas": storage.replicas,
            "strategy": strategy,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": {NAME_LABEL: name}},
            "template": {
                "metadata": {"labels": labels(name, "service")},
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": pod_security(),
                    "initContainers": [sidecar(layout, pod)],
                    "containers": [app_container(topology, layout, pod, storage)],
                    "volumes": [
                        {"name": "sockets", "emptyDir": {"sizeLimit": "1Mi"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                        *data,
                        *envoy_volumes(layout, name),
                        *signing_volumes(topology, layout, name),
                        *(v.volume for v in storage.read_only),
                    ],
                },
            },
        },
    }


def service_account(name: str, namespace: str) -> Json:
    """The pod's identity; its name is the `sa/<name>` in the SPIFFE ID."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(name, namespace, component_of(name)),
        "automountServiceAccountToken": False,
    }


def headless_service(topology: Topology, layout: KubernetesLayout, pod: Pod) -> Json:
    """DNS for the callers' STRICT_DNS clusters: one A record per ready pod, so each caller's
    Envoy balances requests over pods (a ClusterIP would pin each HTTP/2 connection to one).
    Only the sidecar's mTLS port is published; the app has no TCP port at all."""
    number = layout.inbound_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(pod.service, topology.namespace, "service"),
        "spec": {
            "clusterIP": "None",
            "selector": {NAME_LABEL: pod.service},
            "ports": [{"name": "mesh", "port": number, "targetPort": number, "protocol": "TCP"}],
        },
    }


def data_claim(layout: KubernetesLayout, service: str) -> Json:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(layout.data_claim(service), layout.topology.namespace, "service"),
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


def disruption_budget(name: str, namespace: str) -> Json:
    """At most one pod down by eviction at a time. For a single replica that still lets a node
    drain (minAvailable: 1 would block it forever); the outage is a restart, which callers ride
    out with retries and orders' saga recovery."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(name, namespace, component_of(name)),
        "spec": {
            "maxUnavailable": 1,
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
            "selector": {"matchLabels": {NAME_LABEL: name}},
        },
    }


def inbound_policy(topology: Topology, service: str, port_number: int) -> Json:
    """Only the callers the topology names may open the sidecar's mTLS port (RBAC then checks
    each call's method); nothing may reach anything else in the pod."""
    callers = list(topology.callers(service))
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(f"{service}-inbound", topology.namespace, "service"),
        "spec": {
            "podSelector": {"matchLabels": {NAME_LABEL: service}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": pick(callers)}],
                    "ports": [{"protocol": "TCP", "port": port_number}],
                }
            ],
        },
    }


def egress_policy(
    namespace: str,
    identity: str,
    upstreams: Sequence[str],
    port_number: int,
    name: str | None = None,
) -> Json:
    """The sidecar may open its upstreams' mTLS ports, and nothing else (DNS: base policy).
    Named `<identity>-egress` unless `name` says otherwise (another policy of the same pods)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(name or f"{identity}-egress", namespace, component_of(identity)),
        "spec": {
            "podSelector": {"matchLabels": {NAME_LABEL: identity}},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [{"podSelector": pick(upstreams)}],
                    "ports": [{"protocol": "TCP", "port": port_number}],
                }
            ],
        },
    }


def service_objects(topology: Topology, layout: KubernetesLayout, pod: Pod) -> list[Json]:
    namespace = topology.namespace
    objects = [
        service_account(pod.service, namespace),
        headless_service(topology, layout, pod),
        data_claim(layout, pod.service),
        service_deployment(topology, layout, pod, sqlite_storage(layout, pod.service)),
        disruption_budget(pod.service, namespace),
        inbound_policy(topology, pod.service, layout.inbound_port),
    ]
    upstreams = list(topology.services[pod.service].calls)
    if upstreams:
        objects.append(egress_policy(namespace, pod.service, upstreams, layout.inbound_port))
    return objects
