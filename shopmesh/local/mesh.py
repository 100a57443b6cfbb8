"""`RunningMesh`: the handle on a local mesh that `up` returns and `attach` finds again from
mesh.json. It knows the pods and the gateway, starts, restarts and stops their processes, and
waits for health; faults, status and certificates are separate modules that use it.

Every method opens its own connections, so one handle may be used from any event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from services.common.config import GRACE_SECONDS
from shopmesh.envoy.admin import AdminClient, AdminError
from shopmesh.gatewayclient import GatewayTarget
from shopmesh.layout import APP, LocalLayout, StateDir
from shopmesh.local.dashboard import DASHBOARD, dashboard_link, dashboard_serves
from shopmesh.local.errors import MeshError
from shopmesh.local.handles import GatewayHandle, PodHandle
from shopmesh.local.health import check_health, health_channel, http_ok, serving
from shopmesh.local.process import ManagedProcess, spawn
from shopmesh.local.reflection import REFLECTION, reflection_serves
from shopmesh.local.state import POSTGRES, MeshState, read_state
from shopmesh.local.wait import until
from shopmesh.topology import GATEWAY, Topology, TopologyError, load_topology

ENVOY_STOP_SECONDS = 5.0
APP_STOP_MARGIN = 3.0
LOGS = "logs"
"""The log keeper's process name and kind (shopmesh.local.logcap)."""
COLLECTOR = "collector"
"""The trace collector's process name and kind (shopmesh.collector)."""


async def unhealthy_upstreams(admin: AdminClient) -> tuple[int, list[str]]:
    """How many upstream hosts an Envoy has, and the ones that are not healthy."""
    try:
        hosts = await admin.host_health()
    except AdminError as error:
        return 0, [str(error)]
    upstreams = {
        cluster: members for cluster, members in hosts.items() if cluster.startswith("svc_")
    }
    bad = [
        f"{cluster}/{host}: {flags}"
        for cluster, members in upstreams.items()
        for host, flags in members.items()
        if flags != "healthy"
    ]
    return sum(len(members) for members in upstreams.values()), bad


async def upstreams_healthy(admin: AdminClient) -> bool:
    total, bad = await unhealthy_upstreams(admin)
    return total > 0 and not bad


class RunningMesh:
    """A local mesh: its layout, its recorded state, and a handle per pod and the gateway."""

    def __init__(self, layout: LocalLayout, state: MeshState) -> None:
        self.layout = layout
        self.state = state
        self.pods = {pod.name: PodHandle.of(layout, pod) for pod in layout.pods()}
        self.gateway = GatewayHandle.of(layout)
        self.logs: ManagedProcess | None = None
        self.collector: ManagedProcess | None = None
        self.dashboard: ManagedProcess | None = None
        self.reflection: ManagedProcess | None = None
        """The gateway's reflection service (None if the topology offers no reflection)."""
        for record in state.processes.values():
            if record.pid is not None:
                self._attach_process(ManagedProcess(record, self.paths.log(record.name)))

    @classmethod
    def attach(cls, state_dir: Path) -> RunningMesh | None:
        """The mesh recorded in `state_dir`, or None if there is none."""
        paths = StateDir(state_dir.resolve())
        state = read_state(paths)
        if state is None:
            return None
        try:
            topology = load_topology(paths.topology_snapshot)
        except TopologyError as error:
            raise MeshError(f"cannot read the running mesh's topology: {error}") from None
        if state.database == POSTGRES:
            topology = topology.on_postgres()
        layout = LocalLayout(
            paths,
            topology,
            state.host,
            state.pod_ports,
            state.gateway_ports,
            Path(state.descriptor),
            state.edge_tls,
        )
        return cls(layout, state)

    # --- lookup ---

    @property
    def topology(self) -> Topology:
        """The topology the mesh was started from."""
        return self.layout.topology

    @property
    def paths(self) -> StateDir:
        return self.layout.state

    @property
    def state_dir(self) -> Path:
        return self.paths.root

    @property
    def gateway_address(self) -> str:
        """host:port of the edge gateway (gRPC and HTTP/1.1 JSON; TLS with edge TLS)."""
        return self.gateway.address

    @property
    def gateway_target(self) -> GatewayTarget:
        """How clients reach the gateway: plaintext, or TLS trusting the mesh's CA."""
        return self.gateway.target

    @property
    def services(self) -> list[str]:
        return list(self.topology.services)

    def pod(self, name: str) -> PodHandle:
        """The pod called `name` (`inventory-1`)."""
        try:
            return self.pods[name]
        except KeyError:
            raise MeshError(f"no pod {name!r}; pods: {', '.join(self.pods)}") from None

    def replicas(self, service: str) -> list[PodHandle]:
        """Every pod of `service`, in replica order."""
        pods = [pod for pod in self.pods.values() if pod.service == service]
        if not pods:
            raise MeshError(f"no service {service!r}; services: {', '.join(self.services)}")
        return pods

    def admin(self, envoy: str) -> AdminClient:
        """The admin client of a pod's sidecar (by pod name) or of the gateway ("gateway")."""
        return self.gateway.admin if envoy == GATEWAY else self.pod(envoy).admin

    def processes(self) -> list[ManagedProcess]:
        """Every started process: apps, sidecars, the gateway and its reflection service, the
        log keeper, the collector and the dashboard."""
        found: list[ManagedProcess] = []
        for pod in self.pods.values():
            found.extend(p for p in (pod.app, pod.sidecar) if p is not None)
        others = (self.gateway.process, self.reflection, self.logs, self.collector, self.dashboard)
        found.extend(p for p in others if p is not None)
        return found

    def save(self) -> None:
        self.state.save(self.paths)

    # --- starting ---

    def spawn(self, name: str) -> ManagedProcess:
        """Start the recorded process `name` and record its pid."""
        record = self.state.processes[name]
        process = spawn(
            record, self.paths.log(name), self.paths.pidfile(name), self.state.environment
        )
        self._attach_process(process)
        self.save()
        return process

    def _attach_process(self, process: ManagedProcess) -> None:
        if process.kind == GATEWAY:
            self.gateway.process = process
        elif process.kind == LOGS:
            self.logs = process
        elif process.kind == COLLECTOR:
            self.collector = process
        elif process.kind == DASHBOARD:
            self.dashboard = process
        elif process.kind == REFLECTION:
            self.reflection = process
        else:
            pod = self.pods[process.name.rpartition(".")[0]]
            if process.kind == APP:
                pod.app = process
            else:
                pod.sidecar = process

    async def start_pod(
        self, pod: PodHandle, deadline: float, upstreams: Sequence[asyncio.Event] = ()
    ) -> None:
        """Start what is not running of `pod` and return once its app is SERVING. An app that
        calls nothing starts at once; the sidecar waits for `upstreams` (so its first active
        health checks pass); an app that calls others starts once its egress is ready."""
        if not pod.calls and not _running(pod.app):
            self.spawn(pod.app_name)
        for event in upstreams:
            await event.wait()
        if not _running(pod.sidecar):
            # A stale socket (a killed Envoy leaves its egress.sock) would make the bind fail.
            pod.egress_socket.unlink(missing_ok=True)
            self.spawn(pod.sidecar_name)
        # Only what runs now: a dead app being replaced must not fail the wait at once.
        watched = [p for p in (pod.app, pod.sidecar) if p is not None and p.alive()]
        await until(pod.admin.ready, f"{pod.sidecar_name} to be ready", deadline, watched)
        if not _running(pod.app):
            watched.append(self.spawn(pod.app_name))
        async with health_channel(pod.health) as channel:
            await until(
                lambda: serving(channel, pod.grpc_service),
                f"{pod.app_name} to report SERVING",
                deadline,
                watched,
            )

    async def start_collector(self, deadline: float) -> None:
        """Start the trace collector unless it runs; return once it listens."""
        if COLLECTOR not in self.state.processes:
            raise MeshError(
                "this mesh runs no collector: its spans go to the --otlp-endpoint it was "
                "started with"
            )
        if not _running(self.collector):
            self.paths.collector_socket.unlink(missing_ok=True)
            self.spawn(COLLECTOR)
        watched = [p for p in (self.collector,) if p is not None and p.alive()]

        async def listening() -> bool:
            return self.paths.collector_socket.exists()

        await until(listening, "the trace collector to listen", deadline, watched)

    async def start_dashboard(self, deadline: float) -> None:
        """Start the dashboard unless it runs; return once it answers with its token."""
        link = dashboard_link(self.state)
        if link is None:
            raise MeshError("this mesh was started without a dashboard (`up --no-dashboard`)")
        if not _running(self.dashboard):
            self.spawn(DASHBOARD)
        watched = [p for p in (self.dashboard,) if p is not None and p.alive()]
        await until(lambda: dashboard_serves(link), "the dashboard to serve", deadline, watched)

    async def start_reflection(self, deadline: float) -> None:
        """Start the gateway's reflection service unless it runs; return once it serves."""
        if REFLECTION not in self.state.processes:
            raise MeshError("this mesh offers no reflection (gateway.reflection is false)")
        if not _running(self.reflection):
            self.spawn(REFLECTION)
        watched = [p for p in (self.reflection,) if p is not None and p.alive()]
        await until(
            lambda: reflection_serves(self.paths), "the reflection service", deadline, watched
        )

    async def start_gateway(self, deadline: float) -> None:
        if not _running(self.gateway.process):
            self.spawn(GATEWAY)
        watched = [p for p in (self.gateway.process,) if p is not None and p.alive()]
        await until(self.gateway.admin.ready, "gateway to be ready", deadline, watched)
        await until(lambda: http_ok(self.gateway.health_url), "gateway /healthz", deadline, watched)

    async def restart_gateway(self, deadline: float) -> None:
        """Stop the gateway and start it again: it reads its configuration's files anew."""
        if self.gateway.process is not None:
            await self.gateway.process.terminate(ENVOY_STOP_SECONDS)
        await self.start_gateway(deadline)

    async def restart(self, name: str, within: float = 30.0) -> list[str]:
        """Start again whatever of pod `name` (or the gateway, its `reflection` service, the
        log keeper `logs`, the `collector` or the `dashboard`) is not running, and wait until
        it serves; returns the processes started (none if everything ran)."""
        deadline = time.monotonic() + within
        before = {process.name: process.pid for process in self.processes() if process.alive()}
        if name == GATEWAY:
            await self.start_gateway(deadline)
        elif name == LOGS:
            if not _running(self.logs):
                self.spawn(LOGS)
        elif name == COLLECTOR:
            await self.start_collector(deadline)
        elif name == REFLECTION:
            await self.start_reflection(deadline)
        elif name == DASHBOARD:
            await self.start_dashboard(deadline)
        else:
            await self.start_pod(self.pod(name), deadline)
        return [p.name for p in self.processes() if p.alive() and before.get(p.name) != p.pid]

    # --- one app ---

    def signal_app(self, pod: str, signum: int) -> None:
        """Send `signum` to a pod's app (e.g. SIGTERM for a graceful stop under load)."""
        handle = self.pod(pod)
        if not _running(handle.app):
            raise MeshError(f"{handle.app_name} is not running")
        assert handle.app is not None
        handle.app.send(signum)

    async def wait_app_exit(self, pod: str, within: float = 15.0) -> int | None:
        """Wait for a pod's app to exit; its exit status (None if unknown). MeshError if it
        still runs after `within` seconds."""
        handle = self.pod(pod)
        if handle.app is not None and not await handle.app.wait(within):
            raise MeshError(f"{handle.app_name} still runs after {within}s")
        return handle.app.returncode if handle.app is not None else None

    async def stop_app(self, pod: str, within: float = 15.0) -> int | None:
        """SIGTERM a pod's app (it drains) and wait for it to exit (SIGKILL after `within` s);
        returns its exit status. Its sidecar keeps running; the app socket is removed."""
        handle = self.pod(pod)
        if handle.app is not None:
            await handle.app.terminate(within)
        handle.app_socket.unlink(missing_ok=True)
        self.paths.pidfile(handle.app_name).unlink(missing_ok=True)
        return handle.app.returncode if handle.app is not None else None

    async def start_app(self, pod: str, within: float = 30.0) -> None:
        """Start a pod's app again (after `stop_app` or a crash) and wait until its sidecar's
        health listener reports it SERVING."""
        handle = self.pod(pod)
        if _running(handle.app):
            raise MeshError(f"{handle.app_name} is already running")
        await self.start_pod(handle, time.monotonic() + within)

    async def app_health(self, pod: str) -> str:
        """A pod's app health through its sidecar's health listener (SERVING, NOT_SERVING...)."""
        handle = self.pod(pod)
        async with health_channel(handle.health) as channel:
            return await check_health(channel, handle.grpc_service)

    # --- the whole mesh ---

    async def wait_healthy(self, within: float = 30.0) -> None:
        """Wait until the mesh is back to its steady state: every process alive, every app
        SERVING, every Envoy ready, and every upstream host healthy in every caller and the
        gateway (no failed health checks, no outlier ejections; an ejection lasts the
        topology's base_ejection_time or more). Tests that inject failures call this after
        undoing them, so the next test starts from a healthy mesh."""
        deadline = time.monotonic() + within
        processes = self.processes()
        for pod in self.pods.values():
            async with health_channel(pod.health) as channel:
                await until(
                    functools.partial(serving, channel, pod.grpc_service),
                    f"{pod.app_name} to report SERVING",
                    deadline,
                    processes,
                )
        for envoy in [*self.pods, GATEWAY]:
            await until(self.admin(envoy).ready, f"{envoy} ready", deadline)
        if REFLECTION in self.state.processes:
            await until(
                lambda: reflection_serves(self.paths), "the reflection service", deadline, processes
            )
        callers = [pod.name for pod in self.pods.values() if pod.calls] + [GATEWAY]
        for caller in callers:
            await until(
                functools.partial(upstreams_healthy, self.admin(caller)),
                f"every upstream host of {caller} to be healthy",
                deadline,
                processes,
            )

    async def stop(self) -> None:
        """Stop everything: the dashboard first (it may be sending load), then the apps
        (SIGINT: they finish in-flight calls, still reachable through their sidecars, and skip
        the drain period — with the whole mesh going down there is no other replica to move
        traffic to), callers before the services they call; then every Envoy and the gateway's
        reflection service, then the collector and the log keeper. Stragglers get SIGKILL.
        Sockets, pidfiles and mesh.json go; data, certs and logs stay. Safe to call twice,
        and after a failed start."""
        if self.dashboard is not None:
            await self.dashboard.terminate(ENVOY_STOP_SECONDS)
        for wave in reversed(self.topology.start_waves()):
            apps = [p.app for p in self.pods.values() if p.service in wave and p.app is not None]
            await asyncio.gather(
                *(app.terminate(_app_stop_seconds(app), signal.SIGINT) for app in apps)
            )
        envoys = [p.sidecar for p in self.pods.values() if p.sidecar is not None]
        envoys += [p for p in (self.gateway.process, self.reflection) if p is not None]
        await asyncio.gather(*(envoy.terminate(ENVOY_STOP_SECONDS) for envoy in envoys))
        # Last: it receives what the apps and Envoys flush as they stop.
        for keeper in (self.collector, self.logs):
            if keeper is not None:
                await keeper.terminate(ENVOY_STOP_SECONDS)
        survivors = [process.name for process in self.processes() if process.alive()]
        remove_runtime_files(self.paths)
        if survivors:
            raise MeshError(f"could not stop: {', '.join(survivors)}")


def _running(process: ManagedProcess | None) -> bool:
    return process is not None and process.alive()


def _app_stop_seconds(app: ManagedProcess) -> float:
    return float(app.record.env.get(GRACE_SECONDS, "5")) + APP_STOP_MARGIN


def remove_runtime_files(paths: StateDir) -> None:
    """Remove what only a running mesh needs: sockets, pidfiles and mesh.json."""
    for directory in (paths.run, paths.admin):
        if not directory.is_dir():
            continue
        for path in sorted(directory.rglob("*"), reverse=True):
            if path.suffix in (".sock", ".pid"):
                path.unlink(missing_ok=True)
            elif path.is_dir():
                with contextlib.suppress(OSError):
                    path.rmdir()
        with contextlib.suppress(OSError):
            directory.rmdir()
    paths.state_file.unlink(missing_ok=True)
