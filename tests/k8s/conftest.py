"""Fixtures of the offline Kubernetes checks: the kustomize output of every overlay, rendered
once per session with the real kubectl (tests/support/k8s.py)."""

from __future__ import annotations

import pytest

from tests.support.k8s import K8S, ON_POSTGRES, OVERLAYS, Rendered, kustomize


@pytest.fixture(scope="session")
def rendered() -> dict[str, Rendered]:
    """Every overlay, rendered with the real `kubectl kustomize`."""
    return {name: Rendered(name, kustomize(K8S / "overlays" / name)) for name in OVERLAYS}


@pytest.fixture(scope="session", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, rendered: dict[str, Rendered]) -> Rendered:
    """Each overlay in turn."""
    result: Rendered = rendered[request.param]
    return result


@pytest.fixture(scope="session", params=[name for name in OVERLAYS if name not in ON_POSTGRES])
def sqlite_overlay(request: pytest.FixtureRequest, rendered: dict[str, Rendered]) -> Rendered:
    """Each overlay whose services keep SQLite files (tests/k8s/test_postgres.py checks the
    others)."""
    result: Rendered = rendered[request.param]
    return result
