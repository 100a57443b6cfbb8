"""What the fuzzer aims at: every gRPC method of the mesh's services (from the descriptor set
the gateway transcodes with), whether the gateway exposes it, whether it streams, its request
message, and how long the edge may take to answer it; plus health and reflection."""

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
    route_timeout: float
    """Seconds: the gateway's route timeout for it (its service's for an unexposed method)."""


@dataclass(frozen=True)
class Catalog:
    methods: tuple[Method, ...]
    edge_timeout: float
    """The edge's request timeout in mesh.yaml, None while it defines none."""

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

    def answer_within(self, path: str) -> float:
        """Seconds within which the edge must end a unary call on `path`."""
        return self.edge_timeout

    def deadline_source(self) -> str:
        return f"the edge request timeout in mesh.yaml ({self.edge_timeout:g} s)"


def edge_request_timeout(topology: Topology) -> float:
    """The gateway's request timeout (`gateway.limits.request_timeout`)."""
    return topology.gateway.limits.request_timeout.total_seconds()


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
        policy = topology.policies[name]
        for method in pool.FindServiceByName(service.grpc_service).methods:
            route = policy.methods.get(method.name, policy.route)
            methods.append(
                Method(
                    path=f"/{service.grpc_service}/{method.name}",
                    exposed=method.name in exposed,
                    streaming=method.client_streaming or method.server_streaming,
                    message=method.input_type,
                    route_timeout=route.route_timeout.total_seconds(),
                )
            )
    longest = max(m.route_timeout for m in methods)
    methods.append(Method(REFLECTION_INFO, topology.gateway.reflection, True, None, 0.0))
    methods.append(Method(HEALTH_CHECK, topology.gateway.health, False, None, longest))
    return Catalog(tuple(methods), edge_request_timeout(topology))
