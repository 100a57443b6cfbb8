"""Every config the renderer produces, local and Kubernetes, passes `envoy --mode validate`,
and says what the topology says (names, addressing, routes, authorization, no inline keys)."""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shopmesh.envoy.browser import STOREFRONT_FILES
from shopmesh.envoy.builders import Json
from shopmesh.envoy.render import render_all, write_configs
from shopmesh.envoy.sidecar import render_sidecar
from shopmesh.k8s.certs import mounted_identity
from shopmesh.k8s.layout import KubernetesLayout
from shopmesh.layout import (
    GatewayPorts,
    LayoutError,
    LocalLayout,
    Pod,
    PodPorts,
    StateDir,
    local_pods,
)
from shopmesh.local.signing import ensure_signing_keys
from shopmesh.pki import CertificateAuthority, LocalPki
from shopmesh.topology import GATEWAY, load_topology
from tests.support.envoy import (
    contracts_descriptor_set,
    stand_in_jwks,
    stand_in_storefront,
    validate,
)
from tests.support.paths import DESCRIPTOR_SET, MESH_FILE, TOPOLOGY

LOCAL_FILES = [f"{pod.name}.yaml" for pod in local_pods(TOPOLOGY)] + ["gateway.yaml"]
KUBERNETES_FILES = [f"{name}.yaml" for name in TOPOLOGY.services] + ["gateway.yaml"]
FIRST_PORT = 21000
GATEWAY_PORTS = GatewayPorts(listener=28080, health=28081, metrics=28082)


@dataclasses.dataclass(frozen=True)
class Rendered:
    directory: Path
    configs: dict[str, Json]
    """File name (`orders-0.yaml`) -> config."""
    layout: Any


def render_into(layout: Any, directory: Path) -> Rendered:
    configs = render_all(TOPOLOGY, layout)
    write_configs(configs, lambda name: directory / f"{name}.yaml")
    return Rendered(directory, {f"{name}.yaml": c for name, c in configs.items()}, layout)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """Every local config, with the CA, identities, descriptor and directories they name."""
    root = tmp_path_factory.mktemp("local")
    descriptor = root / "shop.pb"
    descriptor.write_bytes(contracts_descriptor_set(TOPOLOGY))
    state = StateDir(root / "var")
    pki = LocalPki(state.certs)
    ca = pki.ensure_ca(datetime.timedelta(days=1))
    for identity, spiffe_id in TOPOLOGY.spiffe_ids.items():
        pki.issue(ca, identity, spiffe_id, datetime.timedelta(hours=1))
    ports = {
        pod.name: PodPorts(*(FIRST_PORT + 3 * index + offset for offset in range(3)))
        for index, pod in enumerate(local_pods(TOPOLOGY))
    }
    layout = LocalLayout(state, TOPOLOGY, "127.0.0.1", ports, GATEWAY_PORTS, descriptor)
    state.make_directories(layout.pods())
    ensure_signing_keys(state)
    stand_in_storefront(state.storefront)
    return render_into(layout, root / "envoy")


@pytest.fixture(scope="module")
def kubernetes(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """Every Kubernetes config. The mounts (TLS Secret, descriptor) are stood in for by temp
    directories so validation can open the files; everything else is the standard layout."""
    root = tmp_path_factory.mktemp("kubernetes")
    layout = KubernetesLayout(
        TOPOLOGY,
        tls_dir=root / "tls",
        descriptor=root / "shop.pb",
        jwks_dir=stand_in_jwks(root / "jwks"),
        storefront_dir=stand_in_storefront(root / "storefront"),
    )
    layout.descriptor.write_bytes(contracts_descriptor_set(TOPOLOGY))
    ca = CertificateAuthority.create("test CA", datetime.timedelta(days=1))
    credential = ca.issue(TOPOLOGY.spiffe_id("orders"), datetime.timedelta(hours=1))
    layout.tls_dir.mkdir()
    for name, content in mounted_identity(ca, credential, layout.tls_dir).items():
        (layout.tls_dir / name).write_bytes(content)
    return render_into(layout, root / "envoy")


def assert_valid(config: Path) -> None:
    result = validate(config)
    assert result.returncode == 0, f"{config.name}:\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("name", LOCAL_FILES)
def test_local_config_passes_envoy_validation(local: Rendered, name: str) -> None:
    assert_valid(local.directory / name)


@pytest.mark.parametrize("name", KUBERNETES_FILES)
def test_kubernetes_config_passes_envoy_validation(kubernetes: Rendered, name: str) -> None:
    assert_valid(kubernetes.directory / name)


def test_topology_matches_contracts_and_gateway_validates_with_them(
    tmp_path: Path, local: Rendered
) -> None:
    load_topology(MESH_FILE, DESCRIPTOR_SET)
    layout = dataclasses.replace(local.layout, descriptor=DESCRIPTOR_SET)
    render_into(layout, tmp_path)
    assert_valid(tmp_path / "gateway.yaml")


def walk(node: Any) -> Iterator[Any]:
    """Every value in a nested config."""
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def by_name(items: list[Json], name: str) -> Json:
    return next(item for item in items if item["name"] == name)


def http_manager(listener: Json) -> Json:
    manager: Json = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def address_of(listener_or_endpoint: Json) -> tuple[str, int]:
    socket = listener_or_endpoint["socket_address"]
    return socket["address"], socket["port_value"]


def test_no_key_or_certificate_is_inlined(local: Rendered, kubernetes: Rendered) -> None:
    for rendered in (local, kubernetes):
        for name, config in rendered.configs.items():
            assert "BEGIN" not in (rendered.directory / name).read_text()
            # Inline data sources exist (the message of an Envoy reply), but never in a TLS
            # context: certificates and keys come through file-based SDS.
            tls = [
                value["transport_socket"]
                for value in walk(config)
                if isinstance(value, dict) and "transport_socket" in value
            ]
            assert tls
            assert "inline_" not in repr(tls)
            assert "sds_config" in repr(tls)


def test_sidecar_names_follow_one_style(local: Rendered) -> None:
    orders = local.configs["orders-0.yaml"]["static_resources"]
    assert [listener["name"] for listener in orders["listeners"]] == [
        "inbound",
        "egress",
        "health",
        "metrics",
    ]
    assert [cluster["name"] for cluster in orders["clusters"]] == [
        "local_app",
        "svc_users",
        "svc_inventory",
        "svc_payments",
        "svc_notifications",
        "admin",
    ]
    for listener in orders["listeners"]:
        assert http_manager(listener)["stat_prefix"] == listener["name"]


def test_local_sidecar_uses_unix_sockets_for_the_app_and_loopback_for_tcp(
    local: Rendered,
) -> None:
    config = local.configs["orders-0.yaml"]
    run_dir = local.layout.state.pod_dir("orders-0")
    resources = config["static_resources"]
    egress = by_name(resources["listeners"], "egress")
    assert egress["address"] == {"pipe": {"path": str(run_dir / "egress.sock")}}
    app = by_name(resources["clusters"], "local_app")["load_assignment"]["endpoints"][0]
    assert app["lb_endpoints"][0]["endpoint"]["address"] == {
        "pipe": {"path": str(run_dir / "app.sock")}
    }
    tcp_hosts = {
        value["address"]
        for value in walk(config)
        if isinstance(value, dict) and "port_value" in value
    }
    assert tcp_hosts == {"127.0.0.1"}


def test_local_upstream_lists_every_replica_inbound_port(local: Rendered) -> None:
    orders = local.configs["orders-0.yaml"]["static_resources"]
    inventory = by_name(orders["clusters"], "svc_inventory")
    assert inventory["type"] == "STATIC"
    endpoints = inventory["load_assignment"]["endpoints"][0]["lb_endpoints"]
    replicas = [local.configs[f"inventory-{i}.yaml"]["static_resources"] for i in range(2)]
    inbound_ports = [
        address_of(by_name(replica["listeners"], "inbound")["address"]) for replica in replicas
    ]
    assert [address_of(e["endpoint"]["address"]) for e in endpoints] == inbound_ports


def test_kubernetes_sidecar_uses_headless_service_dns_and_standard_ports(
    kubernetes: Rendered,
) -> None:
    config = kubernetes.configs["orders.yaml"]
    resources = config["static_resources"]
    inventory = by_name(resources["clusters"], "svc_inventory")
    assert inventory["type"] == "STRICT_DNS"
    endpoint = inventory["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert address_of(endpoint["address"]) == ("inventory.shop.svc.cluster.local", 15443)
    assert address_of(by_name(resources["listeners"], "inbound")["address"]) == ("0.0.0.0", 15443)
    assert address_of(by_name(resources["listeners"], "health")["address"]) == ("0.0.0.0", 15021)
    assert address_of(by_name(resources["listeners"], "metrics")["address"]) == ("0.0.0.0", 15090)
    assert config["admin"]["address"] == {
        "pipe": {"path": "/var/run/envoy-admin/admin.sock", "mode": 0o600}
    }
    assert by_name(resources["listeners"], "egress")["address"] == {
        "pipe": {"path": "/var/run/shopmesh/egress.sock"}
    }


def test_admin_listens_only_on_a_private_unix_socket(local: Rendered) -> None:
    admin_dir = local.layout.state.admin
    for name, config in local.configs.items():
        envoy = name.removesuffix(".yaml")
        assert config["admin"]["address"] == {
            "pipe": {"path": str(admin_dir / f"{envoy}.sock"), "mode": 0o600}
        }
    assert stat.S_IMODE(admin_dir.stat().st_mode) == 0o700


def test_metrics_listener_routes_only_prometheus_stats_to_admin(local: Rendered) -> None:
    for config in local.configs.values():
        resources = config["static_resources"]
        metrics = http_manager(by_name(resources["listeners"], "metrics"))
        (host,) = metrics["route_config"]["virtual_hosts"]
        assert [route["match"] for route in host["routes"]] == [{"path": "/stats/prometheus"}]
        assert host["routes"][0]["route"]["cluster"] == "admin"
        admin = by_name(resources["clusters"], "admin")["load_assignment"]["endpoints"][0]
        assert admin["lb_endpoints"][0]["endpoint"]["address"] == {
            "pipe": {"path": config["admin"]["address"]["pipe"]["path"]}
        }


def rbac_policies(config: Json) -> Json:
    inbound = by_name(config["static_resources"]["listeners"], "inbound")
    rbac = by_name(http_manager(inbound)["http_filters"], "envoy.filters.http.rbac")
    policies: Json = rbac["typed_config"]["rules"]["policies"]
    return policies


def allowed_paths(policy: Json) -> set[str]:
    return {
        value["exact"]
        for value in walk(policy["permissions"])
        if isinstance(value, dict) and "exact" in value
    }


def test_inbound_rbac_grants_each_caller_exactly_its_methods(local: Rendered) -> None:
    policies = rbac_policies(local.configs["payments-0.yaml"])
    service = "/shop.payments.v1.PaymentsService"
    assert allowed_paths(policies["caller-orders"]) == {
        f"{service}/Charge",
        f"{service}/Refund",
        f"{service}/GetPayment",
    }
    assert allowed_paths(policies["caller-gateway"]) == {f"{service}/GetPayment"}
    # No reflection grant: the gateway answers reflection itself (shopmesh.reflection).
    assert set(policies) == {"caller-orders", "caller-gateway", "mesh-health-checks"}
    principal = policies["caller-orders"]["principals"][0]["authenticated"]["principal_name"]
    assert principal == {"exact": "spiffe://shop.local/ns/shop/sa/orders"}


def test_upstream_tls_requires_the_callee_spiffe_id(local: Rendered) -> None:
    orders = local.configs["orders-0.yaml"]["static_resources"]
    payments = by_name(orders["clusters"], "svc_payments")
    context = payments["transport_socket"]["typed_config"]["common_tls_context"]
    sans = context["combined_validation_context"]["default_validation_context"]
    assert sans["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": "spiffe://shop.local/ns/shop/sa/payments"}}
    ]
    assert payments["health_checks"][0]["grpc_health_check"]["service_name"] == (
        "shop.payments.v1.PaymentsService"
    )


def test_resilience_policy_reaches_the_upstream_cluster_and_route(local: Rendered) -> None:
    orders = local.configs["orders-0.yaml"]["static_resources"]
    payments = by_name(orders["clusters"], "svc_payments")
    thresholds = payments["circuit_breakers"]["thresholds"][0]
    assert thresholds["max_requests"] == 32
    assert thresholds["retry_budget"]["budget_percent"] == {"value": 25.0}
    egress = http_manager(by_name(orders["listeners"], "egress"))
    route = by_name(egress["route_config"]["virtual_hosts"][0]["routes"], "payments")
    assert route["match"] == {"prefix": "/shop.payments.v1.PaymentsService/"}
    assert route["route"]["timeout"] == "8.000s"
    assert route["route"]["retry_policy"]["num_retries"] == 4
    assert route["route"]["retry_policy"]["per_try_timeout"] == "2.000s"
    assert route["route"]["retry_policy"]["retry_on"] == (
        "unavailable,reset,connect-failure,refused-stream"
    )


REFLECTION_PATHS = {
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
}


def gateway_paths(config: Json, virtual_host: str) -> set[str]:
    ingress = http_manager(by_name(config["static_resources"]["listeners"], "ingress"))
    host = by_name(ingress["route_config"]["virtual_hosts"], virtual_host)
    return {route["match"].get("path") or route["match"]["prefix"] for route in host["routes"]}


def test_gateway_routes_only_exposed_methods(local: Rendered) -> None:
    config = local.configs["gateway.yaml"]
    expected = {
        f"/{TOPOLOGY.services[service].grpc_service}/{method}"
        for service, methods in TOPOLOGY.gateway.exposes.items()
        for method in methods
    }
    # Besides them, reflection and the storefront's files (GET, answered by the gateway itself).
    assert gateway_paths(config, "public") == expected | REFLECTION_PATHS | set(STOREFRONT_FILES)
    assert "/shop.payments.v1.PaymentsService/Charge" not in gateway_paths(config, "payments")
    assert "/shop.notifications.v1.NotificationsService/PublishOrderEvent" not in expected


def test_gateway_offers_health_per_service_virtual_host(local: Rendered) -> None:
    paths = gateway_paths(local.configs["gateway.yaml"], "users")
    assert paths == {
        "/shop.users.v1.UsersService/CreateUser",
        "/shop.users.v1.UsersService/SignIn",
        "/shop.users.v1.UsersService/RenewToken",
        "/shop.users.v1.UsersService/GetJwks",
        "/shop.users.v1.UsersService/GetUser",
        "/grpc.health.v1.Health/Check",
        *REFLECTION_PATHS,
    }


def test_every_virtual_host_sends_reflection_to_the_reflection_service(local: Rendered) -> None:
    config = local.configs["gateway.yaml"]
    ingress = http_manager(by_name(config["static_resources"]["listeners"], "ingress"))
    for host in ingress["route_config"]["virtual_hosts"]:
        routes = [r for r in host["routes"] if r["match"]["path"] in REFLECTION_PATHS]
        assert {r["match"]["path"] for r in routes} == REFLECTION_PATHS, host["name"]
        assert {r["route"]["cluster"] for r in routes} == {"reflection"}
    cluster = by_name(config["static_resources"]["clusters"], "reflection")
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"] == {
        "pipe": {"path": str(local.layout.reflection_socket())}
    }


def test_streaming_method_override_disables_the_route_timeout(local: Rendered) -> None:
    ingress = http_manager(
        by_name(local.configs["gateway.yaml"]["static_resources"]["listeners"], "ingress")
    )
    public = by_name(ingress["route_config"]["virtual_hosts"], "public")["routes"]
    watch = by_name(public, "notifications.WatchNotifications")["route"]
    assert watch["timeout"] == "0.000s"
    assert "per_try_timeout" not in watch["retry_policy"]


def test_rendering_a_pod_without_ports_is_an_error(local: Rendered) -> None:
    layout = dataclasses.replace(local.layout, ports={})
    with pytest.raises(LayoutError, match=re.escape("no ports for pod 'users-0'")):
        render_sidecar(TOPOLOGY, layout, Pod("users", "users-0"))


def test_render_all_covers_every_pod_and_the_gateway(local: Rendered, kubernetes: Rendered) -> None:
    assert sorted(local.configs) == sorted(LOCAL_FILES)
    assert sorted(kubernetes.configs) == sorted(KUBERNETES_FILES)
    assert local.configs[f"{GATEWAY}.yaml"]["node"] == {"id": "gateway", "cluster": "gateway"}


def filter_names(config: Json, listener: str) -> list[str]:
    manager = http_manager(by_name(config["static_resources"]["listeners"], listener))
    return [entry["name"] for entry in manager["http_filters"]]


def allowlist(config: Json, listener: str) -> dict[str, list[str]]:
    manager = http_manager(by_name(config["static_resources"]["listeners"], listener))
    grpc_stats = by_name(manager["http_filters"], "envoy.filters.http.grpc_stats")["typed_config"]
    assert grpc_stats["enable_upstream_stats"] is True
    services = grpc_stats["individual_method_stats_allowlist"]["services"]
    return {entry["name"]: entry["method_names"] for entry in services}


def test_grpc_stats_counts_what_passed_the_refusals_and_includes_injected_faults(
    local: Rendered,
) -> None:
    """RBAC denials and the rate limit are counted by their own filters, before grpc_stats;
    injected faults are the service's own failures, after it."""
    sidecar = local.configs["payments-0.yaml"]
    assert filter_names(sidecar, "inbound") == [
        "envoy.filters.http.rbac",
        "envoy.filters.http.grpc_stats",
        "envoy.filters.http.fault",
        "envoy.filters.http.router",
    ]
    assert filter_names(sidecar, "egress") == [
        "envoy.filters.http.grpc_stats",
        "envoy.filters.http.router",
    ]
    assert filter_names(local.configs["gateway.yaml"], "ingress") == [
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.header_mutation.caller",
        "envoy.filters.http.local_ratelimit.per_client",
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.jwt_authn",
        "envoy.filters.http.buffer",
        "envoy.filters.http.lua",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.adaptive_concurrency",
        "envoy.filters.http.grpc_stats",
        "envoy.filters.http.router",
    ]


def test_per_method_stats_only_for_the_methods_the_topology_grants(local: Rendered) -> None:
    payments = "shop.payments.v1.PaymentsService"
    assert allowlist(local.configs["payments-0.yaml"], "inbound") == {
        payments: ["Charge", "Refund", "GetPayment"]
    }
    assert allowlist(local.configs["orders-0.yaml"], "egress") == {
        TOPOLOGY.services[upstream].grpc_service: list(methods)
        for upstream, methods in TOPOLOGY.services["orders"].calls.items()
    }
    assert allowlist(local.configs["users-0.yaml"], "egress") == {}
    assert allowlist(local.configs["gateway.yaml"], "ingress") == {
        TOPOLOGY.services[service].grpc_service: list(methods)
        for service, methods in TOPOLOGY.gateway.exposes.items()
    }


def test_latency_histograms_have_buckets_from_half_a_millisecond_to_ten_seconds(
    local: Rendered,
) -> None:
    for config in local.configs.values():
        (setting,) = config["stats_config"]["histogram_bucket_settings"]
        assert setting["match"] == {"suffix": "upstream_rq_time"}
        buckets = setting["buckets"]
        assert buckets[0] == 0.5
        assert buckets == sorted(buckets)
        within = [b for b in buckets if 10 <= b <= 10_000]
        assert max(high / low for low, high in itertools.pairwise(within)) <= 4 / 3
        assert config["stats_flush_interval"] == "1s"
