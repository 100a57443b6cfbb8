"""What the page shows, assembled from the running mesh with the code the commands use: the
graph from the topology, golden metrics from the Envoys' stats (`shopmesh stat`'s Sampler),
every process with its health (`shopmesh status`), faults (`shopmesh fault`), traces
(`shopmesh traces`, `shopmesh trace`) and the dashboard's own load run (`shopmesh load`).

Nothing runs while nobody looks: the Envoys are sampled and every process's health checked
when the page asks for the state (at most every MIN_SAMPLE_INTERVAL seconds, however many pages
are open), so an idle dashboard costs the mesh nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shopmesh.collector.spans import SpanRecord
from shopmesh.dashboard.load import LoadControl
from shopmesh.envoy.faults import Fault
from shopmesh.layout import StateDir
from shopmesh.local import faults
from shopmesh.local.errors import MeshError
from shopmesh.local.mesh import COLLECTOR, RunningMesh
from shopmesh.local.status import ProcessStatus, mesh_status
from shopmesh.observe.load import LoadSettings
from shopmesh.observe.stats import SAMPLE_MARGIN, Sampler, sample
from shopmesh.observe.traces import TraceReader, TraceStoreError, TraceSummary, waterfall_rows
from shopmesh.observe.traceview import short
from shopmesh.topology import GATEWAY, Topology

WINDOWS = (10.0, 30.0, 60.0)
"""The windows the page offers for rates, success rates and latencies, in seconds."""
DEFAULT_WINDOW = 30.0
MIN_SAMPLE_INTERVAL = 0.5
log = logging.getLogger("shopmesh.dashboard")


class MeshView:
    """The mesh recorded in `state_dir`, as the page sees it and acts on it."""

    def __init__(self, state_dir: Path) -> None:
        self._paths = StateDir(state_dir.resolve())
        mesh = RunningMesh.attach(self._paths.root)
        if mesh is None:
            raise MeshError(f"no mesh is recorded in {self._paths.root} (start one with up)")
        self._mesh = mesh
        self._stamp = self._state_stamp()
        # Windows up to the longest offered need a sample that much older than the latest.
        self._sampler = Sampler(lambda: sample(self.mesh), keep=max(WINDOWS) + SAMPLE_MARGIN)
        self._sampling = asyncio.Lock()
        self._sampled_at: float | None = None
        self._processes: list[ProcessStatus] = []
        self._traces = TraceReader(self._paths.traces)
        self.load = LoadControl(mesh.gateway_target)

    def _state_stamp(self) -> tuple[int, int] | None:
        try:
            stat = self._paths.state_file.stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_size

    @property
    def mesh(self) -> RunningMesh:
        """The mesh as mesh.json records it now: read again when it changed (a process was
        restarted, with a new pid), kept when it is gone (the mesh is going down)."""
        stamp = self._state_stamp()
        if stamp is not None and stamp != self._stamp:
            self._stamp = stamp
            try:
                found = RunningMesh.attach(self._paths.root)
            except MeshError as error:
                log.warning("mesh.json changed but cannot be read: %s", error)
                found = None
            if found is not None:
                self._mesh = found
        return self._mesh

    @property
    def services(self) -> Sequence[str]:
        return self.mesh.services

    async def state(self, window: float) -> dict[str, Any]:
        """Everything the page shows but traces: graph, stats, processes, load."""
        mesh = self.mesh
        await self._sample(mesh)
        stats = self._sampler.window(window)
        return {
            "generated_unix": time.time(),
            "state_dir": str(mesh.state_dir),
            "gateway": mesh.gateway_address,
            "window_seconds": window,
            "graph": graph(mesh.topology),
            "stats": None if stats is None else stats.as_json(),
            "pods": [
                {
                    "name": pod.name,
                    "service": pod.service,
                    "app": pod.app_name,
                    "sidecar": pod.sidecar_name,
                }
                for pod in mesh.pods.values()
            ],
            "processes": [dataclasses.asdict(row) for row in self._processes],
            "load": self.load.snapshot(),
        }

    async def _sample(self, mesh: RunningMesh) -> None:
        """Read the Envoys' stats and every process's health, unless that was done less than
        MIN_SAMPLE_INTERVAL seconds ago (for this page or another)."""
        async with self._sampling:
            now = time.monotonic()
            if self._sampled_at is None or now - self._sampled_at >= MIN_SAMPLE_INTERVAL:
                _, self._processes = await asyncio.gather(self._sampler.poll(), processes_of(mesh))
                self._sampled_at = time.monotonic()

    async def traces(self, limit: int) -> dict[str, Any]:
        """The newest `limit` traces, and a note when there are none to read."""
        if COLLECTOR not in self.mesh.state.processes:
            note = "spans go to the OTLP endpoint `up` was given: look for traces there"
            return {"traces": [], "note": note}
        try:
            # SQLite reads block: off the event loop, which serves every page.
            summaries = await asyncio.to_thread(self._traces.recent, limit)
        except TraceStoreError as error:
            return {"traces": [], "note": str(error)}
        return {"traces": [trace_row(summary) for summary in summaries], "note": None}

    async def trace(self, trace_id: str) -> dict[str, Any] | None:
        """One trace as a waterfall (None if the collector has no span of it)."""
        try:
            spans = await asyncio.to_thread(self._traces.spans, trace_id)
        except TraceStoreError:
            return None
        return waterfall(trace_id, spans) if spans else None

    async def inject(self, service: str, fault: Fault) -> None:
        await faults.inject(self.mesh, service, fault)
        log.info("fault on %s: %s", service, fault.describe())
        self._sampled_at = None  # the next state shows it, not a sample from before

    async def clear(self, service: str) -> None:
        await faults.clear(self.mesh, service)
        log.info("faults cleared on %s", service)
        self._sampled_at = None

    def start_load(self, settings: LoadSettings) -> dict[str, Any]:
        log.info("load: %s calls/s for %s s", settings.rate, settings.duration)
        return self.load.start(settings)

    def stop_load(self) -> dict[str, Any]:
        return self.load.stop()

    async def close(self) -> None:
        await self.load.close()


def graph(topology: Topology) -> dict[str, Any]:
    """The service graph as the topology draws it: the gateway, every service, and an edge
    per caller and callee with the methods the caller may call."""
    nodes = [{"id": GATEWAY, "kind": "gateway", "replicas": 1}]
    nodes += [
        {"id": name, "kind": "service", "replicas": service.replicas}
        for name, service in topology.services.items()
    ]
    edges = [
        {"caller": GATEWAY, "callee": callee, "methods": list(methods)}
        for callee, methods in topology.gateway.exposes.items()
    ]
    edges += [
        {"caller": caller.name, "callee": callee, "methods": list(methods)}
        for caller in topology.services.values()
        for callee, methods in caller.calls.items()
    ]
    return {"nodes": nodes, "edges": edges}


async def processes_of(mesh: RunningMesh) -> list[ProcessStatus]:
    """Every process with its health, as `shopmesh status` shows it; the dashboard's own row
    without asking itself over HTTP."""
    return await mesh_status(mesh, from_dashboard=True)


def trace_row(summary: TraceSummary) -> dict[str, Any]:
    """A line of the page's trace list: the summary, and its root as the list names it, with
    the method's package left out as `shopmesh traces` does ("OrdersService/PlaceOrder" for
    the gateway's "edge /shop.orders.v1.OrdersService/PlaceOrder", else "service: name")."""
    row = summary.as_json()
    name = short(summary.root_name)
    row["root"]["label"] = (
        name.removeprefix("edge ")
        if summary.root_service == GATEWAY
        else f"{summary.root_service}: {name}"
    )
    return row


def waterfall(trace_id: str, spans: Sequence[SpanRecord]) -> dict[str, Any]:
    """Every span of a trace under its parent, in start order (`waterfall_rows`, as `shopmesh
    trace` draws it): service, operation, offset and duration from the trace's start, status,
    and which attempt of an upstream call it was."""
    start = min(span.start_ns for span in spans)
    end = max(span.end_ns for span in spans)
    return {
        "trace_id": trace_id,
        "start_unix_nano": start,
        "duration_ms": (end - start) / 1e6,
        "span_count": len(spans),
        "services": sorted({span.service for span in spans}),
        "spans": [{**row.as_json(), "name": short(row.span.name)} for row in waterfall_rows(spans)],
    }
