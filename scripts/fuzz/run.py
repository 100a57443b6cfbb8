"""A fuzz run against a running mesh's gateway: draw the cases from the seed, send them paced
under the gateway's rate limit with a bounded number in flight, each on its own connection
and bounded in time, and look at the mesh before and after."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from scripts.account import sign_up
from scripts.fuzz import h2wire, http1
from scripts.fuzz.cases import FAMILIES, Case, draw_cases
from scripts.fuzz.catalog import Catalog, catalog
from scripts.fuzz.observe import After, look_after, look_before
from scripts.fuzz.reply import End, Reply
from shopmesh.local.mesh import RunningMesh

PACE_SHARE = 0.9
"""Of the rate limit's refill rate: the bucket (a burst of max_tokens) absorbs the jitter."""
IN_FLIGHT = 128
"""Requests at most in flight; unanswered ones hold their place until their deadline."""
MARGIN = 1.5
"""Seconds a unary call may take beyond its edge timeout before it counts as unanswered."""
MAX_LAG = 0.25
"""Seconds the pacer may catch up on at once: a burst of rate x MAX_LAG, far within the rate
limit's bucket."""
STREAM_WAIT = 1.0
"""Seconds the fuzzer waits on a call that may stream before it lets it go."""


@dataclass(frozen=True)
class Settings:
    count: int
    seed: int
    rate: float | None = None
    """Requests per second; None: PACE_SHARE of the gateway's rate limit."""
    families: tuple[str, ...] = tuple(FAMILIES)
    in_flight: int = IN_FLIGHT


@dataclass
class Result:
    settings: Settings
    rate: float
    catalog: Catalog
    cases: list[Case]
    replies: list[Reply]
    after: After
    sending_seconds: float
    notes: list[str] = field(default_factory=list)

    def pairs(self) -> list[tuple[Case, Reply]]:
        return list(zip(self.cases, self.replies, strict=True))


def paced_rate(mesh: RunningMesh) -> float:
    """PACE_SHARE of the slower token refill rate of the gateway's two buckets (mesh.yaml
    gateway.per_client_rate_limit and local_rate_limit): the fuzzer is one client."""
    gateway = mesh.topology.gateway
    return PACE_SHARE * min(
        limit.tokens_per_fill / limit.fill_interval.total_seconds()
        for limit in (gateway.per_client_rate_limit, gateway.local_rate_limit)
    )


async def send(host: str, port: int, case: Case) -> Reply:
    """Send one case and wait what is due: its answer within its edge timeout plus MARGIN,
    or STREAM_WAIT for a call that may stream."""
    within = STREAM_WAIT if case.streaming else case.answer_within + MARGIN
    if isinstance(case.request, http1.Http1Request):
        reply = await http1.exchange(host, port, case.request, within)
    else:
        reply = await h2wire.exchange(host, port, case.request, within)
    if case.streaming and reply.end is End.UNANSWERED:
        return Reply(End.STREAM_OPEN, reply.elapsed, reply.http_status, headers=reply.headers)
    return reply


async def fuzz(
    mesh: RunningMesh,
    settings: Settings,
    progress: Callable[[int, int], None] | None = None,
) -> Result:
    """Run `settings.count` cases from `settings.seed` through `mesh`'s gateway."""
    rate = settings.rate or paced_rate(mesh)
    targets = catalog(mesh.topology, Path(mesh.state.descriptor))
    host, _, port = mesh.gateway_address.rpartition(":")
    rng = random.Random(settings.seed)
    # One shopper for the run: its token (15 minutes) outlasts `make fuzz` (about 4 minutes).
    shopper = await sign_up(mesh.gateway_address, "fuzz")
    cases = draw_cases(
        rng,
        targets,
        mesh.gateway_address,
        settings.count,
        list(settings.families),
        shopper.metadata,
    )
    replies: list[Reply | None] = [None] * len(cases)
    slots = asyncio.Semaphore(settings.in_flight)
    done = 0
    full = 0  # times the pacer found every slot taken

    async def one(index: int, case: Case) -> None:
        nonlocal done
        try:
            replies[index] = await send(host, int(port), case)
        finally:
            slots.release()
            done += 1
            if progress is not None:
                progress(done, len(cases))

    before = await look_before(mesh)
    cpu = time.process_time()
    started = time.monotonic()
    due = started
    async with asyncio.TaskGroup() as group:
        for index, case in enumerate(cases):
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            full += slots.locked()
            await slots.acquire()
            group.create_task(one(index, case))
            due += 1 / rate
            # After a stall (a busy machine, all slots taken) the pace goes on from now: no
            # burst to catch up, which the rate limit would refuse.
            due = max(due, time.monotonic() - MAX_LAG)
        sending = time.monotonic() - started
    cpu = time.process_time() - cpu
    after = await look_after(mesh, before)
    notes = [f"the fuzzer's own CPU time: {cpu:.1f} s"]
    if sending > 1.2 * len(cases) / rate:
        why = (
            f"{full} times all {settings.in_flight} slots were taken (slow answers hold one)"
            if full
            else "the fuzzer was not scheduled on time (a busy machine)"
        )
        notes.append(f"sending took {sending:.0f} s instead of {len(cases) / rate:.0f} s: {why}")
    answered = [reply for reply in replies if reply is not None]
    return Result(settings, rate, targets, cases, answered, after, sending, notes)
