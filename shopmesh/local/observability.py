"""What the local mesh does to be watched: where spans go (the mesh's own collector, or the
user's with --otlp-endpoint), how many calls are traced, and the collector's process."""

from __future__ import annotations

from pathlib import Path

from shopmesh.appenv import AppTracing
from shopmesh.collector.store import DEFAULT_MAX_TRACES as DEFAULT_MAX_TRACES
from shopmesh.envoy.tracing import Tracing
from shopmesh.layout import Endpoint, StateDir
from shopmesh.local.errors import MeshError
from shopmesh.local.mesh import COLLECTOR
from shopmesh.local.state import ProcessRecord

DEFAULT_SAMPLING = 1.0
"""Every call from outside: a call a user just made can always be looked up by the trace id
the gateway returned. It costs about 19 ms of CPU per checkout (29 % of the checkout
throughput at saturation on 2 cores; 10 % sampling costs 3 %): `make bench
BENCH_ARGS=--tracing`, figures in the README."""


def otlp_endpoint(value: str) -> Endpoint:
    """`HOST:PORT` of a user's OTLP/gRPC collector (Jaeger, Tempo, an OpenTelemetry
    Collector)."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MeshError(f"--otlp-endpoint {value!r}: expected HOST:PORT, e.g. 127.0.0.1:4317")
    return Endpoint(host.strip("[]"), int(port))


def envoy_tracing(paths: StateDir, sampling: float, external: Endpoint | None) -> Tracing:
    """How every Envoy traces: to the mesh's collector socket, or to `external`."""
    return Tracing(external or paths.collector_socket, sampling)


def app_tracing(paths: StateDir, sampling: float, external: Endpoint | None) -> AppTracing:
    """How every app traces: the same collector, as the OTLP exporter names it."""
    if external is not None:
        return AppTracing(f"http://{external}", sampling)
    return AppTracing(f"unix://{paths.collector_socket}", sampling)


def collector_record(python: Path, paths: StateDir, max_traces: int) -> ProcessRecord:
    """The collector, which keeps the last `max_traces` traces under the state directory."""
    command = [
        str(python),
        "-m",
        "shopmesh.collector",
        f"unix:{paths.collector_socket}",
        str(paths.traces),
        "--max-traces",
        str(max_traces),
    ]
    return ProcessRecord(COLLECTOR, COLLECTOR, command, {})
