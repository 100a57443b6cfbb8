"""`shopmesh`: run the local mesh. `up`, `down`, `status`, `logs`, `fault`, `certs rotate`.

Every command takes `--state-dir` (default ./var) and `--topology` (default envoy/mesh.yaml);
the Makefile's `up`, `down`, `status` and `logs` targets call these commands.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from shopmesh.supervisor import (
    DEFAULT_DESCRIPTOR,
    DEFAULT_STATE_DIR,
    DEFAULT_TOPOLOGY,
    MeshError,
    MeshOptions,
    RunningMesh,
    StateDir,
    rotate_certificates,
    up,
)
from shopmesh.topology import TopologyError, load_topology

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; a MeshError becomes a message and exit status 1."""
    try:
        return asyncio.run(coroutine)
    except MeshError as error:
        errors.print(f"[red]error:[/red] {error}", markup=True, soft_wrap=True)
        sys.exit(1)


def common_options(function: F) -> F:
    """--state-dir and --topology, on every command."""
    function = click.option(
        "--topology",
        type=click.Path(path_type=Path, dir_okay=False),
        default=DEFAULT_TOPOLOGY,
        show_default=True,
        help="The topology file.",
    )(function)
    function = click.option(
        "--state-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=DEFAULT_STATE_DIR,
        show_default=True,
        help="Sockets, pids, logs, certificates, data and rendered configs.",
    )(function)
    return function


def _attach(state_dir: Path) -> RunningMesh:
    mesh = RunningMesh.attach(state_dir)
    if mesh is None:
        errors.print(f"no mesh is running in {state_dir} (start one with `shopmesh up`)")
        sys.exit(1)
    return mesh


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run the shopmesh services, each with its Envoy sidecar, and the edge gateway."""


@main.command(name="up")
@common_options
@click.option(
    "--descriptor",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_DESCRIPTOR,
    show_default=True,
    help="Descriptor set of the contracts (make generate writes it).",
)
@click.option(
    "--gateway-port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port of the gateway on 127.0.0.1 (0: any free port).",
)
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait.")
def up_command(
    state_dir: Path, topology: Path, descriptor: Path, gateway_port: int, timeout: float
) -> None:
    """Start every app, sidecar and the gateway; wait until all are healthy."""
    options = MeshOptions(
        state_dir=state_dir,
        topology=topology,
        descriptor=descriptor,
        gateway_port=gateway_port,
        startup_timeout=timeout,
    )
    try:
        mesh = _run(up(options))
    except KeyboardInterrupt:
        errors.print("interrupted: everything started was stopped")
        sys.exit(130)
    pods = len(mesh.pods)
    console.print(
        f"[green]mesh up[/green] in {mesh.up_seconds or 0:.2f} s: {pods} apps with their "
        f"sidecars, and the gateway at [bold]{mesh.gateway_address}[/bold] "
        f"(state in {mesh.state_dir})"
    )
    console.print(connection_help(mesh.gateway_address), soft_wrap=True, markup=False)


def connection_help(gateway: str) -> str:
    """Ready-to-paste grpcurl and curl commands for the gateway at `gateway`."""
    grpcurl = Path(sys.executable).parent / "grpcurl"
    g = shlex.quote(str(grpcurl)) if grpcurl.exists() else "grpcurl"
    user = json.dumps({"request_id": "ada-1", "email": "ada@example.com", "display_name": "Ada"})
    order = json.dumps(
        {
            "idempotency_key": "order-1",
            "user_id": "<user_id from CreateUser>",
            "items": [{"sku": "MUG-01", "quantity": 2}],
            "payment_token": "tok_visa",
        }
    )
    url = f"http://{gateway}"
    json_post = "curl -s -X POST -H 'content-type: application/json'"
    lines = [
        "",
        "gRPC with server reflection (no proto files): -authority picks the service",
        f"  {g} -plaintext -authority users {gateway} list",
        f"  {g} -plaintext -authority orders {gateway} describe shop.orders.v1.OrdersService",
        f"  {g} -plaintext -authority users -d {shlex.quote(user)} \\\n"
        f"      {gateway} shop.users.v1.UsersService/CreateUser",
        f"  {g} -plaintext -authority orders -d {shlex.quote(order)} \\\n"
        f"      {gateway} shop.orders.v1.OrdersService/PlaceOrder",
        "",
        "JSON over HTTP/1.1 (gRPC-JSON transcoding):",
        f"  {json_post} -d '{{\"page_size\": 3}}' \\\n"
        f"      {url}/shop.inventory.v1.InventoryService/ListProducts",
        f"  {json_post} -d {shlex.quote(user)} \\\n"
        f"      {url}/shop.users.v1.UsersService/CreateUser",
        f"  {json_post} -d {shlex.quote(order)} \\\n"
        f"      {url}/shop.orders.v1.OrdersService/PlaceOrder",
        "",
        "shopmesh status · shopmesh logs orders-0 -f · "
        "shopmesh fault payments --abort-percent 30 --status UNAVAILABLE · shopmesh down",
    ]
    return "\n".join(lines)


@main.command(name="down")
@common_options
def down_command(state_dir: Path, topology: Path) -> None:
    """Stop everything (apps drain first); keep data, certificates and logs."""
    mesh = RunningMesh.attach(state_dir)
    if mesh is None:
        console.print(f"no mesh is running in {state_dir}")
        return
    started = time.monotonic()
    count = len(mesh.processes())
    _run(mesh.stop())
    console.print(
        f"[green]mesh down[/green]: {count} processes stopped in "
        f"{time.monotonic() - started:.2f} s; data kept in {StateDir(state_dir).data}"
    )


@main.command(name="status")
@common_options
def status_command(state_dir: Path, topology: Path) -> None:
    """Each app, sidecar and the gateway: pid, alive, health. Exit 1 unless all healthy."""
    mesh = _attach(state_dir)
    rows = _run(mesh.status())
    table = Table(title=f"shopmesh in {mesh.state_dir} · gateway {mesh.gateway_address}")
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
    if not all(row.healthy for row in rows):
        sys.exit(1)


def _log_names(state: StateDir) -> list[str]:
    return sorted(path.name.removesuffix(".log") for path in state.logs.glob("*.log"))


def resolve_log(state: StateDir, name: str) -> Path:
    """A log by process name (`orders-0.app`, `orders-0.sidecar`, `gateway`), access log
    (`orders-0.access`), or pod name alone for its app (`orders-0`)."""
    for candidate in (name, f"{name}.app", f"{name}-0.app"):
        path = state.log(candidate)
        if path.is_file():
            return path
    known = ", ".join(_log_names(state)) or "none yet"
    raise click.BadParameter(f"no log {name!r} in {state.logs}; logs: {known}", param_hint="NAME")


@main.command(name="logs")
@common_options
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what is appended.")
@click.option("-n", "--lines", type=int, default=50, show_default=True, help="Lines to show.")
def logs_command(state_dir: Path, topology: Path, name: str, follow: bool, lines: int) -> None:
    """Show a process's log: NAME is a pod (its app), `<pod>.sidecar`, `<pod>.access`,
    or `gateway`."""
    path = resolve_log(StateDir(state_dir), name)
    with path.open("rb") as file:
        tail = file.read().decode(errors="replace").splitlines()[-lines:] if lines else []
        for line in tail:
            click.echo(line)
        if not follow:
            return
        try:
            while True:
                chunk = file.read()
                if chunk:
                    click.echo(chunk.decode(errors="replace"), nl=False)
                else:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            return


@main.command(name="fault")
@common_options
@click.argument("service")
@click.option("--abort-percent", type=click.IntRange(0, 100), help="Share of calls to fail.")
@click.option("--status", "grpc_status", help="gRPC status of aborted calls (name or number).")
@click.option("--delay-ms", type=click.IntRange(0), help="Delay added to calls.")
@click.option("--delay-percent", type=click.IntRange(0, 100), help="Share delayed (100).")
@click.option("--clear", is_flag=True, help="Remove every fault from SERVICE.")
def fault_command(
    state_dir: Path,
    topology: Path,
    service: str,
    abort_percent: int | None,
    grpc_status: str | None,
    delay_ms: int | None,
    delay_percent: int | None,
    clear: bool,
) -> None:
    """Inject faults into calls to SERVICE at its sidecars, at runtime (no restart)."""
    mesh = _attach(state_dir)
    if clear:
        if any(v is not None for v in (abort_percent, grpc_status, delay_ms, delay_percent)):
            raise click.UsageError("--clear takes no other fault option")
        _run(mesh.clear_faults(service))
        console.print(f"faults cleared on {service}")
        return
    if abort_percent is None and delay_ms is None:
        raise click.UsageError("give --abort-percent (and --status), --delay-ms, or --clear")
    fault = _run(
        mesh.fault(
            service,
            abort_percent=abort_percent,
            grpc_status=grpc_status,
            delay_ms=delay_ms,
            delay_percent=delay_percent,
        )
    )
    parts = []
    if fault.abort_percent is not None:
        parts.append(f"{fault.abort_percent}% of calls fail with status {fault.grpc_status}")
    if fault.delay_ms is not None:
        parts.append(f"{fault.delay_percent}% of calls wait {fault.delay_ms} ms")
    replicas = len(mesh.replicas(service))
    where = f"{replicas} replica{'s' if replicas != 1 else ''}"
    console.print(f"fault on {service} ({where}): {'; '.join(parts)}")
    console.print(f"undo with: shopmesh fault {service} --clear")


@main.group(name="certs")
def certs_group() -> None:
    """The local CA and the identities' certificates."""


@certs_group.command(name="rotate")
@common_options
def rotate_command(state_dir: Path, topology: Path) -> None:
    """Re-issue every identity's certificate in place. A running mesh loads the new ones
    through SDS without a restart; this waits until every Envoy serves them."""
    mesh = RunningMesh.attach(state_dir)
    if mesh is not None:
        serials = _run(mesh.rotate_certificates())
        console.print(f"rotated {len(serials)} certificates; every Envoy serves the new ones")
        return
    try:
        loaded = load_topology(topology)
    except TopologyError as error:
        errors.print(f"error: {error}", soft_wrap=True)
        sys.exit(1)
    try:
        serials = rotate_certificates(StateDir(state_dir.resolve()).certs, loaded)
    except MeshError as error:
        errors.print(f"error: {error}", soft_wrap=True)
        sys.exit(1)
    console.print(f"rotated {len(serials)} certificates (no mesh running)")


if __name__ == "__main__":
    main()
