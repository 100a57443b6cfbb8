"""`shopmesh stat [SERVICE]`: the golden metrics of the running mesh over a window, as tables
(shopmesh.observe.statview) or JSON, once or live (`--watch`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from shopmesh import options
from shopmesh.observe import statview
from shopmesh.observe.stats import SAMPLE_MARGIN, Sampler, measure
from shopmesh.observe.statview import refreshing, selected, stats_view
from shopmesh.terminal import attached, console, run, wide

"""Seconds of samples kept beyond the window, so its oldest end always has one."""
MAX_WINDOW = 600.0
"""--watch keeps a sample of every Envoy a second for the whole window: ten minutes at most."""
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in `text`: a number of seconds (`2.5`) or amounts with units (`500ms`, `30s`,
    `1m`, `1m30s`). ValueError unless it is more than 0."""
    cleaned = text.strip().lower()
    try:
        seconds = float(cleaned)
    except ValueError:
        parts = _PART.findall(cleaned)
        if not parts or "".join(number + unit for number, unit in parts) != cleaned:
            raise ValueError(f"{text!r} is not a duration such as 30s, 1m or 500ms") from None
        seconds = sum(float(number) * UNITS[unit] for number, unit in parts)
    if not seconds > 0:
        raise ValueError(f"a duration must be more than 0, got {text!r}")
    return seconds


def duration_option(ctx: click.Context, param: click.Parameter, value: str) -> float:
    """Click's callback for a duration option: its value in seconds."""
    try:
        return parse_duration(value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None


@click.command(name="stat")
@options.state_dir
@click.argument("service", required=False)
@click.option(
    "--window",
    default="10s",
    metavar="DURATION",
    callback=duration_option,
    help="How far back to look: 30s, 1m, 500ms (or seconds). Without --watch, stat waits as "
    "long (the counts are two samples of every Envoy's stats that far apart).",
)
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl-C.")
@click.option(
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    help="Tables for people, or JSON for programs (with --watch: one document a line).",
)
def stat_command(
    state_dir: Path, service: str | None, window: float, watch: bool, output: str
) -> None:
    """Success rate, requests per second, p50/p95/p99 latency, failures and business outcomes
    by gRPC status, retries, circuit-breaker overflows, outlier ejections and the fault in
    force, for each service (inbound, at its sidecars) and each edge (at the caller), over the
    last --window; SERVICE shows only that service and its edges.

    Failures are the server-side codes (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
    UNAVAILABLE, DATA_LOSS); other codes (a declined card's FAILED_PRECONDITION) are business
    outcomes and count as successes. Envoy records whole milliseconds: quantiles are within
    1-2 ms below 10 ms and within a third of their value up to 10 s."""
    if window > MAX_WINDOW:
        raise click.BadParameter(f"at most {MAX_WINDOW:.0f}s (10m)", param_hint="--window")
    mesh = attached(state_dir)
    if service is not None and service not in mesh.services:
        raise click.BadParameter(
            f"no service {service!r}; services: {', '.join(mesh.services)}", param_hint="SERVICE"
        )
    if watch:
        # Samples are kept as long as the window needs, however long that is.
        sampler = Sampler.of(mesh, keep=window + SAMPLE_MARGIN)
        if output == "json":
            run(_print_json_lines(sampler, window, service))
        else:
            run(_watch_tables(sampler, window, service))
        return
    stats = selected(run(measure(mesh, window)), service)
    if output == "json":
        click.echo(json.dumps(stats.as_json(), indent=2))
    else:
        shown = wide()
        shown.print(stats_view(stats, window, compact=shown.width < statview.FULL_WIDTH))


async def _watch_tables(sampler: Sampler, window: float, service: str | None) -> None:
    await statview.watch(sampler, window, service, console, every=min(1.0, window))


async def _print_json_lines(sampler: Sampler, window: float, service: str | None) -> None:
    async for stats in refreshing(sampler, window, every=min(1.0, window)):
        if stats is not None:
            click.echo(json.dumps(selected(stats, service).as_json()))
