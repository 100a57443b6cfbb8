"""`shopmesh load`: realistic, bounded shopper traffic through the gateway's plaintext gRPC
address, open loop, with counts and latencies per RPC.

Open loop: call i starts at i / rate seconds, whatever the answers take, so a struggling mesh
gets the load it was promised and its latencies show it (a closed loop, which waits for answers,
sends less the slower the mesh is, and hides exactly that). At most `concurrency` calls are in
flight: a call due while the client is saturated is not queued but counted as skipped ("client
saturated"), so a stall never turns into a burst later.

A run ends after `duration` seconds or `max_requests` scheduled calls (sent or skipped),
whichever comes first; calls in flight then get their answers, each within its deadline.
`stop()` ends it at once and cancels the calls in flight, counted as CANCELLED.

Every answer is counted per RPC (`service.Method`) by its gRPC status code name; the summary's
success rate is the OK share. Refusals are counted by their status (FAILED_PRECONDITION,
NOT_FOUND, ...), and PlaceOrder's outcomes are kept per payment token: a declined card is an OK
answer whose order is REJECTED:CARD_DECLINED, a shortage REJECTED:INSUFFICIENT_STOCK.

The gateway's local rate limit (envoy/mesh.yaml, `gateway.local_rate_limit`: a bucket of 200
tokens that gets 100 a second) is shared by every client of the gateway. A rate above about
100 calls a second empties it (after the first 200 calls if it was full), and from then on the
gateway itself answers the excess with RESOURCE_EXHAUSTED: those calls never reach a service
and are counted as RESOURCE_EXHAUSTED like any other status.

`LoadRun` is what a dashboard drives: `run()` in a task, `stop()`, and `snapshot()` at any
time, a plain LoadSummary that `dataclasses.asdict` turns into JSON.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import math
import random
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from grpc import aio

from shopmesh.gatewayclient import GatewayTarget
from shopmesh.observe.shoppers import MIX, PAYMENT_TOKENS, Call, Shoppers, Stubs

READY, RUNNING, DRAINING, FINISHED = "ready", "running", "draining", "finished"
"""A run's states, in order."""
DURATION, MAX_REQUESTS, STOPPED = "duration", "max_requests", "stopped"
"""Why a run ended."""
OK = "OK"
CANCELLED = "CANCELLED"
MAX_RATE = 10_000.0
MAX_REQUESTS_LIMIT = 1_000_000
"""Bounds of the settings: every run ends, and its latencies fit in memory."""


@dataclass(frozen=True)
class LoadSettings:
    """How much load, for how long: `rate` calls a second for `duration` seconds, at most
    `max_requests` of them and `concurrency` at once, each with a `deadline` in seconds; the
    mix is drawn from `seed`."""

    rate: float = 10.0
    duration: float = 30.0
    concurrency: int = 16
    max_requests: int = 10_000
    deadline: float = 5.0
    seed: int = 1

    def __post_init__(self) -> None:
        problems = [
            problem
            for problem, bad in (
                (f"rate must be in (0, {MAX_RATE:g}]", not 0 < self.rate <= MAX_RATE),
                ("duration must be positive", not self.duration > 0),
                ("concurrency must be at least 1", self.concurrency < 1),
                (
                    f"max_requests must be in 1..{MAX_REQUESTS_LIMIT}",
                    not 1 <= self.max_requests <= MAX_REQUESTS_LIMIT,
                ),
                ("deadline must be positive", not self.deadline > 0),
            )
            if bad
        ]
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class RpcSummary:
    """One RPC of the mix: answers by status code name, OK share, latency quantiles in ms
    (None until something answered)."""

    method: str
    count: int
    ok: int
    success_rate: float | None
    p50_ms: float | None
    p99_ms: float | None
    codes: dict[str, int]


@dataclass
class LoadSummary:
    """A run so far, or in the end: plain data for a table or JSON (`dataclasses.asdict`)."""

    gateway: str
    settings: LoadSettings
    state: str
    """ready, running, draining (no new calls; waiting for answers) or finished."""
    stop_reason: str
    """Empty while the schedule runs, then duration, max_requests or stopped."""
    elapsed: float
    sent: int
    skipped: int
    """Calls due while `concurrency` calls were in flight: not sent (client saturated)."""
    in_flight: int
    completed: int
    ok: int
    ok_rate: float | None
    rpcs: list[RpcSummary]
    checkouts: dict[str, dict[str, int]]
    """PlaceOrder by payment token: outcome (CONFIRMED, REJECTED:<reason>, or the status code
    of a call that failed) -> count."""


def quantile(ordered: Sequence[float], q: float) -> float | None:
    """The nearest-rank `q` quantile (0 < q <= 1) of ascending values, None if there are none:
    a value that was measured, never an interpolation between two."""
    if not ordered:
        return None
    return ordered[max(math.ceil(q * len(ordered)), 1) - 1]


@dataclass
class _Tally:
    codes: Counter[str] = field(default_factory=Counter)
    # Kept sorted as they come (bisect.insort) so a live snapshot reads quantiles directly.
    latencies: list[float] = field(default_factory=list)

    def summary(self, method: str) -> RpcSummary:
        count = sum(self.codes.values())
        ok = self.codes[OK]
        return RpcSummary(
            method=method,
            count=count,
            ok=ok,
            success_rate=ok / count if count else None,
            p50_ms=_ms(quantile(self.latencies, 0.50)),
            p99_ms=_ms(quantile(self.latencies, 0.99)),
            codes=dict(self.codes.most_common()),
        )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class LoadRun:
    """One bounded load run against the gateway at `gateway` (plaintext or TLS). `stubs`
    replaces the generated stubs on a channel to the gateway (tests pass fakes; no channel is
    opened)."""

    def __init__(
        self, gateway: GatewayTarget, settings: LoadSettings, *, stubs: Stubs | None = None
    ) -> None:
        self.gateway = gateway
        self.gateway_address = gateway.address
        self.settings = settings
        self._stubs = stubs
        self._state = READY
        self._stop_reason = ""
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = 0.0
        self._finished: float | None = None
        self._sent = 0
        self._skipped = 0
        self._in_flight: set[asyncio.Task[None]] = set()
        self._tallies = {method: _Tally() for method, _ in MIX}
        self._checkouts: dict[str, Counter[str]] = {token: Counter() for token, _ in PAYMENT_TOKENS}
        self._failure: BaseException | None = None

    async def run(self) -> LoadSummary:
        """Send the load until the duration, the request count or `stop()` ends it; wait for
        the answers in flight (unless stopped); the final summary."""
        if self._state != READY:
            raise RuntimeError("a LoadRun runs once")
        self._loop = asyncio.get_running_loop()
        self._state = RUNNING
        self._started = self._loop.time()
        channel: aio.Channel | None = None
        stubs = self._stubs
        if stubs is None:
            channel = self.gateway.channel()
            stubs = Stubs.through(channel)
        # The run id keeps emails and idempotency keys unique across runs with one seed.
        shoppers = Shoppers(stubs, random.Random(self.settings.seed), secrets.token_hex(4))
        try:
            self._stop_reason = await self._schedule(shoppers)
            self._state = DRAINING
            if self._stop_reason == STOPPED:
                self._cancel_in_flight()
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        finally:
            # Also when run() itself is cancelled: no call outlives its run.
            self._cancel_in_flight()
            await asyncio.gather(*self._in_flight, return_exceptions=True)
            if channel is not None:
                await channel.close()
            self._finished = self._loop.time()
            self._state = FINISHED
        if self._failure is not None:
            raise self._failure
        return self.snapshot()

    def stop(self) -> None:
        """End the run now: no new calls; calls in flight are cancelled. Safe to call from a
        signal handler of the run's loop, at any time and more than once."""
        self._stopping.set()
        if self._state == DRAINING:
            self._cancel_in_flight()

    def snapshot(self) -> LoadSummary:
        """Where the run stands: counts, outcomes and latencies so far."""
        rpcs = [tally.summary(method) for method, tally in self._tallies.items()]
        completed = sum(rpc.count for rpc in rpcs)
        ok = sum(rpc.ok for rpc in rpcs)
        return LoadSummary(
            gateway=self.gateway_address,
            settings=self.settings,
            state=self._state,
            stop_reason=self._stop_reason,
            elapsed=self._elapsed(),
            sent=self._sent,
            skipped=self._skipped,
            in_flight=len(self._in_flight),
            completed=completed,
            ok=ok,
            ok_rate=ok / completed if completed else None,
            rpcs=rpcs,
            checkouts={
                token: dict(outcomes.most_common())
                for token, outcomes in self._checkouts.items()
                if outcomes
            },
        )

    def _elapsed(self) -> float:
        if self._loop is None:
            return 0.0
        end = self._finished if self._finished is not None else self._loop.time()
        return end - self._started

    async def _schedule(self, shoppers: Shoppers) -> str:
        """Start the calls on the schedule; why it ended."""
        interval = 1.0 / self.settings.rate
        for slot in range(self.settings.max_requests):
            # Each call's time comes from the start, not from the previous call: lateness
            # (a busy event loop) never accumulates into a lower rate.
            offset = slot * interval
            if offset >= self.settings.duration:
                return DURATION
            await self._wait_until(self._started + offset)
            if self._stopping.is_set():
                return STOPPED
            if len(self._in_flight) >= self.settings.concurrency:
                self._skipped += 1
                continue
            call = shoppers.next_call()
            task = asyncio.create_task(self._send(call))
            self._sent += 1
            self._in_flight.add(task)
            task.add_done_callback(functools.partial(self._done, call))
        return MAX_REQUESTS

    async def _wait_until(self, due: float) -> None:
        assert self._loop is not None
        delay = due - self._loop.time()
        if delay > 0 and not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _send(self, call: Call) -> None:
        assert self._loop is not None
        started = self._loop.time()
        try:
            outcome = await call.send(self.settings.deadline)
            code = OK
        except aio.AioRpcError as error:
            code = outcome = error.code().name
        self._record(call, code, self._loop.time() - started, outcome)

    def _record(self, call: Call, code: str, latency: float | None, outcome: str) -> None:
        tally = self._tallies[call.method]
        tally.codes[code] += 1
        if latency is not None:
            bisect.insort(tally.latencies, latency)
        if call.token:
            self._checkouts.setdefault(call.token, Counter())[outcome] += 1

    def _done(self, call: Call, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if task.cancelled():
            # By stop(), perhaps before the call even began: counted, with no latency (it is
            # not an answer's).
            self._record(call, CANCELLED, None, CANCELLED)
            return
        # Anything but a gRPC status is a bug of the load itself: end the run and raise it
        # from run() rather than count it or lose it in a task nobody awaits.
        if task.exception() is not None and self._failure is None:
            self._failure = task.exception()
            self.stop()

    def _cancel_in_flight(self) -> None:
        for task in self._in_flight:
            task.cancel()
