"""mesh.json: what a running local mesh is made of, written and read whole as a versioned
dataclass, so `down`, `status`, `fault`, `restart` and the tests find a mesh that another
process started. Also reads the version-1 file of earlier shopmesh releases, far enough to stop
that mesh."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from services.common.files import write_atomically
from shopmesh.layout import GatewayPorts, PodPorts, StateDir
from shopmesh.local.errors import MeshError
from shopmesh.local.private import PRIVATE_DIRECTORY, PRIVATE_FILE

STATE_VERSION = 2


# Where the services keep their data (`shopmesh up --db`).
SQLITE = "sqlite"
POSTGRES = "postgres"


@dataclass
class ProcessRecord:
    """One process of the mesh: how to start it again, and which process it is now."""

    name: str
    kind: str
    """app, sidecar, gateway or logs."""
    command: list[str]
    env: dict[str, str]
    """Set on top of the environment of the command that starts it (`up`, `restart`)."""
    pid: int | None = None
    start_ticks: int | None = None
    """When the process started (clock ticks since boot): a pid reused by an unrelated process
    is never mistaken for ours."""


@dataclass
class MeshState:
    """Everything `shopmesh up` decided: the ports it chose and the processes it started."""

    host: str
    pod_ports: dict[str, PodPorts]
    gateway_ports: GatewayPorts
    descriptor: str
    processes: dict[str, ProcessRecord] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    """The environment `up` ran in: every process, restarted ones too, starts from it."""
    up_seconds: float | None = None
    dashboard_port: int | None = None
    """Where the dashboard serves on `host` (None: started without one)."""
    edge_tls: bool = False
    """Whether the gateway's listener serves TLS (`up --edge-tls`); a file without the field
    was written before edge TLS existed, by a plaintext mesh."""
    database: str = SQLITE
    """Where the services keep their data (`up --db`): it decides the replica counts
    (Topology.on_postgres); a file without the field was written by a mesh on SQLite."""
    version: int = STATE_VERSION

    def save(self, state_dir: StateDir) -> None:
        """Write mesh.json atomically (`status` may read it at any time), readable by its owner
        only: it holds the environment `up` ran in."""
        state_dir.root.mkdir(mode=PRIVATE_DIRECTORY, parents=True, exist_ok=True)
        data = json.dumps(asdict(self), indent=2).encode()
        write_atomically(state_dir.state_file, data, PRIVATE_FILE)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MeshState:
        return cls(
            **{
                **data,
                "pod_ports": {pod: PodPorts(**ports) for pod, ports in data["pod_ports"].items()},
                "gateway_ports": GatewayPorts(**data["gateway_ports"]),
                "processes": {
                    name: ProcessRecord(**record) for name, record in data["processes"].items()
                },
            }
        )


def read_state(state_dir: StateDir) -> MeshState | None:
    """The mesh recorded in `state_dir`, or None if there is none. A file of another version
    raises LegacyState (version 1, which `down` can still stop) or MeshError."""
    try:
        data = json.loads(state_dir.state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise MeshError(f"{state_dir.state_file} is unreadable: {error}") from None
    version = data.get("version") if isinstance(data, dict) else None
    if version == 1:
        raise LegacyState(state_dir, legacy_processes(data))
    if version != STATE_VERSION:
        raise MeshError(
            f"{state_dir.state_file} was written by another shopmesh version ({version}): stop "
            f"its processes by hand (pidfiles in {state_dir.run}) and remove the file"
        )
    try:
        return MeshState.from_json(data)
    except (KeyError, TypeError) as error:
        raise MeshError(f"{state_dir.state_file} is malformed: {error}") from None


class LegacyState(MeshError):
    """mesh.json was written by shopmesh 0.1 (version 1): only `down` understands it."""

    def __init__(self, state_dir: StateDir, processes: list[ProcessRecord]) -> None:
        super().__init__(
            f"the mesh in {state_dir.root} was started by an earlier shopmesh: stop it with "
            f"`shopmesh down --state-dir {state_dir.root}`, then start it again"
        )
        self.processes = processes


def legacy_processes(data: dict[str, Any]) -> list[ProcessRecord]:
    """The processes a version-1 mesh.json names: apps, then sidecars, then the gateway."""
    records: list[ProcessRecord] = []
    try:
        pods = data.get("pods", {})
        for kind in ("app", "sidecar"):
            for pod, entry in pods.items():
                process = entry.get(kind)
                if process:
                    records.append(
                        ProcessRecord(
                            f"{pod}.{kind}", kind, [], {}, process["pid"], process["start_ticks"]
                        )
                    )
        gateway = data.get("gateway", {}).get("process")
        if gateway:
            records.append(
                ProcessRecord("gateway", "gateway", [], {}, gateway["pid"], gateway["start_ticks"])
            )
    except (AttributeError, KeyError, TypeError) as error:
        raise MeshError(
            f"mesh.json of an earlier shopmesh is malformed ({error!r}): stop its processes "
            "by hand (their pidfiles are in the run/ directory) and remove the file"
        ) from None
    return records
