"""The mesh topology (envoy/mesh.yaml): the model, and the strict loader that builds it."""

from shopmesh.topology.loader import load_topology, parse_topology
from shopmesh.topology.model import (
    GATEWAY,
    HEALTH_SERVICE,
    REFLECTION_SERVICE,
    AdaptiveConcurrency,
    CircuitBreaker,
    EdgeLimits,
    Gateway,
    HealthCheck,
    LocalRateLimit,
    OutlierDetection,
    RetryBudget,
    RetryPolicy,
    RoutePolicy,
    Service,
    Topology,
    TopologyError,
    UpstreamPolicy,
)

__all__ = [
    "GATEWAY",
    "HEALTH_SERVICE",
    "REFLECTION_SERVICE",
    "AdaptiveConcurrency",
    "CircuitBreaker",
    "EdgeLimits",
    "Gateway",
    "HealthCheck",
    "LocalRateLimit",
    "OutlierDetection",
    "RetryBudget",
    "RetryPolicy",
    "RoutePolicy",
    "Service",
    "Topology",
    "TopologyError",
    "UpstreamPolicy",
    "load_topology",
    "parse_topology",
]
