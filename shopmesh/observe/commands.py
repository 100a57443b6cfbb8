"""The commands that show what the mesh does: shopper traffic to watch it by (`load`), its
traces (`traces`, `trace`) and the calls through a service's sidecars as they happen
(`tap`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Table

from shopmesh import options
from shopmesh.gatewayclient import GatewayTarget
from shopmesh.layout import StateDir
from shopmesh.local.errors import MeshError
from shopmesh.local.mesh import COLLECTOR, RunningMesh
from shopmesh.observe.audit import audit_until_settled, store_locations, store_reader
from shopmesh.observe.load import MAX_RATE, MAX_REQUESTS_LIMIT, LoadRun, LoadSettings
from shopmesh.observe.loadview import summary_view, watch
from shopmesh.observe.tap import TapFilter, follow, line, status_filter
from shopmesh.observe.traces import TraceReader, TraceStoreError
from shopmesh.observe.traceview import traces_table, waterfall
from shopmesh.terminal import attached, console, run, wide

output_option = click.option(
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    help="A table for people, or JSON for programs.",
)


@click.command(name="load")
@options.state_dir
@click.option("--gateway", metavar="HOST:PORT", help="The gateway [the running mesh's].")
@click.option(
    "--cacert",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="With --gateway: TLS, trusting this CA certificate (PEM) [plaintext].",
)
@click.option(
    "--rate",
    type=click.FloatRange(0, MAX_RATE, min_open=True),
    default=LoadSettings.rate,
    help="Calls started per second, whatever the answers take.",
)
@click.option(
    "--duration",
    type=click.FloatRange(0, min_open=True),
    default=LoadSettings.duration,
    help="Seconds to send for.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=LoadSettings.concurrency,
    help="Calls in flight at most; a call due beyond it is skipped, not queued.",
)
@click.option(
    "--max-requests",
    type=click.IntRange(1, MAX_REQUESTS_LIMIT),
    default=LoadSettings.max_requests,
    help="Calls at most (sent or skipped).",
)
@click.option("--seed", type=int, default=LoadSettings.seed, help="Seed of the shopper mix.")
def load_command(
    state_dir: Path,
    gateway: str | None,
    cacert: Path | None,
    rate: float,
    duration: float,
    concurrency: int,
    max_requests: int,
    seed: int,
) -> None:
    """Send shoppers' calls through the gateway: browse, sign up, check out (some cards are
    declined), read and cancel orders. Shows progress live and a summary per RPC (calls,
    OK share, p50, p99, status codes) at the end, also after Ctrl-C; exits 0 whatever the
    mesh answered.

    The gateway's local rate limit (envoy/mesh.yaml gateway.local_rate_limit: 200 tokens,
    100 more a second) is shared by all its clients: above about 100 calls a second it answers
    the excess RESOURCE_EXHAUSTED itself, and those calls are counted as such."""
    if gateway is not None:
        target = GatewayTarget(gateway, cacert)
    elif cacert is not None:
        raise click.UsageError("--cacert goes with --gateway (a running mesh knows its own CA)")
    else:
        mesh = RunningMesh.attach(state_dir)
        if mesh is None:
            raise MeshError(
                f"no mesh is running in {state_dir}: start one with `shopmesh up` or give --gateway"
            )
        target = mesh.gateway_target
    settings = LoadSettings(rate, duration, concurrency, max_requests, seed=seed)
    summary = run(watch(LoadRun(target, settings), console))
    console.print(summary_view(summary))


def trace_reader(state_dir: Path) -> TraceReader:
    """The traces of the mesh in `state_dir` (running or not: the collector's file stays);
    a one-line error if the running mesh sends its spans elsewhere."""
    mesh = RunningMesh.attach(state_dir)
    if mesh is not None and COLLECTOR not in mesh.state.processes:
        raise MeshError(
            f"the mesh in {state_dir} sends its spans to the collector of its --otlp-endpoint: "
            "look them up there"
        )
    return TraceReader(StateDir(state_dir.resolve()).traces)


@click.command(name="audit")
@options.state_dir
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds to let sagas and events in flight settle before a check counts as failed.",
)
def audit_command(state_dir: Path, wait: float) -> None:
    """Whether the mesh's data adds up across its services: every order finished, none
    charged twice, money taken only for confirmed orders, no stock left held, every event
    delivered and notified once. Reads each service's store directly, read-only. Exit 1 if a
    check fails."""
    mesh = attached(state_dir)
    with store_reader(store_locations(mesh)) as snapshot:
        findings = audit_until_settled(snapshot, wait)
    table = Table(title=f"audit of the mesh in {mesh.state_dir}")
    for column in ("check", "result", "found"):
        table.add_column(column)
    for finding in findings:
        result = "[green]ok[/green]" if finding.ok else "[red]FAILED[/red]"
        table.add_row(finding.check, result, finding.detail)
    console.print(table)
    if not all(finding.ok for finding in findings):
        sys.exit(1)


@click.command(name="traces")
@options.state_dir
@click.option("-n", "--limit", type=click.IntRange(1), default=20, help="Traces to list.")
@output_option
def traces_command(state_dir: Path, limit: int, output: str) -> None:
    """The newest traces the mesh's collector keeps: root operation, duration, status, span
    count, when. Look one up with `shopmesh trace TRACE_ID`."""
    try:
        summaries = trace_reader(state_dir).recent(limit)
    except TraceStoreError as error:
        raise MeshError(str(error)) from None
    if output == "json":
        click.echo(json.dumps([summary.as_json() for summary in summaries], indent=2))
        return
    if not summaries:
        console.print("no traces yet: send the mesh a call (`shopmesh load`)")
        return
    wide().print(traces_table(summaries))


@click.command(name="trace")
@options.state_dir
@click.argument("trace_id", required=False)
@click.option("--order", "order_id", metavar="ORDER_ID", help="The trace that placed this order.")
@click.option("--last", is_flag=True, help="The newest complete trace.")
@output_option
def trace_command(
    state_dir: Path, trace_id: str | None, order_id: str | None, last: bool, output: str
) -> None:
    """One trace as a waterfall: every span under its parent with its service, start offset,
    duration, status and, for each try Envoy made at an upstream, which attempt it was. Give
    TRACE_ID (the gateway returns it in the x-trace-id header), --order or --last."""
    if sum(bool(choice) for choice in (trace_id, order_id, last)) != 1:
        raise click.UsageError("give one of TRACE_ID, --order ORDER_ID or --last")
    reader = trace_reader(state_dir)
    try:
        chosen = trace_id or chosen_trace(reader, order_id)
        spans = reader.spans(chosen)
    except TraceStoreError as error:
        raise MeshError(str(error)) from None
    if not spans:
        raise MeshError(
            f"no trace {chosen}: not sampled (`shopmesh up --sampling`), older than the newest "
            "kept, or its spans have not arrived yet (they take about a second)"
        )
    if output == "json":
        click.echo(json.dumps([span.as_json() for span in spans], indent=2))
        return
    wide().print(waterfall(chosen, spans))


def chosen_trace(reader: TraceReader, order_id: str | None) -> str:
    """The trace of order `order_id`, or the newest complete one."""
    if order_id is not None:
        found = reader.of_order(order_id)
        if found is None:
            raise MeshError(f"no trace of order {order_id} (sampled out, or older than the kept)")
        return found
    found = reader.last()
    if found is None:
        raise MeshError("no trace yet: send the mesh a call (`shopmesh load`)")
    return found


@click.command(name="tap")
@options.state_dir
@click.argument("service")
@click.option("--method", help="Only this method: `Charge`, `PaymentsService/Charge`, a path.")
@click.option("--status", "status", help="Only calls that ended with this gRPC status.")
@click.option("--max", "max_events", type=click.IntRange(1), help="Stop after this many calls.")
@click.option("--seconds", type=click.FloatRange(0, min_open=True), help="Stop after this long.")
@click.option(
    "--output",
    type=click.Choice(["lines", "json"]),
    default="lines",
    help="A line per call for people, or a JSON object per line for programs.",
)
def tap_command(
    state_dir: Path,
    service: str,
    method: str | None,
    status: str | None,
    max_events: int | None,
    seconds: float | None,
    output: str,
) -> None:
    """The calls through SERVICE's sidecars as they happen, inbound (← the caller's SPIFFE ID)
    and outbound (→ the callee's): time, pod, peer, method, gRPC status, duration, attempts,
    trace id. Until Ctrl-C, --max calls or --seconds."""
    mesh = attached(state_dir)
    pods = [pod for pod in mesh.pods.values() if pod.service == service]
    if not pods:
        known = ", ".join(sorted({pod.service for pod in mesh.pods.values()}))
        raise click.BadParameter(f"no service {service!r}; services: {known}", param_hint="SERVICE")
    try:
        keep = TapFilter(method, None if status is None else status_filter(status))
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--status") from None
    logs = [(pod.name, mesh.paths.access_log(pod.name)) for pod in pods]
    if output == "lines":
        console.print(f"tapping {service} ({len(pods)} replicas); Ctrl-C ends", style="dim")
    try:
        for tapped in follow(logs, keep, max_events=max_events, seconds=seconds):
            if output == "json":
                click.echo(json.dumps(tapped.as_json()))
            else:
                click.echo(line(tapped))
    except KeyboardInterrupt:
        return
