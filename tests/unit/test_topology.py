"""The topology loader: envoy/mesh.yaml as the mesh's single source of truth, and the clear
errors it gives for every kind of mistake (each naming the key at fault)."""

from __future__ import annotations

import copy
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from shopmesh.topology import TopologyError, load_topology, parse_topology
from tests.support.envoy import contracts_descriptor_set
from tests.support.paths import MESH_FILE

RAW: dict[str, Any] = yaml.safe_load(MESH_FILE.read_text())


def raw() -> dict[str, Any]:
    """A fresh, mutable copy of envoy/mesh.yaml."""
    return copy.deepcopy(RAW)


def error_of(document: dict[str, Any], contracts: dict[str, frozenset[str]] | None = None) -> str:
    with pytest.raises(TopologyError) as caught:
        parse_topology(document, "mesh.yaml", contracts)
    return str(caught.value)


def test_mesh_file_describes_the_shop() -> None:
    topology = load_topology(MESH_FILE)
    assert list(topology.services) == ["users", "inventory", "payments", "orders", "notifications"]
    assert topology.services["inventory"].replicas == 2
    assert topology.services["users"].replicas == 1
    assert topology.services["payments"].grpc_service == "shop.payments.v1.PaymentsService"
    assert topology.spiffe_id("gateway") == "spiffe://shop.local/ns/shop/sa/gateway"


@pytest.mark.parametrize("service", ["orders", "notifications"])
def test_a_service_sharing_work_through_its_database_runs_one_replica_on_sqlite(
    service: str,
) -> None:
    document = raw()
    document["services"][service]["replicas"] = 2

    assert f"services.{service}.replicas: {service} runs one replica on SQLite" in error_of(
        document
    )


def test_on_postgres_each_service_runs_its_replicas_on_postgres() -> None:
    document = raw()
    document["services"]["orders"]["replicas_on_postgres"] = 3
    document["services"]["payments"]["replicas"] = 2
    topology = parse_topology(document, "mesh.yaml")

    on_postgres = topology.on_postgres()

    assert topology.services["orders"].replicas == 1
    assert on_postgres.services["orders"].replicas == 3
    # Without replicas_on_postgres, as many as on SQLite.
    assert on_postgres.services["payments"].replicas == 2
    assert on_postgres.services["users"].replicas == 1
    assert "services.users.replicas_on_postgres: must be >= 1" in error_of(
        {
            **document,
            "services": {
                **document["services"],
                "users": {**document["services"]["users"], "replicas_on_postgres": 0},
            },
        }
    )


def test_callers_include_services_and_the_gateway() -> None:
    topology = load_topology(MESH_FILE)
    assert topology.callers("payments") == {
        "orders": ("Charge", "Refund", "GetPayment"),
        "gateway": ("GetPayment",),
    }
    assert topology.callers("users") == {
        "orders": ("GetUser",),
        "gateway": ("CreateUser", "SignIn", "RenewToken", "GetJwks", "GetUser"),
    }


def test_orders_may_not_read_the_catalog() -> None:
    # Least privilege: checkout prices from its reservation, so orders needs no GetProduct; the
    # catalog is the gateway's to read (for shoppers).
    assert load_topology(MESH_FILE).callers("inventory") == {
        "orders": ("ReserveStock", "ReleaseStock", "CommitReservation"),
        "gateway": ("ListProducts", "GetProduct"),
    }


def test_internal_methods_are_not_exposed() -> None:
    exposes = load_topology(MESH_FILE).gateway.exposes
    assert "Charge" not in exposes["payments"]
    assert "Refund" not in exposes["payments"]
    assert "PublishOrderEvent" not in exposes["notifications"]
    assert not {"ReserveStock", "ReleaseStock", "CommitReservation"} & set(exposes["inventory"])


def test_overrides_merge_over_defaults() -> None:
    policies = load_topology(MESH_FILE).policies
    assert policies["users"].route.route_timeout == timedelta(seconds=5)
    assert policies["payments"].route.route_timeout == timedelta(seconds=8)
    assert policies["payments"].route.retry.num_retries == 4
    # Keys the override does not set keep their defaults.
    assert policies["payments"].route.retry.backoff_base == timedelta(milliseconds=25)
    assert policies["payments"].circuit_breaker.max_requests == 32
    assert policies["payments"].circuit_breaker.max_connections == 32


def test_method_override_inherits_the_service_route_policy() -> None:
    notifications = load_topology(MESH_FILE).policies["notifications"]
    watch = notifications.methods["WatchNotifications"]
    assert watch.route_timeout == timedelta(0)
    assert watch.per_try_timeout == timedelta(0)
    assert watch.retry == notifications.route.retry


def test_unknown_service_in_calls_is_named() -> None:
    document = raw()
    document["services"]["orders"]["calls"]["userz"] = ["GetUser"]
    assert "services.orders.calls.userz: unknown service 'userz'" in error_of(document)


def test_unknown_service_in_gateway_exposes_is_named() -> None:
    document = raw()
    document["gateway"]["exposes"]["shipping"] = ["Ship"]
    assert "gateway.exposes.shipping: unknown service 'shipping'" in error_of(document)


def test_service_calling_itself_is_refused() -> None:
    document = raw()
    document["services"]["orders"]["calls"]["orders"] = ["GetOrder"]
    assert "services.orders.calls.orders: a service does not call itself" in error_of(document)


def test_missing_key_is_named() -> None:
    document = raw()
    del document["services"]["inventory"]["replicas"]
    assert "services.inventory.replicas: missing" in error_of(document)


def test_unknown_key_is_named() -> None:
    document = raw()
    document["gateway"]["rate_limit"] = 5
    assert "gateway.rate_limit: unknown key" in error_of(document)


def test_unknown_key_in_override_is_named() -> None:
    document = raw()
    document["resilience"]["overrides"]["payments"]["retry"]["num_retriez"] = 2
    message = error_of(document)
    assert "resilience.overrides.payments.retry.num_retriez: unknown key" in message


def test_override_for_unknown_service_is_named() -> None:
    document = raw()
    document["resilience"]["overrides"]["shipping"] = {"route_timeout": "1s"}
    assert "resilience.overrides.shipping: unknown service" in error_of(document)


def test_method_override_may_only_set_route_keys() -> None:
    document = raw()
    methods = document["resilience"]["overrides"]["notifications"]["methods"]
    methods["WatchNotifications"]["circuit_breaker"] = {"max_requests": 1}
    message = error_of(document)
    assert "methods.WatchNotifications.circuit_breaker: may only set" in message


def test_bad_duration_is_named() -> None:
    document = raw()
    document["resilience"]["defaults"]["route_timeout"] = "5 seconds"
    message = error_of(document)
    assert "resilience.defaults.route_timeout: expected a duration" in message


def test_bad_override_value_is_reported_where_it_is_written() -> None:
    document = raw()
    document["resilience"]["overrides"]["payments"]["retry"]["num_retries"] = -1
    message = error_of(document)
    assert "resilience.overrides.payments.retry.num_retries: must be >= 0" in message


def test_per_try_timeout_longer_than_route_timeout_is_refused() -> None:
    document = raw()
    document["resilience"]["overrides"]["users"] = {"per_try_timeout": "10s"}
    message = error_of(document)
    assert "resilience.overrides.users.per_try_timeout: must not exceed route_timeout" in message


def test_boolean_is_not_a_number() -> None:
    document = raw()
    document["services"]["users"]["replicas"] = True
    assert "services.users.replicas: expected an integer" in error_of(document)


def test_unknown_retry_condition_is_named() -> None:
    document = raw()
    document["resilience"]["defaults"]["retry"]["retry_on"] = ["unavailable", "sometimes"]
    message = error_of(document)
    assert "resilience.defaults.retry.retry_on: unknown condition 'sometimes'" in message


def test_malformed_method_name_is_refused() -> None:
    document = raw()
    document["gateway"]["exposes"]["users"] = ["get_user"]
    assert re.search(r"gateway\.exposes\.users: expected gRPC method names", error_of(document))


def test_gateway_is_a_reserved_name() -> None:
    document = raw()
    document["services"]["gateway"] = document["services"].pop("users")
    assert "services.gateway: 'gateway' is not a valid service name" in error_of(document)


def contracts() -> dict[str, frozenset[str]]:
    from google.protobuf import descriptor_pb2

    descriptors = descriptor_pb2.FileDescriptorSet()
    descriptors.ParseFromString(contracts_descriptor_set(load_topology(MESH_FILE)))
    return {
        f"{file.package}.{service.name}": frozenset(m.name for m in service.method)
        for file in descriptors.file
        for service in file.service
    }


def test_method_missing_from_the_contracts_is_named() -> None:
    known = contracts()
    known["shop.payments.v1.PaymentsService"] = frozenset({"Charge", "Refund"})
    message = error_of(raw(), known)
    assert "services.orders.calls.payments: shop.payments.v1.PaymentsService has no method " in (
        message
    )


def test_service_missing_from_the_contracts_is_named() -> None:
    known = contracts()
    del known["shop.users.v1.UsersService"]
    message = error_of(raw(), known)
    assert "services.users.grpc_service: shop.users.v1.UsersService is not in the descr" in message


def test_descriptor_set_file_is_checked(tmp_path: Path) -> None:
    descriptor = tmp_path / "shop.pb"
    descriptor.write_bytes(contracts_descriptor_set(load_topology(MESH_FILE)))
    assert load_topology(MESH_FILE, descriptor).services["orders"].calls["users"] == ("GetUser",)


def test_unreadable_file_is_a_topology_error(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read the topology"):
        load_topology(tmp_path / "missing.yaml")


def test_invalid_yaml_is_a_topology_error(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text("services: [unclosed\n")
    with pytest.raises(TopologyError, match="not valid YAML"):
        load_topology(path)


def with_origins(origins: object) -> dict[str, Any]:
    document = raw()
    document["gateway"]["cors"]["allowed_origins"] = origins
    return document


def test_listed_origins_are_allowed_as_written() -> None:
    origins = ["https://shop.example.com", "http://localhost:5173", "http://127.0.0.1:8081"]
    topology = parse_topology(with_origins(origins), "mesh.yaml")
    assert topology.gateway.cors_allowed_origins == tuple(origins)


@pytest.mark.parametrize(
    "origin",
    [
        "*",
        "https://*.example.com",
        "null",
        "shop.example.com",
        "https://shop.example.com/",
        "https://shop.example.com/shop",
        "https://user@shop.example.com",
        "ftp://shop.example.com",
        "https://Shop.Example.com",
        "https://shop.example.com:443000",
        "https://shop.example.com\n",
        "",
        443,
    ],
)
def test_an_allowed_origin_must_be_one_origin(origin: object) -> None:
    message = error_of(with_origins(["https://shop.example.com", origin]))
    assert (
        "gateway.cors.allowed_origins: expected origins such as https://shop.example.com "
        f"(never *), got {origin!r}"
    ) in message


def test_allowed_origins_are_a_list_of_distinct_origins() -> None:
    assert "gateway.cors.allowed_origins: expected a list of origins" in error_of(with_origins("*"))
    twice = ["https://shop.example.com", "https://shop.example.com"]
    assert "gateway.cors.allowed_origins: lists an entry twice" in error_of(with_origins(twice))


def test_a_trailing_newline_makes_no_value_valid() -> None:
    # A YAML block scalar (`key: |`) ends its text with one; `$` alone would accept it.
    name = raw()
    name["services"]["users\n"] = name["services"].pop("users")
    assert "services.users\n: 'users\\n' is not a valid service name" in error_of(name)
    grpc_service = raw()
    grpc_service["services"]["users"]["grpc_service"] = "shop.users.v1.UsersService\n"
    assert "services.users.grpc_service: expected a full gRPC service name" in error_of(
        grpc_service
    )
    method = raw()
    method["gateway"]["exposes"]["users"] = ["GetUser\n"]
    assert re.search(r"gateway\.exposes\.users: expected gRPC method names", error_of(method))
    duration = raw()
    duration["resilience"]["defaults"]["route_timeout"] = "5s\n"
    assert "resilience.defaults.route_timeout: expected a duration" in error_of(duration)
