"""The verdict of a fuzz run (issue 8): 0 UNKNOWN, 0 unary calls unanswered past the edge
timeout, 0 replicas ejected, 0 process crashes, logs bounded per reason; and how many
requests reached an app. As checks with examples, and as rich tables."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rich import box
from rich.console import Console
from rich.table import Table

from scripts.fuzz.cases import Case
from scripts.fuzz.logs import allowed_lines
from scripts.fuzz.reply import End, Reply
from scripts.fuzz.run import MARGIN, Result

UNKNOWN = 2
GRPC_MAPPED_HTTP = (400, 401, 403, 404, 429)
"""HTTP statuses below 500 that a gRPC client maps to a code of its own when no grpc-status
came (gRPC's http-grpc-status-mapping.md); any other becomes UNKNOWN."""
EXAMPLES = 6
HELD_SECONDS = 1.0
RATE_LIMITED = "RATE_LIMITED"
"""The ErrorInfo reason of the gateway's rate-limit refusals."""


@dataclass(frozen=True)
class Check:
    name: str
    found: int
    bound: str
    examples: list[str] = field(default_factory=list)
    informational: bool = False
    """Shown, never a violation."""

    @property
    def ok(self) -> bool:
        return self.informational or self.found == 0


def unknown_to_caller(case: Case, reply: Reply) -> bool:
    """UNKNOWN, or what a gRPC client turns into UNKNOWN (or reads as a bare 5xx): an answer
    to a gRPC request without grpc-status whose HTTP status is 5xx or has no mapping."""
    if reply.grpc_status == UNKNOWN:
        return True
    if not case.grpc or reply.end is not End.ANSWERED or reply.grpc_status is not None:
        return False
    status = reply.http_status or 0
    return status >= 500 or status not in GRPC_MAPPED_HTTP


def examples(pairs: Iterable[tuple[Case, Reply]]) -> list[str]:
    """Up to EXAMPLES: first one per kind of answer (outcome and the start of its message),
    then one per family and variant, then the rest."""
    pairs = list(pairs)
    keys: list[Callable[[Case, Reply], object]] = [
        lambda c, r: (r.label, r.grpc_message[:25]),
        lambda c, r: (c.family, c.variant),
        lambda c, r: c.number,
    ]
    chosen: dict[int, tuple[Case, Reply]] = {}
    for key in keys:
        seen = {key(case, reply) for case, reply in chosen.values()}
        for case, reply in pairs:
            if len(chosen) < EXAMPLES and key(case, reply) not in seen:
                seen.add(key(case, reply))
                chosen[case.number] = (case, reply)
    return [f"{case.describe()} -> {reply.describe()}" for case, reply in chosen.values()]


def checks(result: Result) -> list[Check]:
    after = result.after
    pairs = result.pairs()
    unknown = [(c, r) for c, r in pairs if unknown_to_caller(c, r)]
    unanswered = [(c, r) for c, r in pairs if r.end is End.UNANSWERED and not c.streaming]
    unreachable = [(c, r) for c, r in pairs if r.end is End.UNREACHABLE]
    limited = [(c, r) for c, r in pairs if RATE_LIMITED in r.reasons]
    held = [
        (c, r)
        for c, r in pairs
        if not c.streaming and r.end is not End.CLIENT_RESET and r.elapsed >= HELD_SECONDS
    ]
    floods = [
        f"{f.log}: {f.lines} lines of {f.reason!r} (allowed {f.allowed}); e.g. {f.example}"
        for f in after.floods
    ]
    return [
        Check(
            "UNKNOWN (grpc-status 2, or a bare HTTP error to a gRPC caller)",
            len(unknown),
            "0",
            examples(unknown),
        ),
        Check(
            "unary calls unanswered",
            len(unanswered),
            f"0 within {result.catalog.deadline_source()} + {MARGIN:g} s",
            examples(unanswered),
        ),
        Check(
            "replicas ejected (outlier detection, every balancing Envoy)",
            after.ejected.total(),
            "0",
            [f"{where}: {n}" for where, n in after.ejected.items()],
        ),
        Check("upstream hosts unhealthy at the end", len(after.unhealthy), "0", after.unhealthy),
        Check("processes crashed or replaced", len(after.crashed), "0", after.crashed),
        Check(
            "log reasons over the bound",
            len(after.floods),
            f"<= {allowed_lines(after.seconds)} lines per reason per log in {after.seconds:.0f} s",
            floods[:EXAMPLES],
        ),
        Check("requests that could not connect", len(unreachable), "0", examples(unreachable)),
        Check(
            "refused by the gateway's rate limit (the pace should keep this 0)",
            len(limited),
            "(shown: these tested nothing beyond the rate limit)",
            examples(limited),
            informational=True,
        ),
        Check(
            f"unary calls that held their place {HELD_SECONDS:g} s or more",
            len(held),
            "(shown: at the gateway each held an upstream slot that long)",
            examples(held),
            informational=True,
        ),
    ]


def violations(result: Result) -> list[Check]:
    return [check for check in checks(result) if not check.ok]


def explain(result: Result) -> str:
    """The failed checks with their examples, and how to replay the run."""
    lines = [f"fuzz seed {result.settings.seed}, {len(result.cases)} requests:"]
    for check in violations(result):
        lines.append(f"- {check.name}: {check.found} (bound {check.bound})")
        lines += [f"    {example}" for example in check.examples]
    lines.append(replay(result))
    return "\n".join(lines)


def replay(result: Result) -> str:
    return (
        f"replay: make fuzz FUZZ_ARGS='--count {len(result.cases)} --seed {result.settings.seed}'"
    )


def outcome_table(result: Result) -> Table:
    table = Table(title="Outcomes by family", box=box.SIMPLE_HEAD)
    for column in ("family", "outcome", "requests", "most common variant"):
        table.add_column(column, justify="right" if column == "requests" else "left")
    grouped: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for case, reply in result.pairs():
        grouped[case.family][reply.label][case.variant] += 1
    for family, labels in grouped.items():
        for label, variants in sorted(labels.items(), key=lambda item: -item[1].total()):
            variant, _ = variants.most_common(1)[0]
            table.add_row(family, label, str(variants.total()), variant)
        table.add_section()
    return table


def check_table(result: Result) -> Table:
    table = Table(title="Checks", box=box.SIMPLE_HEAD)
    for column in ("check", "found", "bound", "verdict"):
        table.add_column(column)
    for check in checks(result):
        verdict = "info" if check.informational else "ok" if check.ok else "[red]FAIL[/red]"
        table.add_row(check.name, str(check.found), check.bound, verdict)
    return table


def render(result: Result, console: Console) -> None:
    pairs = result.pairs()
    console.print(outcome_table(result))
    console.print(check_table(result))
    for check in checks(result):
        if check.examples and (check.informational or not check.ok):
            console.print(f"{check.name}, e.g.:", markup=False)
            for example in check.examples:
                console.print(f"  {example}", markup=False, soft_wrap=True)
    reached = result.after.reached
    per_pod = ", ".join(f"{pod} {n}" for pod, n in sorted(reached.items())) or "none"
    console.print(f"reached an app: {reached.total()} of {len(pairs)} ({per_pod})")
    refused = [r for _, r in pairs if r.grpc_status not in (None, 0)]
    bare = sum(1 for r in refused if not r.error_info)
    console.print(f"non-OK gRPC statuses without ErrorInfo: {bare} of {len(refused)}")
    console.print(
        f"sent {len(pairs)} requests at {result.rate:.0f}/s in {result.sending_seconds:.1f} s; "
        f"log lines written: {sum(result.after.log_lines.values())}"
    )
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"seed {result.settings.seed}; {replay(result)}")
