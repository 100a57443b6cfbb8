"""Handles of a running local mesh's parts: a pod (its app and sidecar) and the gateway, with
every address and file of theirs as the layout names it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shopmesh.envoy.admin import AdminClient
from shopmesh.envoy.gateway import GATEWAY_HEALTH_PATH
from shopmesh.gatewayclient import GatewayTarget
from shopmesh.layout import (
    GatewayPorts,
    LocalLayout,
    Pod,
    PodPorts,
    app_process,
    sidecar_process,
)
from shopmesh.local.process import ManagedProcess
from shopmesh.topology import GATEWAY


@dataclass
class PodHandle:
    """One replica: its addresses and files, and its app and sidecar processes."""

    pod: Pod
    grpc_service: str
    calls: tuple[str, ...]
    """The services this pod's app calls (through its egress socket)."""
    host: str
    ports: PodPorts
    app_socket: Path
    egress_socket: Path
    db_path: Path
    app_log: Path
    sidecar_log: Path
    access_log: Path
    sidecar_config: Path
    admin: AdminClient
    app: ManagedProcess | None = None
    sidecar: ManagedProcess | None = None

    @classmethod
    def of(cls, layout: LocalLayout, pod: Pod) -> PodHandle:
        state = layout.state
        service = layout.topology.services[pod.service]
        return cls(
            pod=pod,
            grpc_service=service.grpc_service,
            calls=tuple(service.calls),
            host=layout.host,
            ports=layout.pod_ports(pod.name),
            app_socket=layout.app_socket(pod),
            egress_socket=layout.egress_socket(pod),
            db_path=layout.database(pod.service),
            app_log=state.log(app_process(pod.name)),
            sidecar_log=state.log(sidecar_process(pod.name)),
            access_log=state.access_log(pod.name),
            sidecar_config=state.envoy_config(pod.name),
            admin=AdminClient(sidecar_process(pod.name), layout.admin_socket(pod.name)),
        )

    @property
    def name(self) -> str:
        """The pod's name (`inventory-1`)."""
        return self.pod.name

    @property
    def service(self) -> str:
        return self.pod.service

    @property
    def app_name(self) -> str:
        """The app process's name in logs, pidfiles and `shopmesh status` (`users-0.app`)."""
        return app_process(self.pod.name)

    @property
    def sidecar_name(self) -> str:
        return sidecar_process(self.pod.name)

    @property
    def inbound(self) -> str:
        """The sidecar's mTLS inbound address, host:port."""
        return f"{self.host}:{self.ports.inbound}"

    @property
    def health(self) -> str:
        """The sidecar's plaintext gRPC health listener, host:port."""
        return f"{self.host}:{self.ports.health}"

    @property
    def metrics_url(self) -> str:
        """Where Prometheus scrapes the sidecar."""
        return f"http://{self.host}:{self.ports.metrics}/stats/prometheus"


@dataclass
class GatewayHandle:
    """The edge gateway: where clients connect, its files, and its process."""

    host: str
    ports: GatewayPorts
    log: Path
    access_log: Path
    config: Path
    admin: AdminClient
    ca: Path | None = None
    """What its listener's certificate chains to (None: the listener is plaintext)."""
    process: ManagedProcess | None = None

    @classmethod
    def of(cls, layout: LocalLayout) -> GatewayHandle:
        state = layout.state
        return cls(
            host=layout.host,
            ports=layout.gateway_ports,
            log=state.log(GATEWAY),
            access_log=state.access_log(GATEWAY),
            config=state.envoy_config(GATEWAY),
            admin=AdminClient(GATEWAY, layout.admin_socket(GATEWAY)),
            ca=state.ca_certificate if layout.edge_tls else None,
        )

    @property
    def address(self) -> str:
        """Where gRPC and JSON clients connect, host:port (plaintext or TLS: `target`)."""
        return f"{self.host}:{self.ports.listener}"

    @property
    def target(self) -> GatewayTarget:
        """How clients connect: the address, and TLS with the CA when the mesh has edge TLS."""
        return GatewayTarget(self.address, self.ca)

    @property
    def health_url(self) -> str:
        return f"http://{self.host}:{self.ports.health}{GATEWAY_HEALTH_PATH}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports.metrics}/stats/prometheus"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None
