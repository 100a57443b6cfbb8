"""The Kubernetes objects of the edge gateway: ServiceAccount, Service, Deployment (Envoy, its
reflection service from the service image on a Unix socket in an emptyDir they share, and init
containers that bring the contracts' descriptor set and the storefront's files from the service
image), PDB and NetworkPolicies."""

from __future__ import annotations

from shopmesh.envoy.browser import STOREFRONT_FILES
from shopmesh.k8s.layout import KubernetesLayout
from shopmesh.k8s.objects import (
    APP_IMAGE,
    ENVOY_IMAGE,
    GATEWAY_REPLICAS,
    METRICS_PORT,
    NAME_LABEL,
    Json,
    container_security,
    disruption_budget,
    egress_policy,
    envoy_container_args,
    envoy_mounts,
    envoy_volumes,
    labels,
    metadata,
    mount,
    pod_security,
    port,
    resources,
    service_account,
)
from shopmesh.reflection.api import reflection_args
from shopmesh.topology import GATEWAY, Topology


def descriptors_init(layout: KubernetesLayout) -> Json:
    """The JSON transcoder's descriptor set comes from the service image, so it always matches
    the contracts the services were built from."""
    return {
        "name": "descriptors",
        "image": APP_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["cp"],
        "args": [str(layout.descriptor_in_image), str(layout.descriptor)],
        "resources": resources("10m", "16Mi", "100m", "32Mi"),
        "securityContext": container_security(),
        "volumeMounts": [mount("descriptors", layout.descriptor.parent)],
    }


def reflection_container(topology: Topology, layout: KubernetesLayout) -> Json:
    """The reflection service of `gateway.exposes` (shopmesh.reflection), from the descriptor
    set in its own image; its only way in is the socket the gateway's Envoy connects to. No
    probe: the kubelet's gRPC probe needs a TCP port, and it has none; when it exits, the
    kubelet starts it again, and reflection answers UNAVAILABLE meanwhile."""
    return {
        "name": "reflection",
        "image": APP_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "args": reflection_args(topology, layout.reflection_socket(), layout.descriptor_in_image),
        "resources": resources("10m", "64Mi", "500m", "128Mi"),
        "securityContext": container_security(),
        "volumeMounts": [mount("sockets", layout.socket_dir)],
    }


def storefront_init(layout: KubernetesLayout) -> Json:
    """The storefront is build output (web/dist): the Dockerfile builds it into the service
    image, so it always matches the contracts the services were built from, and the manifests
    (and their offline checks) need no build."""
    return {
        "name": "storefront",
        "image": APP_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["cp"],
        "args": [
            *(str(layout.storefront_in_image / file) for file, _ in STOREFRONT_FILES.values()),
            str(layout.storefront()),
        ],
        "resources": resources("10m", "16Mi", "100m", "32Mi"),
        "securityContext": container_security(),
        "volumeMounts": [mount("storefront", layout.storefront())],
    }


def gateway_container(layout: KubernetesLayout) -> Json:
    health = layout.health_port
    return {
        "name": "envoy",
        "image": ENVOY_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/usr/local/bin/envoy"],
        "args": envoy_container_args(layout),
        "ports": [
            port("http", layout.gateway_port),
            port("health", health),
            port(METRICS_PORT, layout.metrics_port),
        ],
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": health},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "tcpSocket": {"port": health},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        # Endpoints drop the pod while it still serves, before SIGTERM.
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        "resources": resources("100m", "128Mi", "2", "256Mi"),
        "securityContext": container_security(),
        "volumeMounts": [
            *envoy_mounts(layout),
            # The reflection service's socket.
            mount("sockets", layout.socket_dir),
            mount("descriptors", layout.descriptor.parent, read_only=True),
            mount("storefront", layout.storefront(), read_only=True),
            # The JWKS the gateway verifies access tokens with (`shopmesh k8s issue-keys`).
            mount("jwks", layout.jwks().parent, read_only=True),
        ],
    }


def gateway_deployment(topology: Topology, layout: KubernetesLayout) -> Json:
    reflection = topology.gateway.reflection
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(GATEWAY, topology.namespace, "gateway"),
        "spec": {
            "replicas": GATEWAY_REPLICAS,
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": {NAME_LABEL: GATEWAY}},
            "template": {
                "metadata": {"labels": labels(GATEWAY, "gateway")},
                "spec": {
                    "serviceAccountName": GATEWAY,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": pod_security(),
                    "initContainers": [descriptors_init(layout), storefront_init(layout)],
                    "containers": [
                        gateway_container(layout),
                        *([reflection_container(topology, layout)] if reflection else []),
                    ],
                    "volumes": [
                        {"name": "sockets", "emptyDir": {"sizeLimit": "1Mi"}},
                        {"name": "descriptors", "emptyDir": {"sizeLimit": "16Mi"}},
                        {"name": "storefront", "emptyDir": {"sizeLimit": "16Mi"}},
                        {"name": "jwks", "configMap": {"name": layout.jwks_config_map}},
                        *envoy_volumes(layout, GATEWAY),
                    ],
                },
            },
        },
    }


def gateway_objects(topology: Topology, layout: KubernetesLayout) -> list[Json]:
    namespace = topology.namespace
    listener = layout.gateway_port
    return [
        service_account(GATEWAY, namespace),
        {
            # ClusterIP here; the kind overlay makes it a NodePort, production a LoadBalancer.
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(GATEWAY, namespace, "gateway"),
            "spec": {
                "selector": {NAME_LABEL: GATEWAY},
                "ports": [
                    {"name": "http", "port": listener, "targetPort": listener, "protocol": "TCP"}
                ],
            },
        },
        gateway_deployment(topology, layout),
        disruption_budget(GATEWAY, namespace),
        {
            # The public entrance: anyone may reach the gateway's listener.
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": metadata(f"{GATEWAY}-ingress", namespace, "gateway"),
            "spec": {
                "podSelector": {"matchLabels": {NAME_LABEL: GATEWAY}},
                "policyTypes": ["Ingress"],
                "ingress": [{"ports": [{"protocol": "TCP", "port": listener}]}],
            },
        },
        egress_policy(namespace, GATEWAY, list(topology.gateway.exposes), layout.inbound_port),
    ]
