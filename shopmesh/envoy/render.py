"""Every Envoy config of a layout: one sidecar per pod and the gateway, dumped as YAML."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

from shopmesh.envoy.builders import Json
from shopmesh.envoy.gateway import render_gateway
from shopmesh.envoy.sidecar import render_sidecar
from shopmesh.envoy.tracing import Tracing
from shopmesh.layout import Layout
from shopmesh.topology import GATEWAY, Topology


def render_all(
    topology: Topology, layout: Layout, tracing: Tracing | None = None
) -> dict[str, Json]:
    """Envoy name (pod name, or "gateway") -> its bootstrap."""
    configs = {pod.name: render_sidecar(topology, layout, pod, tracing) for pod in layout.pods()}
    configs[GATEWAY] = render_gateway(topology, layout, tracing)
    return configs


def dump(config: Json) -> str:
    """A config as YAML, keys in the order the builders wrote them."""
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def write_configs(configs: Mapping[str, Json], path_of: Callable[[str], Path]) -> list[Path]:
    """Write each config where `path_of(envoy name)` says; returns the paths written."""
    written = []
    for name, config in configs.items():
        path = path_of(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump(config), encoding="utf-8")
        written.append(path)
    return written
