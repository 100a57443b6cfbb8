"""The dashboard as a process of the local mesh: its record (command, port, token), the link
`up` prints, and whether it serves. The web application itself is `shopmesh.dashboard`.

Its fault controls have the power of the sidecars' admin endpoints, so it asks every request
for a per-run token. The token is made by `up`, kept in mesh.json (mode 0600, like the rest of
the environment the mesh runs in) and handed to the process in its environment, never on its
command line, which every user of the machine can read in /proc."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from shopmesh.layout import StateDir
from shopmesh.local.health import http_ok
from shopmesh.local.state import MeshState, ProcessRecord

DASHBOARD = "dashboard"
"""The dashboard's process name and kind (shopmesh.dashboard)."""
DEFAULT_DASHBOARD_PORT = 8090
TOKEN_VARIABLE = "SHOPMESH_DASHBOARD_TOKEN"
"""The environment variable that gives the dashboard process its token."""
TOKEN_HEADER = "X-Shopmesh-Token"
"""Where the page (and `shopmesh status`) puts the token in every request it makes."""
TOKEN_QUERY = "token"
"""Where the printed link carries the token, for the browser's first request."""
HEALTH_PATH = "/healthz"


def new_token() -> str:
    """A fresh token for one run of the mesh: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def dashboard_record(python: Path, paths: StateDir, host: str, port: int) -> ProcessRecord:
    """The dashboard process, serving the mesh of `paths` on host:port with a new token."""
    command = [
        str(python),
        "-m",
        "shopmesh.dashboard",
        str(paths.root),
        "--host",
        host,
        "--port",
        str(port),
    ]
    return ProcessRecord(DASHBOARD, DASHBOARD, command, {TOKEN_VARIABLE: new_token()})


@dataclass(frozen=True)
class DashboardLink:
    """Where a mesh's dashboard serves, and the token it asks for."""

    host: str
    port: int
    token: str

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The page, with the token a browser needs: what `up` prints."""
        return f"{self.base}/?{TOKEN_QUERY}={self.token}"


def dashboard_link(state: MeshState) -> DashboardLink | None:
    """The dashboard of the mesh recorded in `state` (None if it was started without one)."""
    record = state.processes.get(DASHBOARD)
    if record is None or state.dashboard_port is None:
        return None
    return DashboardLink(state.host, state.dashboard_port, record.env[TOKEN_VARIABLE])


async def dashboard_serves(link: DashboardLink, within: float = 2.0) -> bool:
    """Whether the dashboard answers its health check (with the token)."""
    return await http_ok(link.base + HEALTH_PATH, within, {TOKEN_HEADER: link.token})
