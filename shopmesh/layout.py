"""Where everything of a pod lives: its sockets, ports, logs, configs, certificates, data and
names, on this machine and on Kubernetes. Nothing else in shopmesh builds a path or picks a
port; the Envoy builders, the app environment and the Kubernetes generator ask a `Layout`.

Locally (`LocalLayout`) there is one pod per replica (`inventory-0`, `inventory-1`, ...), and
everything lives under one state directory (`StateDir`, default ./var):

    mesh.json                    what runs: ports, pids, commands (shopmesh.local.state)
    run/<pod>/app.sock           the app's socket (only its sidecar connects to it)
    run/<pod>/egress.sock        the sidecar's egress listener (the app's only way out)
    run/<process>.pid            one pidfile per process
    run/collector.sock           the trace collector's OTLP/gRPC socket
    run/reflection.sock          the gateway's reflection service (shopmesh.reflection)
    admin/<envoy>.sock           each Envoy's admin endpoint; the directory is 0700
    log/<process>.log            app and Envoy output; log/<pod>.access.log, gateway.access.log:
                                 the JSON access logs
    certs/                       the local CA, every identity, and edge/: the gateway's
                                 server certificate with `up --edge-tls` (shopmesh.pki)
    data/<service>.db            each service's SQLite file; replicas of a service share it
    data/payments.key            the key of payments' card fingerprints (HMAC), made on first start
    data/signing-keys/           users' access-token signing keys and jwks.json, which the gateway
                                 verifies tokens with (services/users/keys.py)
    data/traces.db               the spans of the last traces (shopmesh.collector)
    storefront/                  the storefront's files (web/dist, `make web`) the gateway serves
    envoy/<pod>.yaml             rendered Envoy configs, and mesh.yaml as the mesh was started
    prometheus.yml               a Prometheus scrape configuration for every Envoy's metrics

On Kubernetes (`shopmesh.k8s.layout.KubernetesLayout`) there is one config per service, shared
by its replicas; the manifests mount volumes at the paths it names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from services.users.keys import JWKS_FILE
from shopmesh.pki import CERTIFICATE_SDS_FILE, EDGE_DIRECTORY
from shopmesh.topology import GATEWAY, Topology

APP = "app"
SIDECAR = "sidecar"
ADMIN_SOCKET_MODE = 0o600
"""Envoy creates its admin socket with this mode (inside a 0700 directory as well)."""
MAX_SOCKET_PATH = 107
"""Unix socket paths must fit in sockaddr_un.sun_path (108 bytes on Linux, with the NUL)."""


class LayoutError(ValueError):
    """The layout cannot hold the mesh (e.g. socket paths too long); the message says why."""


@dataclass(frozen=True)
class Pod:
    """What one sidecar config is rendered for: a replica locally, a Deployment on Kubernetes."""

    service: str
    name: str


@dataclass(frozen=True)
class Endpoint:
    """A TCP address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Upstream:
    """How a cluster finds its endpoints: Envoy's discovery type and the addresses."""

    discovery: str
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class EdgeCertificate:
    """Where the gateway's public listener finds its server certificate: an SDS file naming
    the certificate and key, reloaded when an entry is moved into `watched`."""

    sds: Path
    watched: Path


EDGE_NAMES = ("localhost", "127.0.0.1", "::1")
"""The public names of the local gateway that its edge certificate carries."""


def app_module(service: str) -> str:
    """The Python module that runs `service` (`python -m services.gift_cards`)."""
    return f"services.{service.replace('-', '_')}"


def app_process(pod: str) -> str:
    """The name of a pod's app process in logs, pidfiles and `shopmesh status`."""
    return f"{pod}.{APP}"


def sidecar_process(pod: str) -> str:
    """The name of a pod's Envoy sidecar process."""
    return f"{pod}.{SIDECAR}"


class Layout(Protocol):
    """What the Envoy builders and the app environment need to know about where things are."""

    def pods(self) -> list[Pod]: ...
    def app_socket(self, pod: Pod) -> Path: ...
    def egress_socket(self, pod: Pod) -> Path: ...
    def admin_socket(self, envoy: str) -> Path: ...
    def inbound(self, pod: Pod) -> Endpoint: ...
    def health(self, pod: Pod) -> Endpoint: ...
    def metrics(self, envoy: str) -> Endpoint: ...
    def upstream(self, service: str) -> Upstream: ...
    def identity_dir(self, identity: str) -> Path: ...
    def access_log(self, envoy: str) -> str: ...
    def gateway_listener(self) -> Endpoint: ...
    def edge_certificate(self) -> EdgeCertificate | None: ...  # None: a plaintext gateway
    def gateway_health(self) -> Endpoint: ...
    def descriptor_set(self) -> Path: ...
    # Where the gateway's reflection service listens (shopmesh.reflection).
    def reflection_socket(self) -> Path: ...
    def storefront(self) -> Path: ...  # the storefront's files (shopmesh.envoy.browser)
    def database(self, service: str) -> Path: ...
    # The keys that sign access tokens (read by the sign-in issuer's app), and the JWKS that
    # publishes them (read by the gateway).
    def signing_keys(self) -> Path: ...
    def jwks(self) -> Path: ...


# --- on this machine ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StateDir:
    """The files of one local mesh (see the module docstring); needs no topology, so `down`,
    `logs` and `status` can find their way around any state directory."""

    root: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def admin(self) -> Path:
        return self.root / "admin"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def edge_certs(self) -> Path:
        """The gateway's public server certificate (`up --edge-tls`), issued by the CA."""
        return self.certs / EDGE_DIRECTORY

    @property
    def ca_certificate(self) -> Path:
        """The local CA's certificate: what TLS clients of the gateway trust (`--cacert`)."""
        return self.certs / "ca" / "ca.pem"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def envoy(self) -> Path:
        return self.root / "envoy"

    @property
    def state_file(self) -> Path:
        return self.root / "mesh.json"

    @property
    def prometheus_config(self) -> Path:
        """A Prometheus scrape configuration of the running mesh (shopmesh.local.prometheus)."""
        return self.root / "prometheus.yml"

    @property
    def topology_snapshot(self) -> Path:
        """The topology as the running mesh was started from it (the file may change since)."""
        return self.envoy / "mesh.yaml"

    def pod_dir(self, pod: str) -> Path:
        return self.run / pod

    def app_socket(self, pod: str) -> Path:
        return self.pod_dir(pod) / "app.sock"

    def egress_socket(self, pod: str) -> Path:
        return self.pod_dir(pod) / "egress.sock"

    def admin_socket(self, envoy: str) -> Path:
        return self.admin / f"{envoy}.sock"

    @property
    def collector_socket(self) -> Path:
        """Where the mesh's trace collector receives OTLP/gRPC."""
        return self.run / "collector.sock"

    @property
    def reflection_socket(self) -> Path:
        """Where the gateway's reflection service listens (shopmesh.reflection)."""
        return self.run / "reflection.sock"

    @property
    def traces(self) -> Path:
        """The collector's SQLite file: the spans of the last traces."""
        return self.data / "traces.db"

    def pidfile(self, process: str) -> Path:
        return self.run / f"{process}.pid"

    def log(self, process: str) -> Path:
        return self.logs / f"{process}.log"

    def access_log(self, envoy: str) -> Path:
        return self.logs / f"{envoy}.access.log"

    def envoy_config(self, envoy: str) -> Path:
        return self.envoy / f"{envoy}.yaml"

    def database(self, service: str) -> Path:
        return self.data / f"{service}.db"

    @property
    def signing_keys(self) -> Path:
        """The access-token signing keys and their JWKS (services/users/keys.py)."""
        return self.data / "signing-keys"

    @property
    def storefront(self) -> Path:
        """The storefront's files, copied from web/dist when the mesh starts: Envoy reads them
        when it loads its configuration, so a rebuild changes nothing under a running gateway."""
        return self.root / "storefront"

    @property
    def postgres(self) -> Path:
        """The mesh's Postgres cluster, when it runs on Postgres (shopmesh.local.postgres):
        data, socket directory, log and the roles' passfiles."""
        return self.root / "postgres"

    def make_directories(self, pods: list[Pod]) -> None:
        """Create every directory the processes and rendered configs refer to (Envoy refuses a
        config whose access log directory is missing). Admin sockets get a private one."""
        for directory in (self.run, self.logs, self.data, self.envoy):
            directory.mkdir(parents=True, exist_ok=True)
        self.admin.mkdir(mode=0o700, exist_ok=True)
        self.admin.chmod(0o700)
        for pod in pods:
            self.pod_dir(pod.name).mkdir(exist_ok=True)


@dataclass(frozen=True)
class PodPorts:
    """The TCP ports of one local sidecar."""

    inbound: int
    health: int
    metrics: int


@dataclass(frozen=True)
class GatewayPorts:
    """The TCP ports of the local gateway."""

    listener: int
    health: int
    metrics: int


def local_pods(topology: Topology) -> list[Pod]:
    """One pod per replica, named `<service>-<index>`, in topology order."""
    return [
        Pod(service.name, f"{service.name}-{index}")
        for service in topology.services.values()
        for index in range(service.replicas)
    ]


@dataclass(frozen=True)
class LocalLayout:
    """Everything on one machine under `state`; TCP only on `host` (loopback)."""

    state: StateDir
    topology: Topology
    host: str
    ports: dict[str, PodPorts]
    """Pod name -> its ports; every pod of the topology has an entry."""
    gateway_ports: GatewayPorts
    descriptor: Path
    edge_tls: bool = False
    """Whether the gateway's listener serves TLS with a certificate of the local CA."""

    def pods(self) -> list[Pod]:
        return local_pods(self.topology)

    @property
    def edge_names(self) -> tuple[str, ...]:
        """The names the edge certificate carries: localhost's, the gateway's host, and each
        exposed service's (`grpcurl -authority users` checks the certificate for `users`)."""
        if not self.edge_tls:
            return ()
        return tuple(dict.fromkeys([*EDGE_NAMES, self.host, *self.topology.gateway.exposes]))

    def check_socket_paths(self) -> None:
        """Refuse a state directory so deep that a socket path would not fit."""
        longest = max(
            [self.state.egress_socket(pod.name) for pod in self.pods()]
            + [self.state.admin_socket(envoy) for envoy in [*self.ports, GATEWAY]]
            + [self.state.collector_socket, self.state.reflection_socket],
            key=lambda path: len(str(path).encode()),
        )
        if len(str(longest).encode()) > MAX_SOCKET_PATH:
            raise LayoutError(
                f"the state directory {self.state.root} is too deep for Unix sockets "
                f"({longest} is longer than {MAX_SOCKET_PATH} bytes); use a shorter --state-dir"
            )

    def pod_ports(self, pod: str) -> PodPorts:
        try:
            return self.ports[pod]
        except KeyError:
            raise LayoutError(f"no ports for pod {pod!r} in the local layout") from None

    def app_socket(self, pod: Pod) -> Path:
        return self.state.app_socket(pod.name)

    def egress_socket(self, pod: Pod) -> Path:
        return self.state.egress_socket(pod.name)

    def admin_socket(self, envoy: str) -> Path:
        return self.state.admin_socket(envoy)

    def inbound(self, pod: Pod) -> Endpoint:
        return Endpoint(self.host, self.pod_ports(pod.name).inbound)

    def health(self, pod: Pod) -> Endpoint:
        return Endpoint(self.host, self.pod_ports(pod.name).health)

    def metrics(self, envoy: str) -> Endpoint:
        if envoy == GATEWAY:
            return Endpoint(self.host, self.gateway_ports.metrics)
        return Endpoint(self.host, self.pod_ports(envoy).metrics)

    def upstream(self, service: str) -> Upstream:
        replicas = [pod for pod in self.pods() if pod.service == service]
        return Upstream("STATIC", tuple(self.inbound(pod) for pod in replicas))

    def identity_dir(self, identity: str) -> Path:
        return self.state.certs / identity

    def access_log(self, envoy: str) -> str:
        return str(self.state.access_log(envoy))

    def gateway_listener(self) -> Endpoint:
        return Endpoint(self.host, self.gateway_ports.listener)

    def edge_certificate(self) -> EdgeCertificate | None:
        if not self.edge_tls:
            return None
        directory = self.state.edge_certs
        return EdgeCertificate(directory / CERTIFICATE_SDS_FILE, directory)

    def gateway_health(self) -> Endpoint:
        return Endpoint(self.host, self.gateway_ports.health)

    def descriptor_set(self) -> Path:
        return self.descriptor

    def reflection_socket(self) -> Path:
        return self.state.reflection_socket

    def storefront(self) -> Path:
        return self.state.storefront

    def database(self, service: str) -> Path:
        return self.state.database(service)

    def signing_keys(self) -> Path:
        return self.state.signing_keys

    def jwks(self) -> Path:
        return self.state.signing_keys / JWKS_FILE
