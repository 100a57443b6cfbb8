"""The overload part's tables and verdicts (scripts.bench.overload measures them)."""

from __future__ import annotations

import statistics
from collections import Counter

from rich import box
from rich.console import Console
from rich.table import Table

from scripts.bench.open_loop import OK, Run, percentile
from scripts.bench.overload import (
    ADMITTED_SHARE,
    CAPACITY_P99_FACTOR,
    LOW_LOAD_SHARE,
    OVERLOAD_FACTOR,
    P99_FACTOR,
    REFUSAL_BOUND_MS,
    Consistency,
    Overload,
)
from scripts.bench.report import two_columns
from shopmesh.envoy.edge import RATE_LIMIT_ENABLED

GRPC_RESOURCE_EXHAUSTED = "8"
GRPC_OK = "0"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "[red]FAIL[/red]"


def counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key}: {n}" for key, n in counter.most_common()) or "none"


def _phase_row(table: Table, name: str, run: Run, judged: str) -> None:
    admitted = [call.latency_ms for call in run.admitted]
    machine = run.machine
    table.add_row(
        name,
        f"{run.rate:.1f}",
        f"{run.offered_rate:.1f}" + ("[red]*[/red]" if run.generator_bound else ""),
        f"{run.send_lag_ms(0.99):.0f} ms",
        f"{len(run.admitted)} / {len(run.refused)} / {len(run.failed)}",
        f"{percentile(admitted, 0.5):.0f} / {percentile(admitted, 0.99):.0f} ms",
        f"{machine.mesh:.2f} / {machine.others + machine.generator:.2f}" if machine else "",
        f"{machine.io_stalled:.2f} s" if machine and machine.io_stalled is not None else "",
        judged + (" [red]disturbed[/red]" if machine and machine.disturbed() else ""),
    )


def phases_table(figures: Overload) -> Table:
    table = Table(box=box.SIMPLE)
    for column in (
        "phase",
        "asked/s",
        "sent/s",
        "lag p99",
        "ok / refused / other",
        "ok p50 / p99",
        "cores mesh / rest",
        "disk stall",
        "verdict",
    ):
        table.add_column(column, justify="left" if column in ("phase", "verdict") else "right")
    _phase_row(table, "low load", figures.baseline, "")
    for step in figures.steps:
        _phase_row(table, "step", step.run, "within" if step.passed else "[red]beyond[/red]")
    if figures.overload is not None:
        _phase_row(table, "overload", figures.overload, "")
    return table


def _controller_rows(samples: list[dict[str, int]]) -> list[tuple[str, str]]:
    def values(name: str) -> list[int]:
        return [sample[name] for sample in samples if name in sample]

    limits, min_rtts, sample_rtts = (
        values(n) for n in ("concurrency_limit", "min_rtt_msecs", "sample_rtt_msecs")
    )
    if not limits:
        return [("adaptive concurrency controller", "no stats sampled")]
    blocked = values("rq_blocked")
    return [
        (
            "controller: concurrency limit (min / median / max)",
            f"{min(limits)} / {statistics.median(limits):.0f} / {max(limits)}",
        ),
        ("controller: minRTT seen", ", ".join(f"{v} ms" for v in sorted(set(min_rtts)))),
        (
            "controller: sampled p90 RTT (median / max)",
            f"{statistics.median(sample_rtts):.0f} / {max(sample_rtts)} ms",
        ),
        ("controller: refused during overload (rq_blocked)", str(blocked[-1] - blocked[0])),
    ]


def min_rtt_windows(samples: list[dict[str, int]]) -> int:
    """How many minRTT windows of the controller the samples show starting (or already on at
    the first sample)."""
    active = [sample.get("min_rtt_calculation_active", 0) for sample in samples]
    return sum(now and not before for before, now in zip([0, *active], active, strict=False))


def floor_rows(figures: Overload, base50: float) -> list[tuple[str, str]]:
    """Little's law on the measured capacity: how many checkouts at once it takes at low-load
    latency, and how long an admitted one waits when the controller sits at its floor (it never
    admits fewer than min_concurrency at once, however slow the calls get)."""
    if not figures.capacity:
        return []
    floor = figures.min_concurrency
    return [
        (
            "checkouts at once the capacity needs (capacity x low-load p50)",
            f"{figures.capacity:.1f}/s x {base50:.1f} ms = {figures.capacity * base50 / 1000:.1f}",
        ),
        (
            "an admitted call's wait at the controller's floor (min_concurrency / capacity)",
            f"{floor} / {figures.capacity:.1f}/s = {floor / figures.capacity * 1000:.0f} ms",
        ),
    ]


def _consistency_rows(c: Consistency) -> list[tuple[str, str]]:
    return [
        (
            "orders of the bench user (after settling)",
            f"{len(c.statuses)} ({counts(Counter(c.statuses.values()))})",
        ),
        ("settled (none PENDING) after", f"{c.settle_seconds:.1f} s"),
        ("admitted by the client, missing", f"{len(c.admitted)}, {len(c.missing)}"),
        ("admitted but not CONFIRMED", counts(c.unconfirmed)),
        (
            "orders no call was told of",
            f"{len(c.statuses.keys() - c.admitted - c.earlier)} "
            f"(calls that ended without an answer: {c.unanswered})",
        ),
        ("units sold vs orders confirmed", f"{c.stock_sold} vs {c.confirmed}"),
    ]


def render_overload(figures: Overload, console: Console) -> list[str]:
    """Print the part; returns what failed, one line each."""
    run = figures.overload
    assert run is not None
    assert figures.consistency is not None
    baseline = figures.baseline.admitted_p99()
    bound = CAPACITY_P99_FACTOR * baseline
    console.print(
        "[bold]Overload: PlaceOrder through the gateway, open loop[/bold] "
        f"(rate limits OFF: {RATE_LIMIT_ENABLED} = {figures.rate_limit[0]} during the part, "
        f"{figures.rate_limit[1]} after)"
    )
    console.print(
        f"capacity: the highest step whose admitted p99 <= {CAPACITY_P99_FACTOR:g}x the low-load "
        f"p99 ({bound:.1f} ms) with >= {ADMITTED_SHARE:.0%} admitted; steps from the closed-loop "
        f"estimate {figures.estimate:.1f} orders/s"
    )
    console.print(phases_table(figures))
    console.print(
        f"low load: {LOW_LOAD_SHARE:.0%} of the estimate; step: bound {bound:.1f} ms; overload: "
        f"{OVERLOAD_FACTOR:g}x the capacity; p99 is the nearest rank (of few calls, the slowest); "
        "[red]*[/red]: the generator fell behind its schedule; lag: how late calls left; ok: "
        "admitted; cores: CPU cores busy with the mesh / with the generator and others; disk "
        "stall: time every task waited for the disk (PSI io full); disturbed: other processes "
        "used the CPUs or the disk stalled beyond scripts.bench.machine_load's limits"
    )
    failed: list[str] = []
    if figures.capacity is None:
        failed.append("no step stayed within the bound: the capacity is undefined")

    p99 = run.admitted_p99()
    p50 = percentile([call.latency_ms for call in run.admitted], 0.5)
    base50 = percentile([call.latency_ms for call in figures.baseline.admitted], 0.5)
    refused, others = run.refused, run.failed
    reasons = Counter(call.reason or "(no ErrorInfo)" for call in refused)
    logged = figures.logged
    logged_refusals = [e.duration_ms for e in logged if e.grpc_status == GRPC_RESOURCE_EXHAUSTED]
    logged_admitted = [e.duration_ms for e in logged if e.grpc_status == GRPC_OK]
    flags = Counter(e.flags for e in logged if e.grpc_status == GRPC_RESOURCE_EXHAUSTED)
    c = figures.consistency
    latency = f"admitted p99 <= {P99_FACTOR:g}x low-load p99"
    windows = min_rtt_windows(figures.baseline_controller)
    checks = {
        "nothing refused at low load, through a minRTT window": windows > 0
        and not figures.baseline.refused,
        latency: p99 <= P99_FACTOR * baseline,
        "every refusal RESOURCE_EXHAUSTED with a reason": all(call.reason for call in refused),
        f"every refusal <= {REFUSAL_BOUND_MS} ms at the gateway": bool(logged_refusals)
        and len(logged_refusals) == len(refused)
        and max(logged_refusals) <= REFUSAL_BOUND_MS,
        "no mesh process crashed or restarted": not figures.crashed,
        "every order consistent afterwards": c.consistent,
    }
    rows = [
        (
            "low load: refused, minRTT windows of the controller in it",
            f"{len(figures.baseline.refused)}, {windows}",
        ),
        ("offered (asked / sent)", f"{run.rate:.0f} / {run.offered_rate:.0f} checkouts/s"),
        (
            "generator",
            ("[red]fell behind[/red]" if run.generator_bound else "kept up")
            + f" (send lag p99 {run.send_lag_ms(0.99):.1f} ms, max {run.send_lag_ms(1.0):.1f} ms)",
        ),
        ("during overload", run.machine.describe() if run.machine else "not sampled"),
        ("admitted p99 / low-load p99", f"{p99:.1f} / {baseline:.1f} ms = {p99 / baseline:.2f}x"),
        ("admitted p50 / low-load p50", f"{p50:.1f} / {base50:.1f} ms = {p50 / base50:.2f}x"),
        ("admitted p99 at the gateway (access log)", f"{percentile(logged_admitted, 0.99):.0f} ms"),
        ("refused (client): reasons", f"{len(refused)}: {counts(reasons)}"),
        ("refused with a RetryInfo", str(sum(call.retry_info for call in refused))),
        ("other outcomes", counts(Counter(f"{c.code} {c.reason}".strip() for c in others))),
        (
            "refused (gateway log): count, max, p99",
            f"{len(logged_refusals)}, {max(logged_refusals, default=0)} ms, "
            f"{percentile(logged_refusals, 0.99):.0f} ms (flags {counts(flags)})",
        ),
        *_controller_rows(figures.controller),
        *floor_rows(figures, base50),
        ("processes crashed or restarted", ", ".join(figures.crashed) or "none"),
        *_consistency_rows(c),
    ]
    verdicts = {name: verdict(ok) for name, ok in checks.items()}
    if any(phase.machine and phase.machine.disturbed() for phase in (figures.baseline, run)):
        # A stall in the baseline can make any ratio pass: the verdict stands only on a quiet run.
        verdicts[latency] += " (disturbed run)"
    rows += [(f"verdict: {name}", text) for name, text in verdicts.items()]
    rows.append(("part took", f"{figures.seconds:.0f} s"))
    console.print(two_columns(rows, right=True))
    failed += [f"overload: not {name}" for name, ok in checks.items() if not ok]
    for name, phase in (("low load (the baseline)", figures.baseline), ("overload", run)):
        why = phase.machine.disturbed() if phase.machine else ""
        if why:
            failed.append(f"{name} was disturbed, its p99 means little: {why}")
    if run.generator_bound:
        failed.append(
            f"overload: the generator fell behind: {run.offered_rate:.0f}/s sent of "
            f"{run.rate:.0f}/s asked, send lag p99 {run.send_lag_ms(0.99):.0f} ms; the mesh saw "
            "less (or burstier) load than asked"
        )
    admitted_codes = Counter(call.order_status for call in run.calls if call.code == OK)
    if set(admitted_codes) - {"ORDER_STATUS_CONFIRMED"}:
        failed.append(f"overload: admitted checkouts not confirmed: {dict(admitted_codes)}")
    return failed
