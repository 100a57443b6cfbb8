"""The gateway's ingress as rendered from envoy/mesh.yaml: which methods its jwt_authn demands a
token for (exactly the exposed ones but `gateway.sign_in.public`), and that no caller counts
as internal at the edge (so the gateway sets x-envoy-external-address itself). The real Envoy
behaviour is in tests/mesh/test_sign_in.py."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from shopmesh.envoy.builders import Json
from shopmesh.envoy.gateway import render_gateway
from shopmesh.envoy.signin import JWT_AUTHN
from shopmesh.envoy.tracing import Tracing
from tests.support.envoy import local_layout
from tests.support.paths import MESH_FILE, TOPOLOGY

# What a shopper may do without signing in. Spelled out, not read from mesh.yaml: making
# another method public must be a decision this test is changed for.
PUBLIC = {
    "/shop.users.v1.UsersService/CreateUser",
    "/shop.users.v1.UsersService/SignIn",
    "/shop.users.v1.UsersService/RenewToken",
    "/shop.users.v1.UsersService/GetJwks",
    "/shop.inventory.v1.InventoryService/ListProducts",
    "/shop.inventory.v1.InventoryService/GetProduct",
}
UNROUTED = [
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.health.v1.Health/Check",
    "/shop.payments.v1.PaymentsService/Charge",
    "/",
]


def ingress_manager(root: Path, tracing: Tracing | None = None) -> Json:
    config = render_gateway(TOPOLOGY, local_layout(TOPOLOGY, root), tracing)
    (ingress,) = [
        entry for entry in config["static_resources"]["listeners"] if entry["name"] == "ingress"
    ]
    manager: Json = ingress["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def jwt_config(manager: Json) -> Json:
    (jwt,) = [f for f in manager["http_filters"] if f["name"] == JWT_AUTHN]
    config: Json = jwt["typed_config"]
    return config


def required_provider(config: Json, path: str) -> str | None:
    """The provider jwt_authn requires for a request to `path`, as Envoy decides it: the first
    rule whose match fits the path; none fits, no token needed."""
    for rule in config["rules"]:
        match = rule["match"]
        assert set(match) <= {"path", "prefix"}, f"a match this test cannot judge: {match}"
        if match.get("path") == path or path.startswith(match.get("prefix", "\0")):
            provider: str | None = rule.get("requires", {}).get("provider_name")
            return provider
    return None


def exposed_paths_in_mesh_file() -> dict[str, bool]:
    """Every method `gateway.exposes` lists in envoy/mesh.yaml -> whether `sign_in.public`
    lists it, read from the file itself rather than through the topology model."""
    gateway = yaml.safe_load(MESH_FILE.read_text())["gateway"]
    public = gateway["sign_in"]["public"]
    return {
        f"/{TOPOLOGY.services[service].grpc_service}/{method}": method in public.get(service, [])
        for service, methods in gateway["exposes"].items()
        for method in methods
    }


@pytest.fixture
def jwt_authn(socket_dir: Path) -> Json:
    return jwt_config(ingress_manager(socket_dir))


def test_a_token_is_required_on_exactly_the_exposed_methods_that_are_not_public(
    jwt_authn: Json,
) -> None:
    exposed = exposed_paths_in_mesh_file()
    issuer = TOPOLOGY.gateway.sign_in.issuer
    required = {path for path in exposed if required_provider(jwt_authn, path) is not None}
    assert required == {path for path, public in exposed.items() if not public}
    assert {required_provider(jwt_authn, path) for path in required} == {issuer}
    assert set(jwt_authn["providers"]) == {issuer}


def test_sign_up_sign_in_and_browsing_need_no_token(jwt_authn: Json) -> None:
    exposed = exposed_paths_in_mesh_file()
    assert {path for path, public in exposed.items() if public} == PUBLIC
    assert {path: required_provider(jwt_authn, path) for path in PUBLIC} == dict.fromkeys(PUBLIC)


def test_every_other_exposed_method_needs_a_token(jwt_authn: Json) -> None:
    for path in set(exposed_paths_in_mesh_file()) - PUBLIC:
        assert required_provider(jwt_authn, path) is not None, path
    # The rules name whole paths: a lookalike of a public method does not inherit its pass,
    # nor does anything the gateway does not route need a rule (it is refused anyway).
    assert all(set(rule["match"]) == {"path"} for rule in jwt_authn["rules"])
    assert {rule["match"]["path"] for rule in jwt_authn["rules"]} <= set(
        exposed_paths_in_mesh_file()
    )
    for path in UNROUTED:
        assert required_provider(jwt_authn, path) is None, path


@pytest.mark.parametrize("traced", [False, True], ids=["untraced", "traced"])
def test_no_caller_is_internal_at_the_edge(socket_dir: Path, traced: bool) -> None:
    # Envoy trusts an internal caller's x-forwarded-for and x-envoy-* headers; the gateway's
    # callers are all outside, whatever their address (loopback locally, pod IPs on a cluster).
    tracing = Tracing(socket_dir / "collector.sock", 0.1) if traced else None
    manager = ingress_manager(socket_dir, tracing)
    assert manager["use_remote_address"] is True
    internal = manager["internal_address_config"]
    assert internal["unix_sockets"] is False
    # Ranges there must be (an empty list reads as unset, which may be Envoy's default of
    # RFC 1918 and loopback), and none may hold an address a caller can have.
    assert internal["cidr_ranges"]
    for cidr in internal["cidr_ranges"]:
        network = ipaddress.ip_network(f"{cidr['address_prefix']}/{cidr['prefix_len']}")
        for caller in ("127.0.0.1", "127.0.0.2", "10.1.2.3", "172.18.0.5", "192.168.1.9"):
            assert ipaddress.ip_address(caller) not in network
    assert manager.get("xff_num_trusted_hops", 0) == 0
