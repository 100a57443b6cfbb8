"""k8s/components/observability/, rendered from the topology: a kustomize Component that adds
the trace collector (shopmesh.k8s.collector) to a deployment of the mesh and points everything
at it. It replaces every Envoy's ConfigMap with the same config rendered with tracing (the
builders' `Tracing`, exporting to the collector Service); patches every app container with the
standard OTEL_* variables (`appenv.tracing_environment`, the writer the local mesh uses); adds
the NetworkPolicies that let the mesh's pods reach the collector's OTLP port and Prometheus
reach the Envoys' metrics port (shopmesh.k8s.prometheus); and annotates the pods for scraping.

Apps send their spans straight to the collector rather than through their sidecar's egress:
Envoy's own spans leave the pod that way anyway (the tracer's cluster), so the pod needs the
exception to the collector's port in either case, and the sidecar would need a route for it
with tracing off.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml

from shopmesh.appenv import AppTracing, tracing_environment
from shopmesh.envoy.tracing import Tracing
from shopmesh.k8s.collector import (
    COLLECTOR,
    COMPONENT,
    CONFIG_FILE,
    CONFIG_MAP,
    OTLP_GRPC_PORT,
    collector_config,
    collector_endpoint,
    collector_ingress_policy,
    collector_objects,
)
from shopmesh.k8s.layout import KubernetesLayout
from shopmesh.k8s.manifests import HEADER, documents, envoy_config_files, envoy_config_maps
from shopmesh.k8s.objects import (
    APP_CONTAINER,
    NAME_LABEL,
    Json,
    component_of,
    labels,
    metadata,
    pick,
)
from shopmesh.k8s.prometheus import scrape_annotations, scrape_config, scrape_policy
from shopmesh.topology import GATEWAY, Topology

COMPONENT_DIR = Path("components/observability")
"""Where the component's files go, under k8s/."""
KUBERNETES_SAMPLING = 0.1
"""The share of the calls from outside that the gateway traces on Kubernetes, unless
`shopmesh k8s render --sampling` says otherwise."""
POD_NAME = "POD_NAME"
"""The pod's own name (downward API), so each pod's spans carry it as service.instance.id."""
SCRAPE_CONFIG = "prometheus-scrape.yaml"
"""Not a Kubernetes object: the scrape config for a Prometheus (k8s/README.md)."""


def envoy_tracing(layout: KubernetesLayout, sampling: float) -> Tracing:
    return Tracing(collector_endpoint(layout), sampling)


def app_tracing(layout: KubernetesLayout, sampling: float) -> AppTracing:
    return AppTracing(f"http://{collector_endpoint(layout)}", sampling)


def app_environment(layout: KubernetesLayout, service: str, sampling: float) -> list[Json]:
    """The variables an app container gets: its pod's name first, because Kubernetes expands
    `$(POD_NAME)` only from variables defined before it."""
    pod_name = {"name": POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    tracing = tracing_environment(app_tracing(layout, sampling), service, f"$({POD_NAME})")
    return [pod_name, *({"name": name, "value": value} for name, value in tracing.items())]


def workload_patch(
    topology: Topology, layout: KubernetesLayout, identity: str, sampling: float
) -> Json:
    """A strategic-merge patch of one Deployment: scrape annotations on its pods and, for a
    service, the tracing variables of its app container (the gateway is Envoy alone)."""
    template: Json = {"metadata": {"annotations": scrape_annotations(layout)}}
    if identity != GATEWAY:
        environment = app_environment(layout, identity, sampling)
        template["spec"] = {"containers": [{"name": APP_CONTAINER, "env": environment}]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": identity, "namespace": topology.namespace},
        "spec": {"template": template},
    }


def export_policy(topology: Topology) -> Json:
    """The one way out of a mesh pod besides its sidecar's upstreams: the collector's OTLP port.
    App and sidecar share the pod's network namespace, so this admits both exporters."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata("otel-export", topology.namespace, COMPONENT),
        "spec": {
            "podSelector": pick(topology.identities),
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [{"podSelector": {"matchLabels": {NAME_LABEL: COLLECTOR}}}],
                    "ports": [{"protocol": "TCP", "port": OTLP_GRPC_PORT}],
                }
            ],
        },
    }


def patch_file(identity: str) -> str:
    return f"patch-{identity}.yaml"


def kustomization(
    topology: Topology, layout: KubernetesLayout, sources: Mapping[str, list[str]]
) -> Json:
    """The component's kustomization; `sources`: each Envoy's ConfigMap files (`key=file`)."""
    namespace = topology.namespace
    envoy_configs = [
        {
            "name": layout.config_map(identity),
            "namespace": namespace,
            # The base's ConfigMap, same name and labels, new content: kustomize gives it a new
            # hash suffix and renames the references, so the pods roll.
            "behavior": "replace",
            "files": sources[identity],
            "options": {"labels": labels(identity, component_of(identity))},
        }
        for identity in topology.identities
    ]
    return {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "resources": ["collector.yaml", "network-policies.yaml"],
        "configMapGenerator": [
            {
                "name": CONFIG_MAP,
                "namespace": namespace,
                "files": [f"{CONFIG_FILE}={CONFIG_MAP}.yaml"],
                "options": {"labels": labels(COLLECTOR, COMPONENT)},
            },
            *envoy_configs,
        ],
        "patches": [{"path": patch_file(identity)} for identity in topology.identities],
    }


def render_component(
    topology: Topology, layout: KubernetesLayout, sampling: float = KUBERNETES_SAMPLING
) -> dict[str, str]:
    """File name -> content of every file in k8s/components/observability/."""
    maps = envoy_config_maps(topology, layout, envoy_tracing(layout, sampling))
    configs, sources = envoy_config_files(layout, maps)
    files = {
        "kustomization.yaml": HEADER
        + yaml.safe_dump(kustomization(topology, layout, sources), sort_keys=False),
        "collector.yaml": HEADER + documents(collector_objects(topology)),
        f"{CONFIG_MAP}.yaml": HEADER + yaml.safe_dump(collector_config(), sort_keys=False),
        "network-policies.yaml": HEADER
        + documents(
            [
                export_policy(topology),
                collector_ingress_policy(topology),
                scrape_policy(topology, layout),
            ]
        ),
        SCRAPE_CONFIG: HEADER
        + "# Not a Kubernetes object: the job to add to a Prometheus's configuration.\n"
        + yaml.safe_dump(scrape_config(topology), sort_keys=False),
    }
    files.update(configs)
    for identity in topology.identities:
        patch = workload_patch(topology, layout, identity, sampling)
        files[patch_file(identity)] = HEADER + documents([patch])
    return files
