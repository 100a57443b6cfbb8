"""The offline Kubernetes checks' machinery: kustomize (the real kubectl's) and helpers to look
into what it renders."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from shopmesh.k8s.collector import COMPONENT
from shopmesh.k8s.objects import ENVOY_IMAGE
from shopmesh.k8s.postgres import DATABASE
from tests.support.paths import ROOT

K8S = ROOT / "k8s"
OVERLAYS = ("kind", "production", "kind-observability")
"""Every overlay; kind-observability is kind with the observability component, so every check
of the mesh's objects also holds with the component applied."""
ON_POSTGRES = ("production",)
"""The overlays with the postgres component: each service on a Postgres of its own. The
others keep each service's SQLite file on its volume (k8s/README.md, "State")."""

Json = dict[str, Any]

KUBECTL_MISSING = (
    "kubectl not found on PATH: the Kubernetes manifests are checked with its built-in "
    "kustomize. Install kubectl 1.32 or newer (https://kubernetes.io/docs/tasks/tools/; "
    "Debian/Ubuntu: the pkgs.k8s.io apt repository, or a release binary in /usr/local/bin)."
)


def kubectl() -> str:
    """The kubectl binary; a test that needs it fails, with how to install it, if missing."""
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(KUBECTL_MISSING, pytrace=False)
    return found


def kustomize(directory: Path) -> list[Json]:
    """`kubectl kustomize directory`, parsed."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


@dataclass(frozen=True)
class Rendered:
    """One overlay's objects, as `kubectl apply -k` would send them."""

    overlay: str
    objects: list[Json]

    def of_kind(self, kind: str) -> list[Json]:
        return [o for o in self.objects if o["kind"] == kind]

    def named(self, kind: str, name: str) -> Json:
        matches = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(matches) == 1, f"{self.overlay}: expected one {kind} {name}, got {len(matches)}"
        return matches[0]

    @property
    def on_postgres(self) -> bool:
        return self.overlay in ON_POSTGRES

    def workloads(self) -> list[Json]:
        """The mesh's workloads: the services and the gateway (not the collector, nor the
        databases)."""
        return [
            o
            for o in self.objects
            if o["kind"] in ("Deployment", "StatefulSet")
            and not is_observability(o)
            and not is_database(o)
        ]

    def databases(self) -> list[Json]:
        """The database workloads (the postgres component's StatefulSets)."""
        return [o for o in self.objects if o["kind"] == "StatefulSet" and is_database(o)]


def is_observability(obj: Json) -> bool:
    """Whether `obj` is one the observability component adds (the collector and its kin)."""
    component: str | None = obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")
    return component == COMPONENT


def is_database(obj: Json) -> bool:
    """Whether `obj` is one of the postgres component's database objects."""
    component: str | None = obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")
    return component == DATABASE


def pod_spec(workload: Json) -> Json:
    spec: Json = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Json) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: Json, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels / matchExpressions with In or NotIn) matches
    `labels`; NotIn also matches a pod without the key, as Kubernetes has it."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] in ("In", "NotIn"), expression
        found = labels.get(expression["key"]) in expression["values"]
        if found != (expression["operator"] == "In"):
            return False
    return True


def all_containers(workload: Json) -> Iterator[Json]:
    """Init containers (the native sidecar among them) and containers."""
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def is_envoy(container: Json) -> bool:
    image: str = container["image"]
    return image == ENVOY_IMAGE


def is_sidecar(container: Json) -> bool:
    """A native sidecar: an init container that keeps running beside the app."""
    return is_envoy(container) and container.get("restartPolicy") == "Always"


def name_of(obj: Json) -> str:
    name: str = obj["metadata"]["name"]
    return name


def app_of(workload: Json) -> Json:
    """The service's own container (not Envoy)."""
    apps: list[Json] = [c for c in pod_spec(workload)["containers"] if not is_envoy(c)]
    assert len(apps) == 1, f"{name_of(workload)}: expected one app container"
    return apps[0]


def env_of(container: Json) -> dict[str, str]:
    """The container's variables with a literal value (not those from the downward API)."""
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def policies_for(overlay: Rendered, workload: Json, policy_type: str) -> list[Json]:
    """The NetworkPolicies of `policy_type` (Ingress, Egress) that select `workload`'s pods."""
    return [
        p
        for p in overlay.of_kind("NetworkPolicy")
        if policy_type in p["spec"]["policyTypes"]
        and selects(p["spec"]["podSelector"], pod_labels(workload))
    ]
