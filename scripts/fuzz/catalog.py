"""What the fuzzer aims at: every gRPC method of the mesh's services (from the descriptor set
the gateway transcodes with), whether the gateway exposes it, whether it streams, its request
message; plus health and reflection; and how long the edge may take to answer a unary call."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor

from shopmesh.topology import HEALTH_SERVICE, REFLECTION_SERVICE, Topology

REFLECTION_INFO = f"/{REFLECTION_SERVICE}/ServerReflectionInfo"
HEALTH_CHECK = f"/{HEALTH_SERVICE}/Check"


@dataclass(frozen=True)
class Method:
    """One gRPC method as the gateway sees it."""

    path: str
    exposed: bool
    streaming: bool
    message: Descriptor | None
    """The request message (None for health and reflection, which the fuzzer does not load)."""


@dataclass(frozen=True)
class Catalog:
    methods: tuple[Method, ...]
    edge_timeout: float
    """Seconds within which the edge must end every unary call (mesh.yaml
    gateway.limits.request_timeout)."""

    @property
    def exposed(self) -> list[Method]:
        return [m for m in self.methods if m.exposed]

    @property
    def unexposed(self) -> list[Method]:
        return [m for m in self.methods if not m.exposed]

    @property
    def streaming_names(self) -> tuple[str, ...]:
        """The last path segment of every streaming method."""
        return tuple(m.path.rsplit("/", 1)[1] for m in self.methods if m.streaming)

    def streams(self, path: str) -> bool:
        """Whether a (possibly mangled) path may reach a streaming method, where a call may
        last as long as the caller wants: such calls are not waited for."""
        return any(name in path for name in self.streaming_names)

    def deadline_source(self) -> str:
        return f"the edge request timeout in mesh.yaml ({self.edge_timeout:g} s)"


def load_pool(descriptor_set: Path) -> descriptor_pool.DescriptorPool:
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:  # protoc writes dependencies first
        pool.Add(file)
    return pool


def catalog(topology: Topology, descriptor_set: Path) -> Catalog:
    """Every method of every service in `topology`, and health and reflection."""
    pool = load_pool(descriptor_set)
    methods = []
    for name, service in topology.services.items():
        exposed = topology.gateway.exposes.get(name, ())
        for method in pool.FindServiceByName(service.grpc_service).methods:
            methods.append(
                Method(
                    path=f"/{service.grpc_service}/{method.name}",
                    exposed=method.name in exposed,
                    streaming=method.client_streaming or method.server_streaming,
                    message=method.input_type,
                )
            )
    methods.append(Method(REFLECTION_INFO, topology.gateway.reflection, True, None))
    methods.append(Method(HEALTH_CHECK, topology.gateway.health, False, None))
    return Catalog(tuple(methods), topology.gateway.limits.request_timeout.total_seconds())
