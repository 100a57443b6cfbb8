"""The Kubernetes manifests, checked offline: every overlay renders with `kubectl kustomize`,
every object validates against the Kubernetes schemas, the generated files are what the
renderer writes now, and the mesh's rules hold for every workload (sidecar, probes, limits,
non-root, identity, only sidecar ports reachable, network policies)."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from services.common.config import ENV_PREFIX
from shopmesh.k8s.collector import COLLECTOR
from shopmesh.k8s.layout import KubernetesLayout
from shopmesh.k8s.manifests import (
    EDGE_TLS_CONFIG_FILE,
    GENERATED_DIR,
    render_manifests,
    stale_files,
)
from shopmesh.k8s.objects import ENVOY_IMAGE, GATEWAY_REPLICAS, RUN_AS, STATEFUL_REPLICAS
from shopmesh.k8s.observability import COMPONENT_DIR
from shopmesh.k8s.postgres import COMPONENT_DIR as POSTGRES_DIR
from shopmesh.topology import GATEWAY
from tests.support.cli import shopmesh
from tests.support.k8s import (
    K8S,
    Json,
    Rendered,
    all_containers,
    app_of,
    env_of,
    is_database,
    is_envoy,
    is_observability,
    is_sidecar,
    kustomize,
    name_of,
    pod_labels,
    pod_spec,
    policies_for,
    selects,
)
from tests.support.paths import ROOT, TOPOLOGY

LAYOUT = KubernetesLayout(TOPOLOGY)
GENERATED = K8S / "base" / "generated"
SCHEMA_VERSIONS = ("1.32", "1.33", kubernetes_validate.latest_version())
"""The kubectl on the machine image (1.32), the kind node image (k8s/kind/cluster.yaml: 1.33)
and the newest schema kubernetes-validate ships."""
CLUSTER_SCOPED = {"Namespace"}


def envoy_of(workload: Json) -> Json:
    envoys = [c for c in all_containers(workload) if is_envoy(c)]
    assert len(envoys) == 1, f"{name_of(workload)}: expected one Envoy container"
    return envoys[0]


# --- rendering and schema -------------------------------------------------------------------


def test_the_base_and_every_overlay_render_with_kubectl_kustomize(overlay: Rendered) -> None:
    kinds = {o["kind"] for o in overlay.objects}
    assert {
        "Namespace",
        "ServiceAccount",
        "Service",
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "NetworkPolicy",
    } <= kinds
    # The SQLite files' claims, or the databases' StatefulSets (which claim their own).
    assert ("StatefulSet" if overlay.on_postgres else "PersistentVolumeClaim") in kinds
    assert kustomize(K8S / "base")


def test_every_object_validates_against_the_kubernetes_schemas(overlay: Rendered) -> None:
    failures = []
    for obj in overlay.objects:
        for version in SCHEMA_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                failures.append(f"{obj['kind']}/{name_of(obj)} @ {version}: {error.message}")
    assert not failures, "\n".join(failures)


def test_the_schema_check_is_strict_about_unknown_fields(overlay: Rendered) -> None:
    deployment = copy.deepcopy(overlay.workloads()[0])
    pod_spec(deployment)["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, SCHEMA_VERSIONS[-1], strict=True)


def test_generated_manifests_are_what_the_renderer_writes_now() -> None:
    stale = stale_files(render_manifests(TOPOLOGY, LAYOUT), GENERATED)
    assert not stale, (
        f"out of date in {GENERATED.relative_to(ROOT)}: {stale}; "
        "run `.venv/bin/shopmesh k8s render` and commit the result"
    )


@pytest.mark.parametrize("directory", [GENERATED_DIR, COMPONENT_DIR, POSTGRES_DIR], ids=str)
def test_render_check_command_reports_a_stale_file(tmp_path: Path, directory: Path) -> None:
    render = ["k8s", "render", "--out", str(tmp_path)]
    assert shopmesh(*render).returncode == 0
    assert shopmesh(*render, "--check").returncode == 0
    stale = tmp_path / directory / "envoy-users.yaml"
    stale.write_text("edited by hand\n")
    result = shopmesh(*render, "--check")
    assert result.returncode == 1
    assert str(stale) in result.stderr


def test_every_object_lives_in_the_topology_namespace(overlay: Rendered) -> None:
    namespaces = overlay.of_kind("Namespace")
    assert [name_of(n) for n in namespaces] == [TOPOLOGY.namespace]
    for obj in overlay.objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == TOPOLOGY.namespace, name_of(obj)


# --- workloads ------------------------------------------------------------------------------


def test_there_is_one_workload_per_service_and_the_gateway(overlay: Rendered) -> None:
    assert sorted(name_of(w) for w in overlay.workloads()) == sorted(TOPOLOGY.identities)


def test_every_service_pod_has_the_envoy_sidecar_and_its_app(overlay: Rendered) -> None:
    for workload in overlay.workloads():
        if name_of(workload) == GATEWAY:
            continue
        spec = pod_spec(workload)
        sidecars = [c for c in spec["initContainers"] if is_sidecar(c)]
        assert len(sidecars) == 1, name_of(workload)
        assert app_of(workload)["name"] == "app"


def test_the_sidecar_runs_the_same_envoy_version_as_the_local_mesh() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "envoy"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    local = re.search(r"/(\d+\.\d+\.\d+)/", result.stdout)
    assert local, result.stdout
    assert f"envoyproxy/envoy:v{local[1]}" == ENVOY_IMAGE


def test_every_app_is_probed_through_the_sidecar_health_port(overlay: Rendered) -> None:
    for workload in overlay.workloads():
        name = name_of(workload)
        if name == GATEWAY:
            continue
        app = app_of(workload)
        expected = {"port": LAYOUT.health_port, "service": TOPOLOGY.services[name].grpc_service}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert app[probe]["grpc"] == expected, f"{name} {probe}"
        assert LAYOUT.health_port in {p["containerPort"] for p in envoy_of(workload)["ports"]}


def test_the_gateway_is_probed_on_its_health_listener(overlay: Rendered) -> None:
    envoy = envoy_of(overlay.named("Deployment", GATEWAY))
    assert envoy["readinessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": LAYOUT.health_port,
    }
    assert envoy["livenessProbe"]["tcpSocket"] == {"port": LAYOUT.health_port}


def test_every_container_has_cpu_and_memory_requests_and_limits(overlay: Rendered) -> None:
    for workload in overlay.of_kind("Deployment"):
        for container in all_containers(workload):
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), (
                    f"{name_of(workload)}/{container['name']} {bound}"
                )


def test_every_container_runs_non_root_read_only_without_capabilities(overlay: Rendered) -> None:
    for workload in overlay.of_kind("Deployment"):
        pod = pod_spec(workload)["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["runAsUser"] == RUN_AS != 0
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in all_containers(workload):
            security = container["securityContext"]
            where = f"{name_of(workload)}/{container['name']}"
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["runAsNonRoot"] is True, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert "privileged" not in security, where


def test_the_namespace_enforces_the_restricted_pod_security_standard(overlay: Rendered) -> None:
    labels = overlay.named("Namespace", TOPOLOGY.namespace)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_workload_runs_as_its_own_service_account(overlay: Rendered) -> None:
    accounts = {name_of(a): a for a in overlay.of_kind("ServiceAccount")}
    for workload in overlay.workloads():
        name = name_of(workload)
        spec = pod_spec(workload)
        # The ServiceAccount name is the `sa/<name>` of the SPIFFE ID in the pod's certificate.
        assert spec["serviceAccountName"] == name
        assert name in accounts
        assert spec["automountServiceAccountToken"] is False


def test_every_envoy_reads_its_identity_secret_and_config_map(overlay: Rendered) -> None:
    config_maps = {name_of(c): c for c in overlay.of_kind("ConfigMap")}
    for workload in overlay.workloads():
        name = name_of(workload)
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == LAYOUT.tls_secret(name)
        config_map = volumes["envoy-config"]["configMap"]["name"]
        # kustomize names each generated ConfigMap after its content: a new config, new pods.
        assert re.fullmatch(rf"{LAYOUT.config_map(name)}-[a-z0-9]{{10}}", config_map), config_map
        # The gateway's also holds its config with edge TLS, which an overlay may mount.
        tls_variant = {EDGE_TLS_CONFIG_FILE, LAYOUT.edge_sds_file} if name == GATEWAY else set()
        assert set(config_maps[config_map]["data"]) == {"envoy.yaml", *tls_variant}
        mounts = {m["name"]: m for m in envoy_of(workload)["volumeMounts"]}
        assert mounts["tls"] == {
            "name": "tls",
            "mountPath": str(LAYOUT.tls_dir),
            "readOnly": True,
        }


def test_app_and_sidecar_share_the_socket_directory(overlay: Rendered) -> None:
    for workload in overlay.workloads():
        if name_of(workload) == GATEWAY:
            continue
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        assert "emptyDir" in volumes["sockets"]
        for container in (app_of(workload), envoy_of(workload)):
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            assert mounts["sockets"] == str(LAYOUT.socket_dir)


def test_apps_listen_and_call_upstreams_only_through_the_sidecar_sockets(
    overlay: Rendered,
) -> None:
    for workload in overlay.workloads():
        name = name_of(workload)
        if name == GATEWAY:
            continue
        app = app_of(workload)
        env = env_of(app)
        assert env[f"{ENV_PREFIX}LISTEN"] == f"unix:{LAYOUT.socket_dir / 'app.sock'}"
        upstreams = {k for k in env if k.startswith(f"{ENV_PREFIX}UPSTREAM_")}
        assert upstreams == {
            f"{ENV_PREFIX}UPSTREAM_{u.upper()}" for u in TOPOLOGY.services[name].calls
        }
        for variable in upstreams:
            assert env[variable] == f"unix:{LAYOUT.socket_dir / 'egress.sock'}"
        assert "ports" not in app, f"{name}: the app must not listen on TCP"


def test_orders_gets_an_address_for_every_upstream_it_needs() -> None:
    from services.orders.app import UPSTREAM_NAMES

    assert set(UPSTREAM_NAMES) == set(TOPOLOGY.services["orders"].calls)


def test_services_on_sqlite_run_one_pod_on_their_own_volume(sqlite_overlay: Rendered) -> None:
    overlay = sqlite_overlay
    claims = {name_of(c) for c in overlay.of_kind("PersistentVolumeClaim")}
    for workload in overlay.workloads():
        name = name_of(workload)
        if name == GATEWAY:
            continue
        assert workload["spec"]["replicas"] == STATEFUL_REPLICAS == 1
        assert workload["spec"]["strategy"] == {"type": "Recreate"}
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
        assert claim in claims
        mounts = {m["name"]: m["mountPath"] for m in app_of(workload)["volumeMounts"]}
        assert mounts["data"] == str(LAYOUT.data_dir)
        assert env_of(app_of(workload))[f"{ENV_PREFIX}DB_PATH"].startswith(f"{LAYOUT.data_dir}/")


def test_production_runs_more_gateways_than_the_base(rendered: dict[str, Rendered]) -> None:
    production = rendered["production"].named("Deployment", GATEWAY)
    assert production["spec"]["replicas"] > GATEWAY_REPLICAS
    assert rendered["kind"].named("Deployment", GATEWAY)["spec"]["replicas"] == GATEWAY_REPLICAS


def test_every_workload_has_a_disruption_budget(overlay: Rendered) -> None:
    budgets = overlay.of_kind("PodDisruptionBudget")
    for workload in overlay.workloads():
        matching = [b for b in budgets if selects(b["spec"]["selector"], pod_labels(workload))]
        assert len(matching) == 1, name_of(workload)
        # Never a budget that blocks every node drain of a single replica.
        assert matching[0]["spec"].get("maxUnavailable", 1) >= 1


# --- services and network policies ----------------------------------------------------------


def container_ports(workload: Json) -> Iterator[tuple[Json, Json]]:
    for container in all_containers(workload):
        for port in container.get("ports", []):
            yield container, port


def test_no_service_port_reaches_an_app_except_through_envoy(overlay: Rendered) -> None:
    for service in overlay.of_kind("Service"):
        # The databases' Services reach Postgres itself (tests/k8s/test_postgres.py).
        if is_observability(service) or is_database(service):
            continue
        selector = {"matchLabels": service["spec"]["selector"]}
        backends = [w for w in overlay.workloads() if selects(selector, pod_labels(w))]
        assert backends, f"Service {name_of(service)} selects no workload"
        for port in service["spec"]["ports"]:
            for workload in backends:
                target = port["targetPort"]
                owners = [
                    container
                    for container, declared in container_ports(workload)
                    if target in (declared["containerPort"], declared.get("name"))
                ]
                assert owners, f"{name_of(service)}:{target} is no declared port"
                assert all(is_envoy(c) for c in owners), f"{name_of(service)}:{target}"


def test_mesh_services_are_headless_and_publish_only_the_mtls_port(overlay: Rendered) -> None:
    for name in TOPOLOGY.services:
        service = overlay.named("Service", name)
        assert service["spec"]["clusterIP"] == "None"
        assert [p["port"] for p in service["spec"]["ports"]] == [LAYOUT.inbound_port]


def test_the_gateway_service_publishes_only_the_gateway_listener(
    rendered: dict[str, Rendered],
) -> None:
    kind = rendered["kind"].named("Service", GATEWAY)
    assert kind["spec"]["type"] == "NodePort"
    assert [p["port"] for p in kind["spec"]["ports"]] == [LAYOUT.gateway_port]
    assert rendered["production"].named("Service", GATEWAY)["spec"]["type"] == "LoadBalancer"


def test_the_namespace_denies_all_traffic_by_default(overlay: Rendered) -> None:
    deny = overlay.named("NetworkPolicy", "default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_every_pod_is_covered_by_network_policies(overlay: Rendered) -> None:
    for workload in overlay.workloads():
        name = name_of(workload)
        allows = [p for p in policies_for(overlay, workload, "Ingress") if p["spec"].get("ingress")]
        assert allows, f"{name}: no policy admits anything"
        envoy_ports = {p["containerPort"] for c, p in container_ports(workload) if is_envoy(c)}
        for policy in allows:
            for rule in policy["spec"]["ingress"]:
                ports = {p["port"] for p in rule["ports"]}
                assert ports <= envoy_ports, f"{name}: {name_of(policy)} admits {ports}"


def peers(policies: list[Json], direction: str) -> set[str]:
    """Names of the pods (by app.kubernetes.io/name) that policies admit from or to."""
    names: set[str] = set()
    for policy in policies:
        for rule in policy["spec"].get(direction, []):
            for peer in rule.get("from" if direction == "ingress" else "to", []):
                if "namespaceSelector" in peer:
                    continue
                selector = peer["podSelector"]
                names.update(selector.get("matchLabels", {}).values())
                for expression in selector.get("matchExpressions", []):
                    names.update(expression["values"])
    return names


def test_only_the_callers_the_topology_names_reach_a_sidecar(overlay: Rendered) -> None:
    for name in TOPOLOGY.services:
        workload = overlay.named("Deployment", name)
        admitted = peers(policies_for(overlay, workload, "Ingress"), "ingress")
        assert admitted == set(TOPOLOGY.callers(name)), name


def test_callers_may_reach_exactly_their_upstreams_and_dns(overlay: Rendered) -> None:
    expected = {name: set(service.calls) for name, service in TOPOLOGY.services.items()}
    if overlay.on_postgres:
        # And its own database (tests/k8s/test_postgres.py checks that policy).
        for name in TOPOLOGY.services:
            expected[name].add(LAYOUT.postgres(name))
    expected[GATEWAY] = set(TOPOLOGY.gateway.exposes)
    # With the observability component every pod exports its spans to the collector too.
    collector = {name_of(d) for d in overlay.of_kind("Deployment") if name_of(d) == COLLECTOR}
    for workload in overlay.workloads():
        name = name_of(workload)
        egress = policies_for(overlay, workload, "Egress")
        assert peers(egress, "egress") == expected[name] | collector, name
        dns = [
            rule
            for policy in egress
            for rule in policy["spec"].get("egress", [])
            if {"protocol": "UDP", "port": 53} in rule["ports"]
        ]
        assert dns, f"{name}: cannot resolve its upstreams"


def test_the_gateway_listener_is_open_to_everyone(overlay: Rendered) -> None:
    policy = overlay.named("NetworkPolicy", f"{GATEWAY}-ingress")["spec"]
    assert policy["ingress"] == [{"ports": [{"protocol": "TCP", "port": LAYOUT.gateway_port}]}]
