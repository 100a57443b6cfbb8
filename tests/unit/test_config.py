"""The app environment: what `services/common/config.py` reads (and refuses), and that what
`shopmesh.appenv` writes for every service of a topology is exactly what the app reads, on
this machine, in `shopmesh run` and on Kubernetes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.config import (
    ConfigError,
    ServiceConfig,
    env_seconds,
    load_config,
    upstream_variable,
)
from shopmesh.appenv import AppSettings, is_mesh_owned, pod_environment, standalone_environment
from shopmesh.k8s.layout import KubernetesLayout
from shopmesh.layout import Layout
from shopmesh.topology import Topology, parse_topology
from tests.support.envoy import local_layout
from tests.support.paths import MESH_FILE, TOPOLOGY

LISTEN = {"SHOPMESH_LISTEN": "127.0.0.1:50051"}


def test_config_needs_an_address_to_listen_on_and_says_how_to_get_one() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config("inventory", env={})

    assert "SHOPMESH_LISTEN is not set" in str(raised.value)
    assert "shopmesh up" in str(raised.value)
    assert "shopmesh run" in str(raised.value)


def test_config_defaults_to_a_file_under_var() -> None:
    config = load_config("inventory", env=LISTEN)

    assert config == ServiceConfig(
        service="inventory",
        listen="127.0.0.1:50051",
        db_path=Path("var/data/inventory.db"),
        upstreams={},
        grace_seconds=5.0,
        log_level="INFO",
    )


def test_config_reads_every_variable() -> None:
    env = {
        "SHOPMESH_LISTEN": "unix:/run/shopmesh/orders.sock",
        "SHOPMESH_DB_PATH": "/data/orders.db",
        "SHOPMESH_UPSTREAM_USERS": "unix:/run/shopmesh/egress.sock",
        "SHOPMESH_UPSTREAM_PAYMENTS": "[::1]:7000",
        "SHOPMESH_GRACE_SECONDS": "2.5",
        "SHOPMESH_DRAIN_SECONDS": "3",
        "SHOPMESH_LOG_LEVEL": "debug",
    }

    config = load_config("orders", ("users", "payments"), env=env)

    assert config.listen == "unix:/run/shopmesh/orders.sock"
    assert config.db_path == Path("/data/orders.db")
    assert config.upstream("users") == "unix:/run/shopmesh/egress.sock"
    assert config.upstream("payments") == "[::1]:7000"
    assert config.grace_seconds == 2.5
    assert config.drain_seconds == 3.0
    assert config.log_level == "DEBUG"


PG_URL = "postgresql:///orders?host=/run/pg&user=orders&passfile=/state/orders.pgpass"


def test_config_uses_the_sqlite_file_unless_given_a_postgres_url() -> None:
    on_sqlite = load_config("orders", env={**LISTEN, "SHOPMESH_DB_PATH": "/data/orders.db"})
    on_postgres = load_config("orders", env={**LISTEN, "SHOPMESH_DATABASE_URL": PG_URL})

    assert (on_sqlite.database_url, on_sqlite.database) == (None, Path("/data/orders.db"))
    assert (on_postgres.database_url, on_postgres.database) == (PG_URL, PG_URL)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://orders@db/orders", "expected a postgresql:// URL"),
        ("postgresql://orders:hunter2@db/orders", "carries a password: keep it in a 0600"),
        ("postgresql:///orders?password=hunter2", "carries a password: keep it in a 0600"),
    ],
)
def test_config_refuses_a_database_url_that_is_not_postgres_or_carries_a_password(
    url: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        load_config("orders", env={**LISTEN, "SHOPMESH_DATABASE_URL": url})
    assert "hunter2" not in str(refused.value)


def test_appenv_gives_a_service_on_postgres_its_own_url_and_the_others_none(
    tmp_path: Path,
) -> None:
    layout = local_layout(TOPOLOGY, tmp_path)
    settings = AppSettings(database_urls={"orders": PG_URL})
    for pod in layout.pods():
        calls = tuple(TOPOLOGY.services[pod.service].calls)
        env = pod_environment(TOPOLOGY, layout, pod, settings)

        config = load_config(pod.service, calls, env=env)

        assert config.database_url == (PG_URL if pod.service == "orders" else None), pod
        assert config.replica == pod.name
        assert all(is_mesh_owned(variable) for variable in env)


def test_config_needs_an_address_for_every_upstream_it_calls() -> None:
    with pytest.raises(ConfigError, match="SHOPMESH_UPSTREAM_NOTIFICATIONS is not set"):
        load_config("orders", ("notifications",), env=LISTEN)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SHOPMESH_LISTEN", "garbage", "expected unix:/path/to.sock or host:port"),
        ("SHOPMESH_LISTEN", "unix:", "needs a path"),
        ("SHOPMESH_LISTEN", "127.0.0.1:99999", "host:port"),
        ("SHOPMESH_LISTEN", "http://127.0.0.1:80", "host:port"),
        ("SHOPMESH_UPSTREAM_USERS", "users", "host:port"),
        ("SHOPMESH_GRACE_SECONDS", "soon", "number of seconds"),
        ("SHOPMESH_GRACE_SECONDS", "-1", ">= 0"),
        ("SHOPMESH_LOG_LEVEL", "LOUD", "DEBUG, INFO, WARNING, ERROR"),
    ],
)
def test_config_error_names_the_variable_and_the_expected_form(
    variable: str, value: str, expected: str
) -> None:
    env = {**LISTEN, "SHOPMESH_UPSTREAM_USERS": "127.0.0.1:50052", variable: value}
    with pytest.raises(ConfigError) as raised:
        load_config("orders", ("users",), env=env)

    assert variable in str(raised.value)
    assert expected in str(raised.value)


def test_config_refuses_a_directory_as_the_database_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SHOPMESH_DB_PATH"):
        load_config("users", env={**LISTEN, "SHOPMESH_DB_PATH": str(tmp_path)})


def test_asking_for_an_unconfigured_upstream_names_its_variable() -> None:
    config = load_config("users", env=LISTEN)

    with pytest.raises(ConfigError, match="SHOPMESH_UPSTREAM_INVENTORY"):
        config.upstream("inventory")


def test_an_upstream_variable_is_the_service_name_upper_cased_with_underscores() -> None:
    assert upstream_variable("gift-cards") == "SHOPMESH_UPSTREAM_GIFT_CARDS"
    assert upstream_variable("users") == "SHOPMESH_UPSTREAM_USERS"


def test_env_seconds_reads_a_service_setting_and_names_it_when_malformed() -> None:
    env = {"SHOPMESH_RELAY_INTERVAL": "0.25", "SHOPMESH_RETRY_SECONDS": "x"}

    assert env_seconds(env, "RELAY_INTERVAL", 1.0) == 0.25
    assert env_seconds(env, "UNSET", 1.0) == 1.0
    with pytest.raises(ConfigError, match="SHOPMESH_RETRY_SECONDS"):
        env_seconds(env, "RETRY_SECONDS", 1.0)
    with pytest.raises(ConfigError, match="SHOPMESH_RELAY_INTERVAL"):
        env_seconds(env, "RELAY_INTERVAL", 1.0, minimum=1.0)


# --- the writer and the reader, for every service of a topology ------------------------------


def with_gift_cards() -> Topology:
    """The shop with one more service, whose name has a hyphen, that orders calls."""
    document: dict[str, Any] = copy.deepcopy(yaml.safe_load(MESH_FILE.read_text()))
    document["services"]["gift-cards"] = {
        "grpc_service": "shop.giftcards.v1.GiftCardsService",
        "replicas": 2,
        "standalone_port": 50056,
        "calls": {},
    }
    document["services"]["orders"]["calls"]["gift-cards"] = ["Redeem"]
    return parse_topology(document, "mesh.yaml with gift-cards")


TOPOLOGIES = {"shop": TOPOLOGY, "gift-cards": with_gift_cards()}
SETTINGS = AppSettings(log_level="WARNING", grace_seconds=2.5)


def layouts(topology: Topology, root: Path) -> dict[str, Layout]:
    return {"local": local_layout(topology, root), "kubernetes": KubernetesLayout(topology)}


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_what_appenv_writes_for_a_pod_is_what_the_app_reads(name: str, tmp_path: Path) -> None:
    topology = TOPOLOGIES[name]
    for where, layout in layouts(topology, tmp_path).items():
        for pod in layout.pods():
            calls = tuple(topology.services[pod.service].calls)
            env = pod_environment(topology, layout, pod, SETTINGS)

            config = load_config(pod.service, calls, env=env)

            egress = f"unix:{layout.egress_socket(pod)}"
            assert config == ServiceConfig(
                service=pod.service,
                listen=f"unix:{layout.app_socket(pod)}",
                db_path=layout.database(pod.service),
                upstreams=dict.fromkeys(calls, egress),
                grace_seconds=2.5,
                drain_seconds=topology.drain_seconds(pod.service),
                log_level="WARNING",
                # On Kubernetes the manifest gives the pod's own name instead (objects.py).
                replica=pod.name,
            ), (where, pod)
            assert all(is_mesh_owned(variable) for variable in env)


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_what_appenv_writes_for_a_standalone_app_is_what_it_reads(name: str) -> None:
    topology = TOPOLOGIES[name]
    for service in topology.services.values():
        env = standalone_environment(topology, service.name, "127.0.0.1", "x.db", SETTINGS)

        config = load_config(service.name, tuple(service.calls), env=env)

        assert config.listen == f"127.0.0.1:{service.standalone_port}"
        assert config.upstreams == {
            upstream: f"127.0.0.1:{topology.services[upstream].standalone_port}"
            for upstream in service.calls
        }
        assert (config.db_path, config.drain_seconds) == (Path("x.db"), 0.0)


def test_mesh_owned_variables_are_the_ones_the_mesh_sets() -> None:
    assert is_mesh_owned("SHOPMESH_UPSTREAM_GIFT_CARDS")
    assert is_mesh_owned("SHOPMESH_LOG_LEVEL")
    assert is_mesh_owned("SHOPMESH_DATABASE_URL")
    assert not is_mesh_owned("SHOPMESH_ORDERS_RECOVERY_INTERVAL")
    assert not is_mesh_owned("OTEL_SERVICE_NAME")
