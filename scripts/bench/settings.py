"""Constants that several benchmark modules share: paths, the two pods, the method, timeouts."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
MESH_FILE = ROOT / "envoy" / "mesh.yaml"
DESCRIPTOR = ROOT / "gen" / "shop.pb"

CALLER = "orders-0"
"""The pod whose egress the mesh path enters: orders may call users.GetUser (mesh.yaml)."""
CALLEE = "users-0"
GET_USER = "/shop.users.v1.UsersService/GetUser"
H2LOAD_AUTHORITY = "bench.h2load"
"""The :authority of h2load's calls, which tells them apart from orders' own in the logs."""
CALL_TIMEOUT = 10.0
