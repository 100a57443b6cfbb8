"""A service whose name has a hyphen (`gift-cards`), which the topology accepts, works end to
end: its local and Kubernetes Envoy configs pass `envoy --mode validate`, every Kubernetes
object it gets is valid, and every name derived from it is one its consumer accepts."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import re
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from services.common.config import load_config
from shopmesh.appenv import AppSettings, pod_environment
from shopmesh.envoy.render import dump, render_all
from shopmesh.k8s.certs import mounted_identity
from shopmesh.k8s.layout import KubernetesLayout
from shopmesh.k8s.manifests import render_manifests
from shopmesh.k8s.postgres import postgres_storage, render_postgres_component
from shopmesh.layout import app_module
from shopmesh.pki import CertificateAuthority
from shopmesh.topology import Topology, parse_topology
from tests.support.envoy import (
    contracts_descriptor_set,
    issue_identities,
    local_layout,
    stand_in_jwks,
    stand_in_storefront,
    validate,
)
from tests.support.paths import MESH_FILE

SERVICE = "gift-cards"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def gift_cards() -> Topology:
    document: dict[str, Any] = copy.deepcopy(yaml.safe_load(MESH_FILE.read_text()))
    document["services"][SERVICE] = {
        "grpc_service": "shop.giftcards.v1.GiftCardsService",
        "replicas": 2,
        "standalone_port": 50056,
        "calls": {},
    }
    document["services"]["orders"]["calls"][SERVICE] = ["Redeem"]
    document["gateway"]["exposes"][SERVICE] = ["GetBalance"]
    return parse_topology(document, "mesh.yaml with gift-cards")


TOPOLOGY = gift_cards()


def test_local_configs_pass_envoy_validation(tmp_path: Path) -> None:
    layout = local_layout(TOPOLOGY, tmp_path)
    layout.descriptor.write_bytes(contracts_descriptor_set(TOPOLOGY))
    issue_identities(TOPOLOGY, layout.state.certs)
    configs = render_all(TOPOLOGY, layout)
    assert {"gift-cards-0", "gift-cards-1"} <= set(configs)
    for name, config in configs.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(dump(config))
        result = validate(path)
        assert result.returncode == 0, f"{name}:\n{result.stdout}\n{result.stderr}"


def test_kubernetes_configs_pass_envoy_validation(tmp_path: Path) -> None:
    standard = KubernetesLayout(TOPOLOGY)
    layout = dataclasses.replace(
        standard,
        tls_dir=tmp_path / "tls",
        descriptor=tmp_path / "d.pb",
        jwks_dir=stand_in_jwks(tmp_path / "jwks"),
        storefront_dir=stand_in_storefront(tmp_path / "storefront"),
    )
    layout.descriptor.write_bytes(contracts_descriptor_set(TOPOLOGY))
    ca = CertificateAuthority.create("test CA", datetime.timedelta(days=1))
    credential = ca.issue(TOPOLOGY.spiffe_id(SERVICE), datetime.timedelta(hours=1))
    layout.tls_dir.mkdir()
    for name, content in mounted_identity(ca, credential, layout.tls_dir).items():
        (layout.tls_dir / name).write_bytes(content)
    for name, config in render_all(TOPOLOGY, layout).items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(dump(config))
        result = validate(path)
        assert result.returncode == 0, f"{name}:\n{result.stdout}\n{result.stderr}"


def objects() -> list[dict[str, Any]]:
    files = render_manifests(TOPOLOGY, KubernetesLayout(TOPOLOGY))
    return [
        document
        for name, text in files.items()
        if not name.startswith("envoy-") and name != "kustomization.yaml"
        for document in yaml.safe_load_all(text)
        if document is not None
    ]


@pytest.mark.parametrize("version", ["1.32", kubernetes_validate.latest_version()])
def test_every_kubernetes_object_validates(version: str) -> None:
    rendered = objects()
    assert {o["metadata"]["name"] for o in rendered if o["kind"] == "Deployment"} >= {SERVICE}
    for obj in rendered:
        kubernetes_validate.validate(obj, version, strict=True)


def test_every_name_derived_from_the_service_is_valid_where_it_is_used() -> None:
    layout = KubernetesLayout(TOPOLOGY)
    for name in (
        SERVICE,
        layout.config_map(SERVICE),
        layout.tls_secret(SERVICE),
        layout.data_claim(SERVICE),
        f"{SERVICE}-inbound",
    ):
        assert DNS_LABEL.match(name), name
    assert re.fullmatch(r"[a-z_][a-z0-9_.]*", app_module(SERVICE))
    orders = next(pod for pod in layout.pods() if pod.service == "orders")
    environment = pod_environment(TOPOLOGY, layout, orders, AppSettings())
    assert "SHOPMESH_UPSTREAM_GIFT_CARDS" in environment
    assert all(ENV_NAME.match(variable) for variable in environment)


def test_its_database_objects_validate_and_its_app_accepts_their_url() -> None:
    layout = KubernetesLayout(TOPOLOGY)
    files = render_postgres_component(TOPOLOGY, layout)
    database = [d for d in yaml.safe_load_all(files[f"{layout.postgres(SERVICE)}.yaml"]) if d]
    assert {o["kind"] for o in database} == {"Service", "StatefulSet", "NetworkPolicy"}
    for obj in database:
        assert DNS_LABEL.match(obj["metadata"]["name"]), obj["metadata"]["name"]
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    pod = next(pod for pod in layout.pods() if pod.service == SERVICE)
    storage = postgres_storage(layout, SERVICE)
    environment = pod_environment(TOPOLOGY, layout, pod, storage.settings)
    assert load_config(SERVICE, (), environment).database == layout.postgres_url(SERVICE)
