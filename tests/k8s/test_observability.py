"""The observability component (k8s/components/observability/), checked offline: its files are
what `shopmesh k8s render` writes; added to an overlay (k8s/overlays/kind-observability) it
builds, points every Envoy's tracer and every app's exporter at the collector Service, opens
exactly the collector's OTLP port to the mesh's pods and the Envoys' metrics port to
Prometheus, and changes nothing else; the collector is pinned and bounded; the scrape config
finds every Envoy with Prometheus's own relabeling (promtool).

The mesh-wide checks of tests/k8s/test_manifests.py and test_envoy_configs.py (schemas, Envoy
validation with the container's arguments, security context, policies) run on the
kind-observability overlay as on every other."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shopmesh.appenv import tracing_environment
from shopmesh.envoy.edge import INGRESS
from shopmesh.envoy.sidecar import sidecar_name
from shopmesh.envoy.tracing import COLLECTOR as COLLECTOR_CLUSTER
from shopmesh.k8s.collector import (
    COLLECTOR,
    COLLECTOR_IMAGE,
    CONFIG_FILE,
    MAX_TRACES,
    MEMORY_LIMIT_MIB,
    OTLP_GRPC_PORT,
    UI_PORT,
    collector_endpoint,
)
from shopmesh.k8s.layout import KubernetesLayout
from shopmesh.k8s.manifests import config_map_source, stale_files
from shopmesh.k8s.objects import APP_CONTAINER, METRICS_PORT
from shopmesh.k8s.observability import (
    COMPONENT_DIR,
    KUBERNETES_SAMPLING,
    POD_NAME,
    SCRAPE_CONFIG,
    app_tracing,
    render_component,
)
from shopmesh.k8s.prometheus import (
    PROMETHEUS_NAMESPACE,
    PROMETHEUS_POD_LABELS,
    SCRAPE_JOB,
    scrape_annotations,
)
from shopmesh.topology import GATEWAY
from tests.support.cli import shopmesh
from tests.support.k8s import (
    K8S,
    Json,
    Rendered,
    all_containers,
    is_envoy,
    is_observability,
    kustomize,
    pod_labels,
    pod_spec,
    selects,
)
from tests.support.paths import ROOT, TOPOLOGY

LAYOUT = KubernetesLayout(TOPOLOGY)
COMPONENT = K8S / COMPONENT_DIR
WITH = "kind-observability"
WITHOUT = "kind"
COMPONENT_POLICIES = {"otel-export", "otel-collector-ingress", "envoy-metrics-scrape"}
PROMTOOL_MISSING = (
    "promtool not found on PATH: the Prometheus scrape config is checked with Prometheus's own "
    "relabeling. Install Debian's `prometheus` package (`apt-get install prometheus`; "
    "`make system-deps` does), or Prometheus from https://prometheus.io/download/"
)


def name_of(obj: Json) -> str:
    name: str = obj["metadata"]["name"]
    return name


def envoy_config(overlay: Rendered, workload: Json) -> Json:
    """The config the workload's Envoy runs: its ConfigMap's key mounted as envoy.yaml."""
    volume = {v["name"]: v for v in pod_spec(workload)["volumes"]}["envoy-config"]["configMap"]
    mounted = {item["path"]: item["key"] for item in volume.get("items", [])}
    key = mounted.get(LAYOUT.config_file, LAYOUT.config_file)
    config: Json = yaml.safe_load(overlay.named("ConfigMap", volume["name"])["data"][key])
    return config


def tracers(node: Any) -> Iterator[Json]:
    """Every HTTP connection manager's `tracing` block in a config (route-level overrides,
    which only turn sampling off, have no provider)."""
    if isinstance(node, dict):
        if "provider" in node and "random_sampling" in node:
            yield node
        for value in node.values():
            yield from tracers(value)
    elif isinstance(node, list):
        for value in node:
            yield from tracers(value)


def cluster(config: Json, name: str) -> Json:
    found: list[Json] = [c for c in config["static_resources"]["clusters"] if c["name"] == name]
    assert len(found) == 1, name
    return found[0]


def app_container(workload: Json) -> Json:
    apps: list[Json] = [c for c in pod_spec(workload)["containers"] if c["name"] == APP_CONTAINER]
    assert len(apps) == 1, name_of(workload)
    return apps[0]


def services(overlay: Rendered) -> list[Json]:
    return [w for w in overlay.workloads() if name_of(w) != GATEWAY]


def the_collector(overlay: Rendered) -> Json:
    return overlay.named("Deployment", COLLECTOR)


# --- the files and the build ----------------------------------------------------------------


def test_the_component_files_are_what_the_renderer_writes_now() -> None:
    stale = stale_files(render_component(TOPOLOGY, LAYOUT), COMPONENT)
    assert not stale, (
        f"out of date in {COMPONENT.relative_to(ROOT)}: {stale}; "
        "run `.venv/bin/shopmesh k8s render` and commit the result"
    )


def test_the_overlay_is_the_kind_overlay_with_the_component() -> None:
    kustomization = yaml.safe_load((K8S / "overlays" / WITH / "kustomization.yaml").read_text())
    assert kustomization["resources"] == [f"../{WITHOUT}"]
    assert kustomization["components"] == [f"../../{COMPONENT_DIR}"]
    component = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"


def test_the_component_also_composes_with_the_production_overlay(tmp_path: Path) -> None:
    # kustomize refuses absolute paths, so the temporary overlay names the repository relatively.
    repository = Path(os.path.relpath(K8S, tmp_path))
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(repository / "overlays" / "production")],
                "components": [str(repository / COMPONENT_DIR)],
            }
        )
    )
    production = Rendered("production-observability", kustomize(tmp_path))
    assert the_collector(production)
    for workload in services(production):
        env = {e["name"] for e in app_container(workload)["env"]}
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" in env, name_of(workload)
    # The gateway keeps production's edge TLS, and traces.
    gateway = envoy_config(production, production.named("Deployment", GATEWAY))
    listeners = gateway["static_resources"]["listeners"]
    (ingress,) = [listener for listener in listeners if listener["name"] == INGRESS]
    assert "transport_socket" in ingress["filter_chains"][0]
    assert list(tracers(ingress))


def test_without_the_component_nothing_traces(rendered: dict[str, Rendered]) -> None:
    overlay = rendered[WITHOUT]
    assert not [o for o in overlay.objects if is_observability(o)]
    for workload in overlay.workloads():
        config = envoy_config(overlay, workload)
        assert not list(tracers(config)), name_of(workload)
        assert COLLECTOR_CLUSTER not in {c["name"] for c in config["static_resources"]["clusters"]}
    for workload in services(overlay):
        assert not [e for e in app_container(workload)["env"] if e["name"].startswith("OTEL_")]


# --- tracing --------------------------------------------------------------------------------


def test_every_envoy_traces_to_the_collector_service(rendered: dict[str, Rendered]) -> None:
    overlay = rendered[WITH]
    endpoint = collector_endpoint(LAYOUT)
    assert endpoint.host == f"{COLLECTOR}.{TOPOLOGY.namespace}.svc.{LAYOUT.cluster_domain}"
    for workload in overlay.workloads():
        name = name_of(workload)
        config = envoy_config(overlay, workload)
        found = list(tracers(config))
        assert found, f"{name}: no tracer"
        for tracing in found:
            provider = tracing["provider"]["typed_config"]
            assert provider["grpc_service"]["envoy_grpc"]["cluster_name"] == COLLECTOR_CLUSTER
            assert provider["service_name"] == (name if name == GATEWAY else sidecar_name(name))
        export = cluster(config, COLLECTOR_CLUSTER)
        assert export["type"] == "STRICT_DNS", name
        [address] = [
            e["endpoint"]["address"]["socket_address"]
            for group in export["load_assignment"]["endpoints"]
            for e in group["lb_endpoints"]
        ]
        assert (address["address"], address["port_value"]) == (endpoint.host, endpoint.port)


def test_only_the_gateway_starts_traces_at_the_kubernetes_rate(
    rendered: dict[str, Rendered],
) -> None:
    overlay = rendered[WITH]
    for workload in overlay.workloads():
        name = name_of(workload)
        expected = KUBERNETES_SAMPLING * 100 if name == GATEWAY else 0
        for tracing in tracers(envoy_config(overlay, workload)):
            assert tracing["random_sampling"]["value"] == pytest.approx(expected), name


def test_the_collector_service_is_the_address_the_mesh_sends_to(
    rendered: dict[str, Rendered],
) -> None:
    overlay = rendered[WITH]
    service = overlay.named("Service", COLLECTOR)
    ports = {p["port"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {OTLP_GRPC_PORT, UI_PORT}
    collector = the_collector(overlay)
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(collector))
    [container] = pod_spec(collector)["containers"]
    declared = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert declared[ports[OTLP_GRPC_PORT]["targetPort"]] == OTLP_GRPC_PORT
    receiver = collector_config_of(overlay)["receivers"]["otlp"]["protocols"]
    assert set(receiver) == {"grpc"}
    assert receiver["grpc"]["endpoint"] == f"0.0.0.0:{OTLP_GRPC_PORT}"


def test_every_app_container_gets_the_otel_variables(rendered: dict[str, Rendered]) -> None:
    overlay = rendered[WITH]
    for workload in services(overlay):
        name = name_of(workload)
        env = {e["name"]: e.get("value") for e in app_container(workload)["env"]}
        expected = tracing_environment(
            app_tracing(LAYOUT, KUBERNETES_SAMPLING), name, f"$({POD_NAME})"
        )
        assert {k: env.get(k) for k in expected} == expected, name
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{collector_endpoint(LAYOUT)}"
        assert env["OTEL_SERVICE_NAME"] == name
        envoy = next(c for c in all_containers(workload) if is_envoy(c))
        assert not envoy.get("env"), f"{name}: the sidecar reads its config, not variables"


def test_the_pod_name_is_defined_before_the_resource_attributes_use_it(
    rendered: dict[str, Rendered],
) -> None:
    for workload in services(rendered[WITH]):
        names = [e["name"] for e in app_container(workload)["env"]]
        [pod_name] = [e for e in app_container(workload)["env"] if e["name"] == POD_NAME]
        assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        # Kubernetes expands $(VAR) only from variables defined earlier in the list.
        assert names.index(POD_NAME) < names.index("OTEL_RESOURCE_ATTRIBUTES"), names


def test_the_sampling_option_changes_the_gateway_and_the_apps(tmp_path: Path) -> None:
    result = shopmesh("k8s", "render", "--out", str(tmp_path), "--sampling", "0.25")
    assert result.returncode == 0, result.stderr
    component = tmp_path / COMPONENT_DIR
    gateway = yaml.safe_load((component / f"{LAYOUT.config_map(GATEWAY)}.yaml").read_text())
    assert [t["random_sampling"]["value"] for t in tracers(gateway)] == [25]
    users = yaml.safe_load((component / f"{LAYOUT.config_map('users')}.yaml").read_text())
    assert {t["random_sampling"]["value"] for t in tracers(users)} == {0}
    patch = yaml.safe_load((component / "patch-orders.yaml").read_text())
    [app] = patch["spec"]["template"]["spec"]["containers"]
    assert {"name": "OTEL_TRACES_SAMPLER_ARG", "value": "0.25"} in app["env"]
    # The committed files are the default's: a check against them reports the difference.
    check = shopmesh("k8s", "render", "--sampling", "0.25", "--check")
    assert check.returncode == 1
    assert "envoy-gateway.yaml" in check.stderr


# --- the collector --------------------------------------------------------------------------


def collector_config_of(overlay: Rendered) -> Json:
    volumes = {v["name"]: v for v in pod_spec(the_collector(overlay))["volumes"]}
    config_map = overlay.named("ConfigMap", volumes["config"]["configMap"]["name"])
    config: Json = yaml.safe_load(config_map["data"][CONFIG_FILE])
    return config


def mebibytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
    assert match, quantity
    return int(match[1]) * (1024 if match[2] == "Gi" else 1)


def test_the_collector_is_bounded_in_memory_and_traces(rendered: dict[str, Rendered]) -> None:
    overlay = rendered[WITH]
    [container] = pod_spec(the_collector(overlay))["containers"]
    limit = mebibytes(container["resources"]["limits"]["memory"])
    assert limit == MEMORY_LIMIT_MIB
    config = collector_config_of(overlay)
    limiter = config["processors"]["memory_limiter"]
    assert limiter["limit_mib"] + limiter["spike_limit_mib"] <= limit
    assert config["service"]["pipelines"]["traces"]["processors"][0] == "memory_limiter"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert mebibytes(env["GOMEMLIMIT"].replace("MiB", "Mi")) < limit
    [store] = config["extensions"]["jaeger_storage"]["backends"].values()
    assert store == {"memory": {"max_traces": MAX_TRACES}}
    assert the_collector(overlay)["spec"]["replicas"] == 1


def test_the_collector_is_probed_on_its_health_endpoint(rendered: dict[str, Rendered]) -> None:
    overlay = rendered[WITH]
    [container] = pod_spec(the_collector(overlay))["containers"]
    health = collector_config_of(overlay)["extensions"]["healthcheckv2"]
    assert health["use_v2"] is True
    port = int(health["http"]["endpoint"].rpartition(":")[2])
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/status", "port": port}, probe
    assert (
        f"--config={Path(container['volumeMounts'][0]['mountPath']) / CONFIG_FILE}"
        in (container["args"])
    )


def test_every_image_is_pinned(overlay: Rendered) -> None:
    for workload in overlay.of_kind("Deployment"):
        for container in all_containers(workload):
            image: str = container["image"]
            reference = image.split("@")[0]
            tag = reference.rpartition("/")[2].partition(":")[2]
            where = f"{name_of(workload)}/{container['name']}: {image}"
            assert tag, where
            assert tag != "latest", where
    # Pinned by digest as well: the collector's is the one its publisher pins it with.
    assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+@sha256:[0-9a-f]{64}", COLLECTOR_IMAGE)


# --- network policies -----------------------------------------------------------------------


def policies(overlay: Rendered) -> dict[str, Json]:
    return {name_of(p): p for p in overlay.of_kind("NetworkPolicy")}


def test_the_component_adds_exactly_its_policies_and_keeps_the_bases(
    rendered: dict[str, Rendered],
) -> None:
    with_component, without = policies(rendered[WITH]), policies(rendered[WITHOUT])
    assert set(with_component) - set(without) == COMPONENT_POLICIES
    assert set(without) <= set(with_component)
    for name, policy in without.items():
        assert with_component[name] == policy, name


def rules(policy: Json, direction: str) -> list[Json]:
    found: list[Json] = policy["spec"].get(direction, [])
    return found


def test_mesh_pods_may_reach_the_collector_only_on_its_otlp_port(
    rendered: dict[str, Rendered],
) -> None:
    overlay = rendered[WITH]
    export = policies(overlay)["otel-export"]
    assert export["spec"]["policyTypes"] == ["Egress"]
    selected = {
        name_of(d)
        for d in overlay.of_kind("Deployment")
        if selects(export["spec"]["podSelector"], pod_labels(d))
    }
    assert selected == set(TOPOLOGY.identities)
    [rule] = rules(export, "egress")
    assert rule["ports"] == [{"protocol": "TCP", "port": OTLP_GRPC_PORT}]
    [peer] = rule["to"]
    # A pod selector alone: only pods of this namespace, no ipBlock, no other namespace.
    assert set(peer) == {"podSelector"}
    reached = {
        name_of(d)
        for d in overlay.of_kind("Deployment")
        if selects(peer["podSelector"], pod_labels(d))
    }
    assert reached == {COLLECTOR}


def test_only_mesh_pods_may_reach_the_collector_and_only_its_otlp_port(
    rendered: dict[str, Rendered],
) -> None:
    overlay = rendered[WITH]
    collector = the_collector(overlay)
    admitting = [
        p
        for p in overlay.of_kind("NetworkPolicy")
        if "Ingress" in p["spec"]["policyTypes"]
        and selects(p["spec"]["podSelector"], pod_labels(collector))
        and rules(p, "ingress")
    ]
    assert [name_of(p) for p in admitting] == ["otel-collector-ingress"]
    [rule] = rules(admitting[0], "ingress")
    assert rule["ports"] == [{"protocol": "TCP", "port": OTLP_GRPC_PORT}]
    [peer] = rule["from"]
    assert set(peer) == {"podSelector"}
    admitted = {
        name_of(d)
        for d in overlay.of_kind("Deployment")
        if selects(peer["podSelector"], pod_labels(d))
    }
    assert admitted == set(TOPOLOGY.identities)
    # The collector itself sends nothing anywhere: no policy gives it egress beyond DNS.
    egress = [
        rule
        for p in overlay.of_kind("NetworkPolicy")
        if selects(p["spec"]["podSelector"], pod_labels(collector))
        for rule in rules(p, "egress")
    ]
    assert all({p["port"] for p in rule["ports"]} == {53} for rule in egress), egress


def test_prometheus_may_reach_only_the_envoys_metrics_port(
    rendered: dict[str, Rendered],
) -> None:
    overlay = rendered[WITH]
    scrape = policies(overlay)["envoy-metrics-scrape"]
    selected = {
        name_of(d)
        for d in overlay.of_kind("Deployment")
        if selects(scrape["spec"]["podSelector"], pod_labels(d))
    }
    assert selected == set(TOPOLOGY.identities)
    [rule] = rules(scrape, "ingress")
    assert rule["ports"] == [{"protocol": "TCP", "port": LAYOUT.metrics_port}]
    assert rule["from"] == [
        {
            "namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": PROMETHEUS_NAMESPACE}
            },
            "podSelector": {"matchLabels": PROMETHEUS_POD_LABELS},
        }
    ]
    for workload in overlay.workloads():
        envoy = next(c for c in all_containers(workload) if is_envoy(c))
        assert {"name": METRICS_PORT, "containerPort": LAYOUT.metrics_port, "protocol": "TCP"} in (
            envoy["ports"]
        )


# --- nothing else changes -------------------------------------------------------------------


def unhashed(name: str) -> str:
    """A generated ConfigMap's name without kustomize's content hash."""
    return re.sub(r"-[a-z0-9]{10}$", "", name)


def identity(obj: Json) -> tuple[str, str]:
    """What an object is across overlays (a ConfigMap's hash changes with its content)."""
    name = name_of(obj)
    return obj["kind"], unhashed(name) if obj["kind"] == "ConfigMap" else name


def hashless(workload: Json) -> Json:
    """`workload` with the ConfigMaps it mounts named without their hashes."""
    copied = copy.deepcopy(workload)
    for volume in pod_spec(copied)["volumes"]:
        if "configMap" in volume:
            volume["configMap"]["name"] = unhashed(volume["configMap"]["name"])
    return copied


def unpatched(workload: Json) -> Json:
    """`workload` as the component found it: its patch (the scrape annotations, the app's
    tracing variables) taken out, and hashless."""
    original = hashless(workload)
    annotations = original["spec"]["template"]["metadata"].pop("annotations")
    assert annotations == scrape_annotations(LAYOUT), name_of(workload)
    if name_of(workload) != GATEWAY:
        app = app_container(original)
        added = {POD_NAME, *tracing_environment(app_tracing(LAYOUT, 0), "", "")}
        app["env"] = [e for e in app["env"] if e["name"] not in added]
    return original


def test_the_component_changes_nothing_else_in_the_mesh(rendered: dict[str, Rendered]) -> None:
    remaining = {identity(o): o for o in rendered[WITH].objects}
    for obj in rendered[WITHOUT].objects:
        counterpart = remaining.pop(identity(obj))
        where = "/".join(identity(obj))
        if obj["kind"] == "Deployment":
            assert unpatched(counterpart) == hashless(obj), where
        elif obj["kind"] == "ConfigMap":
            # Every Envoy's, replaced by the traced configs the component holds (the
            # gateway's with and without edge TLS).
            name = identity(obj)[1]
            assert counterpart["data"] == {
                key: (COMPONENT / config_map_source(LAYOUT, name, key)).read_text()
                for key in obj["data"]
            }, where
            assert counterpart["metadata"]["labels"] == obj["metadata"]["labels"], where
        else:
            assert counterpart == obj, where
    assert all(is_observability(o) for o in remaining.values()), list(remaining)
    assert ("Deployment", COLLECTOR) in remaining


# --- Prometheus -----------------------------------------------------------------------------


def test_every_pod_is_annotated_with_its_envoys_metrics_listener(
    rendered: dict[str, Rendered],
) -> None:
    overlay = rendered[WITH]
    for workload in overlay.workloads():
        name = name_of(workload)
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        port = int(annotations["prometheus.io/port"])
        listeners = {
            listener["address"]["socket_address"]["port_value"]: listener
            for listener in envoy_config(overlay, workload)["static_resources"]["listeners"]
            if "socket_address" in listener["address"]
        }
        routes = json.dumps(listeners[port])
        assert f'"path": "{annotations["prometheus.io/path"]}"' in routes, name


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(PROMTOOL_MISSING, pytrace=False)
    return found


def discovered_targets(workload: Json, ip: str) -> list[Json]:
    """What Prometheus's Kubernetes pod discovery yields for a pod of `workload` (one target
    per container port, or per container without ports; init containers included, as newer
    versions do), as static targets with the same labels."""
    template = workload["spec"]["template"]
    pod: dict[str, str] = {
        "__meta_kubernetes_pod_name": f"{name_of(workload)}-5d8f7c9b4-x2x7q",
        "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_phase": "Running",
    }
    for kind, values in (
        ("label", template["metadata"].get("labels", {})),
        ("annotation", template["metadata"].get("annotations", {})),
    ):
        for key, value in values.items():
            pod[f"__meta_kubernetes_pod_{kind}_{re.sub(r'[^a-zA-Z0-9]', '_', key)}"] = value
    targets = []
    for container in all_containers(workload):
        for port in container.get("ports", [{"containerPort": None}]):
            number = port["containerPort"]
            address = ip if number is None else f"{ip}:{number}"
            targets.append({"targets": [address], "labels": pod})
    return targets


def test_the_scrape_config_finds_every_envoy_and_nothing_else(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    overlay = rendered[WITH]
    config = yaml.safe_load((COMPONENT / SCRAPE_CONFIG).read_text())
    [job] = config["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [
        {"role": "pod", "namespaces": {"names": [TOPOLOGY.namespace]}}
    ]
    # Debian's Prometheus is built without Kubernetes discovery: the same job with the pods
    # the discovery would find as static targets, through Prometheus's own relabeling.
    ips = {name_of(w): f"10.244.0.{i + 10}" for i, w in enumerate(overlay.of_kind("Deployment"))}
    static = {key: value for key, value in job.items() if key != "kubernetes_sd_configs"}
    static["static_configs"] = [
        target
        for workload in overlay.of_kind("Deployment")
        for target in discovered_targets(workload, ips[name_of(workload)])
    ]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump({"scrape_configs": [static]}))
    result = subprocess.run(
        # promtool waits the whole timeout (30 s by default); static targets come at once.
        [promtool(), "check", "service-discovery", "--timeout=3s", str(path), SCRAPE_JOB],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    kept = {
        json.dumps(t["labels"], sort_keys=True): t["labels"]
        for t in json.loads(result.stdout)
        if t["labels"]
    }
    expected = {name_of(w): f"{ips[name_of(w)]}:{LAYOUT.metrics_port}" for w in overlay.workloads()}
    scraped = {labels["service"]: labels["__address__"] for labels in kept.values()}
    assert scraped == expected
    assert len(kept) == len(expected), "one target per pod"
    for labels in kept.values():
        assert labels["__metrics_path__"] == "/stats/prometheus"


def test_the_scrape_config_passes_promtool(tmp_path: Path) -> None:
    # Without Kubernetes discovery in Debian's build (above), the rest of the job is checked.
    job = yaml.safe_load((COMPONENT / SCRAPE_CONFIG).read_text())["scrape_configs"][0]
    job.pop("kubernetes_sd_configs")
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump({"scrape_configs": [job]}))
    result = subprocess.run(
        [promtool(), "check", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
