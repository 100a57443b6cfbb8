"""The inbound listener as rendered for every pod: RBAC permissions are whole, exact paths, and
the connection manager normalizes paths and bounds what a connection may ask for (the real
Envoy behaviour is in tests/mesh/test_mtls.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shopmesh.envoy.builders import Json
from shopmesh.envoy.sidecar import render_sidecar
from shopmesh.layout import local_pods
from tests.support.envoy import local_layout
from tests.support.paths import TOPOLOGY

PODS = local_pods(TOPOLOGY)


def leaves(rule: Json) -> Iterator[Json]:
    """The matchers an RBAC permission is made of, through its and/or rules."""
    for combinator in ("or_rules", "and_rules"):
        if combinator in rule:
            for inner in rule[combinator]["rules"]:
                yield from leaves(inner)
            return
    yield rule


def inbound_manager(service: str, root: Path) -> Json:
    pod = next(pod for pod in PODS if pod.service == service)
    config = render_sidecar(TOPOLOGY, local_layout(TOPOLOGY, root), pod)
    (inbound,) = [
        entry for entry in config["static_resources"]["listeners"] if entry["name"] == "inbound"
    ]
    manager: Json = inbound["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def policies(manager: Json) -> dict[str, Any]:
    (rbac,) = [f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.rbac"]
    found: dict[str, Any] = rbac["typed_config"]["rules"]["policies"]
    return found


def exact_paths(policy: Json) -> set[str]:
    paths = set()
    for permission in policy["permissions"]:
        for leaf in leaves(permission):
            # The whole :path, query string included; url_path would drop it.
            assert set(leaf) == {"header"}, leaf
            assert leaf["header"]["name"] == ":path"
            assert set(leaf["header"]["string_match"]) == {"exact"}
            paths.add(leaf["header"]["string_match"]["exact"])
    return paths


@pytest.mark.parametrize("service", list(TOPOLOGY.services))
def test_every_inbound_permission_is_a_whole_exact_path(service: str, socket_dir: Path) -> None:
    granted = policies(inbound_manager(service, socket_dir))
    grpc_service = TOPOLOGY.services[service].grpc_service
    for caller, methods in TOPOLOGY.callers(service).items():
        assert exact_paths(granted[f"caller-{caller}"]) == {
            f"/{grpc_service}/{method}" for method in methods
        }
    assert exact_paths(granted["mesh-health-checks"]) == {"/grpc.health.v1.Health/Check"}
    # Nothing else: not even the gateway reaches the app's own reflection (it has its own).
    assert set(granted) == {
        *(f"caller-{c}" for c in TOPOLOGY.callers(service)),
        "mesh-health-checks",
    }


@pytest.mark.parametrize("service", list(TOPOLOGY.services))
def test_inbound_normalizes_paths_and_bounds_each_connection(
    service: str, socket_dir: Path
) -> None:
    manager = inbound_manager(service, socket_dir)
    assert manager["normalize_path"] is True
    assert manager["merge_slashes"] is True
    assert manager["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    assert manager["common_http_protocol_options"] == {
        "headers_with_underscores_action": "DROP_HEADER"
    }
    assert manager["request_headers_timeout"] == "10s"
    breaker = TOPOLOGY.policies[service].circuit_breaker
    assert manager["http2_protocol_options"]["max_concurrent_streams"] == breaker.max_requests
