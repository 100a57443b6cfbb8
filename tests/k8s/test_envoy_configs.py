"""Every Envoy config in a ConfigMap of the manifests passes `envoy --mode validate`, run with
the same arguments as its container, and the certificate files `issue-certs` writes for the
Secrets are the ones those configs read.

`envoy --mode validate` opens every file a config names (the SDS files, and through them the
certificate, key and trust bundle; the gateway's descriptor set), so the pod's mounts are
stood in for by a temporary directory: each mount path `/m` becomes `<tmp>/m`, filled as the
kubelet would fill it (the Secret's files from `pki.mounted_identity`, the descriptor set from
gen/). The configs are validated with that prefix added to every path under a mount, and
nothing else changed."""

from __future__ import annotations

import datetime
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.users.keys import JWKS_FILE
from shopmesh.envoy.edge import INGRESS
from shopmesh.k8s.certs import issue_certificates, mounted_identity
from shopmesh.k8s.layout import KubernetesLayout
from shopmesh.k8s.manifests import TLS_SECRET_CERT, TLS_SECRET_KEY
from shopmesh.pki import (
    CERTIFICATE_SDS_FILE,
    VALIDATION_SDS_FILE,
    CertificateAuthority,
    IdentityFiles,
)
from shopmesh.topology import GATEWAY
from tests.support.envoy import stand_in_jwks, stand_in_storefront
from tests.support.k8s import Json, Rendered, all_containers, is_envoy, pod_spec
from tests.support.paths import ROOT, TOPOLOGY

ENVOY = Path(sys.executable).parent / "envoy"
LAYOUT = KubernetesLayout(TOPOLOGY)
DESCRIPTOR = ROOT / "gen" / "shop.pb"


def mounted_configs(overlay: Rendered, workload: Json) -> dict[str, str]:
    """File name -> content of what the workload's Envoy finds in its config directory: its
    ConfigMap's keys, or the `items` its volume picks, under the names they are given."""
    volume = {v["name"]: v for v in pod_spec(workload)["volumes"]}["envoy-config"]["configMap"]
    data: dict[str, str] = overlay.named("ConfigMap", volume["name"])["data"]
    items = volume.get("items") or [{"key": key, "path": key} for key in data]
    return {item["path"]: data[item["key"]] for item in items}


def config_of(overlay: Rendered, workload: Json) -> str:
    """The envoy.yaml the workload's Envoy runs."""
    return mounted_configs(overlay, workload)[LAYOUT.config_file]


def secret_mounts(workload: Json) -> dict[str, str]:
    """Secret name -> where the workload's Envoy mounts it."""
    secrets = {
        v["name"]: v["secret"]["secretName"] for v in pod_spec(workload)["volumes"] if "secret" in v
    }
    return {
        secrets[m["name"]]: m["mountPath"]
        for m in envoy_container(workload)["volumeMounts"]
        if m["name"] in secrets
    }


def envoy_container(workload: Json) -> Json:
    return next(c for c in all_containers(workload) if is_envoy(c))


def under(value: Any, mounts: list[str]) -> bool:
    """Whether `value` is a mount path or a path inside one."""
    return isinstance(value, str) and any(
        value == m or value.startswith(f"{m.rstrip('/')}/") for m in mounts
    )


def prefixed(node: Any, mounts: list[str], root: Path, moved: list[str]) -> Any:
    """`node` with every path under a mount moved under `root` (each one noted in `moved`)."""
    if isinstance(node, dict):
        return {key: prefixed(value, mounts, root, moved) for key, value in node.items()}
    if isinstance(node, list):
        return [prefixed(value, mounts, root, moved) for value in node]
    if under(node, mounts):
        moved.append(node)
        return f"{root}{node}"
    return node


def materialise(workload: Json, root: Path) -> list[str]:
    """Fill `root` with what the pod's Envoy mounts; returns the mount paths."""
    name = workload["metadata"]["name"]
    mounts = [m["mountPath"] for m in envoy_container(workload)["volumeMounts"]]
    for mount in mounts:
        (root / mount.lstrip("/")).mkdir(parents=True, exist_ok=True)
    tls = root / str(LAYOUT.tls_dir).lstrip("/")
    ca = CertificateAuthority.create("test CA", datetime.timedelta(hours=1))
    credential = ca.issue(TOPOLOGY.spiffe_id(name), datetime.timedelta(minutes=30))
    for file, content in mounted_identity(ca, credential, tls).items():
        (tls / file).write_bytes(content)
    edge = secret_mounts(workload).get(LAYOUT.edge_tls_secret)
    if edge is not None:
        # What cert-manager writes into a kubernetes.io/tls Secret.
        server = ca.issue_server(["shop.example.com"], datetime.timedelta(minutes=30))
        (root / edge.lstrip("/") / TLS_SECRET_CERT).write_bytes(server.certificate_pem())
        (root / edge.lstrip("/") / TLS_SECRET_KEY).write_bytes(server.key_pem())
    if name == GATEWAY:
        if not DESCRIPTOR.exists():
            pytest.fail(f"{DESCRIPTOR} is missing: run `make generate` first", pytrace=False)
        descriptor = root / str(LAYOUT.descriptor).lstrip("/")
        descriptor.write_bytes(DESCRIPTOR.read_bytes())
        # What `shopmesh k8s issue-keys` writes, as the jwks ConfigMap holds it.
        issued = stand_in_jwks(root / "issued-keys") / JWKS_FILE
        (root / str(LAYOUT.jwks()).lstrip("/")).write_bytes(issued.read_bytes())
        # What the storefront init container copies from the image.
        stand_in_storefront(root / str(LAYOUT.storefront()).lstrip("/"))
    return mounts


def test_every_config_map_passes_envoy_validation_with_its_container_args(
    overlay: Rendered, tmp_path: Path
) -> None:
    for workload in overlay.workloads():
        name = workload["metadata"]["name"]
        root = tmp_path / name
        mounts = materialise(workload, root)
        moved: list[str] = []
        for file, text in mounted_configs(overlay, workload).items():
            config = prefixed(yaml.safe_load(text), mounts, root, moved)
            (root / str(LAYOUT.config_dir / file).lstrip("/")).write_text(
                yaml.safe_dump(config, sort_keys=False)
            )
        # The SDS files (certificates) at least; the only change is the prefix.
        assert str(LAYOUT.tls_dir / CERTIFICATE_SDS_FILE) in moved, name

        config_path = root / str(LAYOUT.config_path()).lstrip("/")
        container = envoy_container(workload)
        args = list(container["args"])
        args[args.index("-c") + 1] = str(config_path)
        result = subprocess.run(
            [str(ENVOY), *args, "--mode", "validate"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"{name}:\n{result.stdout}\n{result.stderr}"


def ingress_chain(overlay: Rendered) -> Json:
    """The filter chain of the gateway's public listener, in the config its Envoy runs."""
    config = yaml.safe_load(config_of(overlay, overlay.named("Deployment", GATEWAY)))
    listeners = config["static_resources"]["listeners"]
    (ingress,) = [listener for listener in listeners if listener["name"] == INGRESS]
    (chain,) = ingress["filter_chains"]
    result: Json = chain
    return result


def test_the_production_gateway_serves_tls_from_its_secret_and_kind_stays_plaintext(
    rendered: dict[str, Rendered],
) -> None:
    for name, tls in (("production", True), ("kind", False), ("kind-observability", False)):
        gateway = rendered[name].named("Deployment", GATEWAY)
        assert ("transport_socket" in ingress_chain(rendered[name])) is tls, name
        assert (LAYOUT.edge_tls_secret in secret_mounts(gateway)) is tls, name
    gateway = rendered["production"].named("Deployment", GATEWAY)
    assert secret_mounts(gateway)[LAYOUT.edge_tls_secret] == str(LAYOUT.edge_tls_dir)
    chain = ingress_chain(rendered["production"])
    context = chain["transport_socket"]["typed_config"]["common_tls_context"]
    (certificate,) = context["tls_certificate_sds_secret_configs"]
    sds_path = Path(certificate["sds_config"]["path_config_source"]["path"])
    assert sds_path.parent == LAYOUT.config_dir
    sds = yaml.safe_load(mounted_configs(rendered["production"], gateway)[sds_path.name])
    files = sds["resources"][0]["tls_certificate"]
    assert files["certificate_chain"]["filename"] == str(LAYOUT.edge_tls_dir / TLS_SECRET_CERT)
    assert files["private_key"]["filename"] == str(LAYOUT.edge_tls_dir / TLS_SECRET_KEY)
    assert context["alpn_protocols"] == ["h2", "http/1.1"]
    service = rendered["production"].named("Service", GATEWAY)
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": LAYOUT.gateway_port, "protocol": "TCP"}
    ]


def test_sidecar_identity_is_the_workload_and_the_config_is_the_rendered_one(
    overlay: Rendered,
) -> None:
    for workload in overlay.workloads():
        config = yaml.safe_load(config_of(overlay, workload))
        assert config["node"]["cluster"] == workload["metadata"]["name"]


def test_issued_secret_files_are_the_ones_the_configs_read(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    issued = issue_certificates(LAYOUT, tmp_path / "pki", out)
    assert set(issued) == set(TOPOLOGY.identities)
    for identity in TOPOLOGY.identities:
        directory = out / identity
        mounted = IdentityFiles(LAYOUT.tls_dir)
        files = {p.name for p in directory.iterdir()}
        assert {CERTIFICATE_SDS_FILE, VALIDATION_SDS_FILE} <= files
        certificate_sds = yaml.safe_load((directory / CERTIFICATE_SDS_FILE).read_text())
        secret = certificate_sds["resources"][0]["tls_certificate"]
        named = [
            Path(secret["certificate_chain"]["filename"]),
            Path(secret["private_key"]["filename"]),
        ]
        assert all(p.parent == mounted.directory and p.name in files for p in named)
        for path in directory.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_reissuing_certificates_keeps_the_ca(tmp_path: Path) -> None:
    first = issue_certificates(LAYOUT, tmp_path / "pki", tmp_path / "tls")
    bundle = (tmp_path / "tls" / "users" / "ca.pem").read_bytes()
    second = issue_certificates(LAYOUT, tmp_path / "pki", tmp_path / "tls")
    assert (tmp_path / "tls" / "users" / "ca.pem").read_bytes() == bundle
    assert second["users"] >= first["users"]
