"""Prometheus and the mesh on Kubernetes: every Envoy (sidecars and gateway) serves
`/stats/prometheus` on its metrics port; the observability component annotates the pods for
annotation-based discovery, admits the scraper to that port, and ships a scrape config for a
Prometheus without the operator's ServiceMonitor (kubernetes_sd_configs on pods)."""

from __future__ import annotations

from shopmesh.envoy.builders import PROMETHEUS_PATH
from shopmesh.k8s.collector import COMPONENT
from shopmesh.k8s.layout import KubernetesLayout
from shopmesh.k8s.objects import NAME_LABEL, Json, metadata, pick
from shopmesh.topology import Topology

PROMETHEUS_NAMESPACE = "monitoring"
PROMETHEUS_POD_LABELS = {NAME_LABEL: "prometheus"}
"""Where the scraper runs: the labels the Prometheus Operator (and kube-prometheus-stack) give
Prometheus pods, in the namespace most installations use. Patch the `envoy-metrics-scrape`
policy for another."""
SCRAPE_JOB = "shopmesh-envoy"
POD_IP = "__meta_kubernetes_pod_ip"
ADDRESS_REWRITES = (
    (r"(\d+);(\d+\.\d+\.\d+\.\d+)", "$2:$1"),
    (r"(\d+);(.*:.*)", "[$2]:$1"),
)
"""(annotated port;pod IP) -> the address to scrape, for IPv4 and for IPv6 pod IPs."""


def scrape_annotations(layout: KubernetesLayout) -> dict[str, str]:
    """The annotations a pod-discovery scrape config looks for (`scrape_config` below)."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(layout.metrics_port),
        "prometheus.io/path": PROMETHEUS_PATH,
    }


def scrape_policy(topology: Topology, layout: KubernetesLayout) -> Json:
    """Prometheus may open every Envoy's metrics port, and nothing else (the namespace denies
    all ingress by default)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata("envoy-metrics-scrape", topology.namespace, COMPONENT),
        "spec": {
            "podSelector": pick(topology.identities),
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": PROMETHEUS_NAMESPACE}
                            },
                            "podSelector": {"matchLabels": dict(PROMETHEUS_POD_LABELS)},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": layout.metrics_port}],
                }
            ],
        },
    }


def discovered(kind: str, name: str) -> str:
    """The label Prometheus's pod discovery makes of a pod's annotation or label `name`
    (`prometheus.io/port` -> `__meta_kubernetes_pod_annotation_prometheus_io_port`)."""
    sanitized = "".join(c if c.isalnum() else "_" for c in name)
    return f"__meta_kubernetes_pod_{kind}_{sanitized}"


def annotation(name: str) -> str:
    return discovered("annotation", name)


def scrape_config(topology: Topology) -> Json:
    """A Prometheus configuration (scrape_configs only) that finds the annotated pods of the
    mesh's namespace and scrapes each one's Envoy metrics port at the annotated path."""
    return {
        "scrape_configs": [
            {
                "job_name": SCRAPE_JOB,
                "kubernetes_sd_configs": [
                    {"role": "pod", "namespaces": {"names": [topology.namespace]}}
                ],
                "relabel_configs": [
                    {
                        "source_labels": [annotation("prometheus.io/scrape")],
                        "action": "keep",
                        "regex": "true",
                    },
                    {
                        "source_labels": ["__meta_kubernetes_pod_phase"],
                        "action": "keep",
                        "regex": "Running",
                    },
                    {
                        "source_labels": [annotation("prometheus.io/path")],
                        "action": "replace",
                        "regex": "(.+)",
                        "target_label": "__metrics_path__",
                    },
                    # Discovery yields a target per container port (and per container without
                    # any; older Prometheus versions skip init containers, such as the native
                    # sidecar): each becomes the pod's IP and annotated port, and Prometheus
                    # scrapes identical targets once.
                    *(
                        {
                            "source_labels": [annotation("prometheus.io/port"), POD_IP],
                            "action": "replace",
                            "regex": regex,
                            "replacement": replacement,
                            "target_label": "__address__",
                        }
                        for regex, replacement in ADDRESS_REWRITES
                    ),
                    {
                        "source_labels": [discovered("label", NAME_LABEL)],
                        "target_label": "service",
                    },
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                ],
            }
        ]
    }
