"""`shopmesh`: run the mesh on this machine (`up`, `down`, `status`, `logs`, `fault`,
`restart`, `certs rotate`, `keys rotate`, `dashboard`), send it shopper traffic (`load`), run
the services without it (`run`), and generate what Kubernetes needs (`k8s render`,
`k8s issue-certs`). The Makefile's targets call these commands."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from services.common.config import LOG_LEVEL
from shopmesh import options
from shopmesh.appenv import is_mesh_owned
from shopmesh.connection_help import connection_help
from shopmesh.envoy.admin import AdminError
from shopmesh.envoy.faults import Fault, FaultError
from shopmesh.k8s.commands import k8s_group
from shopmesh.layout import LayoutError, StateDir
from shopmesh.local import certs, faults, signing
from shopmesh.local.dashboard import DEFAULT_DASHBOARD_PORT, dashboard_link
from shopmesh.local.errors import MeshError
from shopmesh.local.mesh import RunningMesh
from shopmesh.local.observability import DEFAULT_MAX_TRACES, DEFAULT_SAMPLING
from shopmesh.local.standalone import run_standalone
from shopmesh.local.startup import DATABASES, DEFAULT_DESCRIPTOR, MeshOptions, down, up
from shopmesh.local.state import SQLITE
from shopmesh.local.status import mesh_status
from shopmesh.observe.commands import (
    audit_command,
    load_command,
    tap_command,
    trace_command,
    traces_command,
)
from shopmesh.observe.statcommand import stat_command
from shopmesh.pki import PkiError
from shopmesh.terminal import attached, console, errors, run, tool
from shopmesh.topology import TopologyError, load_topology

# Errors a user can act on: each becomes one line on stderr and exit status 1.
USER_ERRORS = (MeshError, AdminError, FaultError, TopologyError, PkiError, LayoutError)


class Shopmesh(click.Group):
    """The command group: every error a user can act on is one line, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (*USER_ERRORS, OSError) as error:
            # OSError: the machine refused something (an unusable --state-dir, a full disk).
            errors.print(f"[red]error:[/red] {error}", markup=True, soft_wrap=True)
            sys.exit(1)


@click.group(
    cls=Shopmesh,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
def main() -> None:
    """Run the shopmesh services, each with its Envoy sidecar, and the edge gateway."""


@main.command(name="up")
@options.state_dir
@options.topology
@click.option(
    "--descriptor",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_DESCRIPTOR,
    help="Descriptor set of the contracts (make generate writes it).",
)
@click.option(
    "--gateway-port",
    type=click.IntRange(0, 65535),
    default=8080,
    help="Port of the gateway on 127.0.0.1 (0: any free port).",
)
@options.log_level
@click.option(
    "--envoy-log-level",
    type=click.Choice(["trace", "debug", "info", "warning", "error", "critical", "off"]),
    default="info",
    help="Log level of every Envoy.",
)
@click.option(
    "--sampling",
    type=click.FloatRange(0, 1),
    default=DEFAULT_SAMPLING,
    help="Share of the calls from outside that are traced (0: none).",
)
@click.option(
    "--otlp-endpoint",
    metavar="HOST:PORT",
    help="Send every span to this OTLP/gRPC collector (Jaeger, Tempo...) instead of the mesh's.",
)
@click.option(
    "--max-traces",
    type=click.IntRange(1),
    default=DEFAULT_MAX_TRACES,
    help="Traces the mesh's own collector keeps.",
)
@click.option(
    "--dashboard-port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_DASHBOARD_PORT,
    help="Port of the dashboard on 127.0.0.1 (0: any free port).",
)
@click.option("--dashboard/--no-dashboard", default=True, help="Start the dashboard (a web page).")
@click.option(
    "--edge-tls",
    is_flag=True,
    help="Serve the gateway over TLS with a certificate of the mesh's CA (clients: --cacert).",
)
@click.option(
    "--db",
    "database",
    type=click.Choice(DATABASES),
    default=SQLITE,
    help="Each service's data: an SQLite file, or its own database in a local Postgres "
    "(Debian's postgresql) under the state directory.",
)
@click.option("--timeout", type=float, default=30.0, help="Seconds to wait for health.")
def up_command(
    state_dir: Path,
    topology: Path,
    descriptor: Path,
    gateway_port: int,
    log_level: str,
    envoy_log_level: str,
    sampling: float,
    otlp_endpoint: str | None,
    max_traces: int,
    dashboard_port: int,
    dashboard: bool,
    edge_tls: bool,
    database: str,
    timeout: float,
) -> None:
    """Start every app, sidecar, the gateway and the dashboard; wait until all are healthy.

    Apps get the environment `up` runs in, except what the mesh sets for each of them
    (SHOPMESH_LISTEN, SHOPMESH_DB_PATH, SHOPMESH_DATABASE_URL, SHOPMESH_UPSTREAM_*,
    SHOPMESH_GRACE_SECONDS,
    SHOPMESH_DRAIN_SECONDS, SHOPMESH_LOG_LEVEL): service settings such as
    SHOPMESH_ORDERS_RECOVERY_INTERVAL and OTEL_* variables pass through."""
    ignored = [name for name in os.environ if is_mesh_owned(name) and name != LOG_LEVEL]
    if ignored:
        errors.print(f"ignored (the mesh sets them for each app): {', '.join(sorted(ignored))}")
    options = MeshOptions(
        state_dir=state_dir,
        topology=topology,
        descriptor=descriptor,
        gateway_port=gateway_port,
        startup_timeout=timeout,
        log_level=log_level.upper(),
        envoy_log_level=envoy_log_level,
        sampling=sampling,
        otlp_endpoint=otlp_endpoint,
        max_traces=max_traces,
        dashboard=dashboard,
        dashboard_port=dashboard_port,
        edge_tls=edge_tls,
        database=database,
    )
    try:
        mesh = run(up(options))
    except KeyboardInterrupt:
        errors.print("interrupted: everything started was stopped")
        sys.exit(130)
    console.print(
        f"[green]mesh up[/green] in {mesh.state.up_seconds or 0:.2f} s: {len(mesh.pods)} apps "
        "with their sidecars, and the gateway"
    )
    # One line each, never wrapped: a URL or path broken over two lines cannot be pasted.
    console.print(f"gateway: [bold]{mesh.gateway_target.url}[/bold]", soft_wrap=True)
    console.print(f"state: {mesh.state_dir}", soft_wrap=True)
    where = otlp_endpoint or f"the mesh's collector (last {max_traces} kept)"
    console.print(f"tracing {sampling:.0%} of the calls from outside, spans to {where}")
    link = dashboard_link(mesh.state)
    if link is not None:
        # soft_wrap: the link must stay on one line to be clicked or pasted whole.
        console.print(f"dashboard: [bold]{link.url}[/bold]", soft_wrap=True)
    help_text = connection_help(mesh.gateway_target, state_dir)
    console.print(help_text, soft_wrap=True, markup=False)


@main.command(name="down")
@options.state_dir
def down_command(state_dir: Path) -> None:
    """Stop everything (apps drain first); keep data, certificates and logs."""
    started = time.monotonic()
    stopped = run(down(StateDir(state_dir.resolve())))
    if stopped is None:
        console.print(f"no mesh is running in {state_dir}")
        return
    console.print(
        f"[green]mesh down[/green]: {len(stopped)} processes stopped in "
        f"{time.monotonic() - started:.2f} s; data kept in {StateDir(state_dir).data}"
    )


@main.command(name="status")
@options.state_dir
def status_command(state_dir: Path) -> None:
    """Each app, sidecar, the gateway and the log keeper: pid, alive, health. Exit 1 unless
    all are healthy."""
    mesh = attached(state_dir)
    rows = run(mesh_status(mesh))
    table = Table(title=f"shopmesh in {mesh.state_dir} · gateway {mesh.gateway_target.url}")
    for column in ("process", "kind", "pid", "alive", "health"):
        table.add_column(column, no_wrap=True)
    table.add_column("details")
    for row in rows:
        colour = "green" if row.healthy else "red"
        table.add_row(
            row.name,
            row.kind,
            str(row.pid or "-"),
            "yes" if row.alive else "[red]no[/red]",
            f"[{colour}]{row.health}[/{colour}]",
            row.detail,
        )
    console.print(table)
    stopped = [row.name.rpartition(".")[0] for row in rows if not row.alive and "." in row.name]
    if stopped:
        console.print(f"bring a stopped process back with: shopmesh restart {stopped[0]}")
    if not all(row.healthy for row in rows):
        sys.exit(1)


@main.command(name="dashboard")
@options.state_dir
def dashboard_command(state_dir: Path) -> None:
    """Print the link to the dashboard of the running mesh, with its token."""
    mesh = attached(state_dir)
    link = dashboard_link(mesh.state)
    if link is None:
        raise MeshError(
            f"the mesh in {state_dir} was started without a dashboard (`up --no-dashboard`)"
        )
    console.print(link.url, soft_wrap=True, markup=False)


@main.command(name="restart")
@options.state_dir
@click.argument("name")
@click.option("--timeout", type=float, default=30.0, help="Seconds to wait for health.")
def restart_command(state_dir: Path, name: str, timeout: float) -> None:
    """Start again what is not running of pod NAME (its app, its sidecar) or of the gateway
    (NAME `gateway`), with the ports and configuration the mesh started with."""
    mesh = attached(state_dir)
    started = run(mesh.restart(name, timeout))
    if started:
        console.print(f"started {', '.join(started)}; {name} serves")
    else:
        console.print(f"{name} was running: nothing to do")


def resolve_log(state: StateDir, name: str) -> Path:
    """A log by process name (`orders-0.app`, `orders-0.sidecar`, `gateway`), access log
    (`orders-0.access`), or pod name alone for its app (`orders-0`)."""
    for candidate in (name, f"{name}.app", f"{name}-0.app"):
        path = state.log(candidate)
        if path.is_file():
            return path
    names = sorted(path.name.removesuffix(".log") for path in state.logs.glob("*.log"))
    known = ", ".join(names) or "none yet"
    raise click.BadParameter(f"no log {name!r} in {state.logs}; logs: {known}", param_hint="NAME")


@main.command(name="logs")
@options.state_dir
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what is appended.")
@click.option("-n", "--lines", type=int, default=50, help="Lines to show.")
def logs_command(state_dir: Path, name: str, follow: bool, lines: int) -> None:
    """Show a process's log: NAME is a pod (its app), `<pod>.sidecar`, `<pod>.access`,
    `gateway` or `logs`."""
    path = resolve_log(StateDir(state_dir), name)
    with path.open("rb") as file:
        for line in file.read().decode(errors="replace").splitlines()[-lines:] if lines else []:
            click.echo(line)
        if not follow:
            return
        try:
            while True:
                if file.tell() > path.stat().st_size:
                    file.seek(0)  # the log keeper emptied it (its earlier part is in .1)
                chunk = file.read()
                if chunk:
                    click.echo(chunk.decode(errors="replace"), nl=False)
                else:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            return


@main.command(name="fault")
@options.state_dir
@click.argument("service")
@click.option("--abort-percent", type=click.IntRange(0, 100), help="Share of calls to fail.")
@click.option(
    "--status", "grpc_status", help="gRPC status of aborted calls: a name or 1-16 [UNAVAILABLE]."
)
@click.option("--delay-ms", type=click.IntRange(0), help="Delay added to calls.")
@click.option("--delay-percent", type=click.IntRange(0, 100), help="Share delayed [100].")
@click.option("--clear", is_flag=True, help="Remove every fault from SERVICE.")
def fault_command(
    state_dir: Path,
    service: str,
    abort_percent: int | None,
    grpc_status: str | None,
    delay_ms: int | None,
    delay_percent: int | None,
    clear: bool,
) -> None:
    """Inject faults into calls to SERVICE at its sidecars, at runtime (no restart)."""
    mesh = attached(state_dir)
    if clear:
        if any(v is not None for v in (abort_percent, grpc_status, delay_ms, delay_percent)):
            raise click.UsageError("--clear takes no other fault option")
        run(faults.clear(mesh, service))
        console.print(f"faults cleared on {service}")
        return
    if abort_percent is None and delay_ms is None:
        raise click.UsageError("give --abort-percent (and --status), --delay-ms, or --clear")
    fault = Fault.of(
        abort_percent=abort_percent,
        grpc_status=grpc_status,
        delay_ms=delay_ms,
        delay_percent=delay_percent,
    )
    run(faults.inject(mesh, service, fault))
    replicas = len(mesh.replicas(service))
    where = f"{replicas} replica{'s' if replicas != 1 else ''}"
    console.print(f"fault on {service} ({where}): {fault.describe()}")
    console.print(f"undo with: {tool('shopmesh')} fault {service} --clear")


@main.group(name="certs")
def certs_group() -> None:
    """The local CA and the identities' certificates."""


@certs_group.command(name="rotate")
@options.state_dir
@click.option(
    "--topology",
    type=click.Path(path_type=Path, dir_okay=False),
    default=options.DEFAULT_TOPOLOGY,
    help="The identities to rotate when no mesh runs (a running mesh uses its own).",
)
def rotate_command(state_dir: Path, topology: Path) -> None:
    """Re-issue every identity's certificate in place, and the gateway's public one when the
    running mesh serves TLS (`up --edge-tls`). A running mesh loads the new ones through SDS
    without a restart; this waits until every Envoy serves them."""
    mesh = RunningMesh.attach(state_dir)
    if mesh is not None:
        serials = run(certs.rotate(mesh))
        console.print(f"rotated {len(serials)} certificates; every Envoy serves the new ones")
        return
    identities = load_topology(topology).spiffe_ids
    serials = certs.rotate_certificates(StateDir(state_dir.resolve()).certs, identities)
    console.print(f"rotated {len(serials)} certificates (no mesh running)")


@main.group(name="keys")
def keys_group() -> None:
    """The keys that sign shoppers' access tokens (users.SignIn)."""


@keys_group.command(name="rotate")
@options.state_dir
@click.option("--force", is_flag=True, help="Even if tokens signed by the dropped key may live.")
def keys_rotate_command(state_dir: Path, force: bool) -> None:
    """Make a new signing key; the previous one stays in the JWKS, so tokens it signed keep
    working until they expire. In a running mesh the gateway first restarts to load the JWKS
    that lists the new key, then users signs with it (the edge is down for about a second:
    open streams end and clients reconnect)."""
    mesh = RunningMesh.attach(state_dir)
    if mesh is None:
        ring = signing.rotate_keys(StateDir(state_dir.resolve()), force=force)
        where = "no mesh running"
    else:
        ring = run(signing.rotate(mesh, force=force))
        where = "the gateway verifies with it"
    previous = ring.previous.kid if ring.previous else "none"
    console.print(f"signing key {ring.current.kid} (previous {previous}); {where}")


@main.command(name="run")
@options.topology
@click.option("--host", default="127.0.0.1", help="Where every service listens.")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=options.DEFAULT_STATE_DIR / "data",
    help="The services' SQLite files.",
)
@options.log_level
def run_command(topology: Path, host: str, data_dir: Path, log_level: str) -> None:
    """Run every service of the topology as a plain process, without the mesh: each on its
    `standalone_port`, calling its upstreams there directly (no Envoy, no mTLS, no retries).
    Ctrl-C stops them all."""
    status = run_standalone(load_topology(topology), host, data_dir, log_level.upper())
    sys.exit(status)


for command in (load_command, traces_command, trace_command, tap_command, audit_command, k8s_group):
    main.add_command(command)
main.add_command(stat_command)

if __name__ == "__main__":
    main()
