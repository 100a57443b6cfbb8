"""Driving h2load: runs of GetUser calls into a Unix socket, and what each run measured."""

from __future__ import annotations

import asyncio
import math
import re
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scripts.bench.settings import GET_USER, H2LOAD_AUTHORITY
from services.common.caller import CALLER_HEADER

# Maximum throughput: 4 connections x 8 streams. 32 concurrent calls saturate one Python app
# on 2 cores and stay below the caller's circuit breaker on users (max_requests 64 in
# mesh.yaml), which would otherwise turn the excess into fast UNAVAILABLE answers.
CLIENTS = 4
STREAMS_PER_CLIENT = 8
PACED_RPS_PER_CLIENT = 100
"""h2load's --rps timer of a connection fires at most every 10 ms, so above 100 req/s per
connection it sends bursts; paced load uses more connections instead (see `Shape.paced`)."""
WARM_UP_REQUESTS = 1000
ROUNDS = 3
"""Flat-out runs per path, alternating between the paths; the median counts."""
MIN_REQUESTS = 500
MAX_REQUESTS = 100_000


class BenchError(RuntimeError):
    """The benchmark cannot go on (a tool failed, an answer was wrong)."""


async def run_tool(argv: Sequence[str], within: float) -> str:
    """Run a short-lived tool and return its output; it is killed if the wait is cut short
    (time limit, Ctrl-C)."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), within)
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise BenchError(f"{argv[0]} exited with {process.returncode}:\n{text[-2000:]}")
    return text


# --- h2load ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    """One h2load run."""

    requests: int
    ok: int
    """Calls answered with a GetUserResponse (see `H2Load.run`)."""
    rate: float
    """Completed requests per second, as h2load reports it (OK or not)."""
    latencies_us: list[int]
    """Every request's time to the end of its response, sorted."""

    @property
    def failed(self) -> int:
        return self.requests - self.ok

    @property
    def ok_rate(self) -> float:
        """Successful calls per second."""
        return self.rate * self.ok / self.requests

    def percentile(self, share: float) -> float:
        """Nearest-rank percentile in milliseconds."""
        rank = max(1, math.ceil(share * len(self.latencies_us)))
        return self.latencies_us[rank - 1] / 1000


@dataclass(frozen=True)
class Shape:
    """How h2load offers load: connections, streams each, and a pace (None: flat out)."""

    clients: int
    streams: int
    rate: float | None = None
    """Total requests per second, open loop."""

    @classmethod
    def saturating(cls) -> Shape:
        return cls(CLIENTS, STREAMS_PER_CLIENT)

    @classmethod
    def paced(cls, rate: float) -> Shape:
        """`rate` req/s over connections of at most 100 req/s each, so that each connection
        sends one request per timer tick."""
        clients = max(1, math.ceil(rate / PACED_RPS_PER_CLIENT))
        # No more concurrent calls than the saturating shape: a stall then holds requests back
        # in h2load instead of overflowing the caller's circuit breaker.
        streams = max(1, CLIENTS * STREAMS_PER_CLIENT // clients)
        return cls(clients, streams, rate)

    def arguments(self) -> list[str]:
        arguments = [f"--clients={self.clients}", f"--max-concurrent-streams={self.streams}"]
        if self.rate is not None:
            per_client = self.rate / self.clients
            # Connections whose ticks coincide would still burst together: open them a few per
            # millisecond (--rate per --rate-period) so their ticks spread over one period.
            period_ms = max(1, math.floor(1000 / per_client))
            arguments += [
                f"--rps={per_client:.3f}",
                f"--rate={math.ceil(self.clients / period_ms)}",
                "--rate-period=1ms",
            ]
        return arguments

    def describe(self) -> str:
        if self.rate is None:
            return f"{self.clients} connections x {self.streams} streams, flat out"
        return (
            f"{self.clients} connections x {self.rate / self.clients:.0f} req/s, open loop, "
            "connections staggered"
        )


_FINISHED = re.compile(r"^finished in [\d.]+\w+, (?P<rate>[\d.]+) req/s", re.MULTILINE)
_REQUESTS = re.compile(r"^requests: (?P<total>\d+) total,", re.MULTILINE)
_DATA = re.compile(r"\((?P<bytes>\d+)\) data$", re.MULTILINE)


@dataclass
class H2Load:
    """Drives GetUser with one fixed body; every run's per-request log lands in `work`."""

    body: Path
    frame_size: int
    """Bytes of one complete GetUserResponse gRPC frame: what every OK response carries."""
    work: Path
    caller: str
    """The user every call is made for (users answers GetUser only for the caller's own)."""
    results: dict[Path, list[LoadResult]] = field(default_factory=dict)
    """Every run (warm-ups too) by the socket it drove."""

    def calls(self, socket: Path) -> tuple[int, int]:
        """(calls, failed calls) h2load sent into `socket`."""
        results = self.results.get(socket, [])
        return sum(r.requests for r in results), sum(r.failed for r in results)

    async def run(
        self,
        socket: Path,
        requests: int,
        shape: Shape,
        expected_seconds: float,
        cpu: int | None = None,
    ) -> LoadResult:
        """`requests` GetUser calls into `socket` offered as `shape` says, by an h2load pinned
        to `cpu` if given; h2load is killed if the run takes far longer than
        `expected_seconds`."""
        log = self.work / f"h2load-{sum(map(len, self.results.values())) + 1}.tsv"
        argv = [
            *([] if cpu is None else ["taskset", "--cpu-list", str(cpu)]),
            "h2load",
            f"--requests={requests}",
            *shape.arguments(),
            f"--base-uri=unix:{socket}",
            f"--data={self.body}",
            "--header=content-type: application/grpc",
            "--header=te: trailers",
            f"--header={CALLER_HEADER}: {self.caller}",
            f"--log-file={log}",
            f"http://{H2LOAD_AUTHORITY}{GET_USER}",
        ]
        output = await run_tool(argv, within=30 + 3 * expected_seconds)
        finished, counts, data = (
            _FINISHED.search(output),
            _REQUESTS.search(output),
            _DATA.search(output),
        )
        if not (finished and counts and data):
            raise BenchError(f"cannot read h2load's output:\n{output}")
        # A gRPC error (HTTP 200 or not) carries no message, and every OK answer is the same
        # GetUserResponse frame: the DATA bytes h2load received count the OK calls exactly.
        ok, rest = divmod(int(data["bytes"]), self.frame_size)
        if int(counts["total"]) != requests or rest or ok > requests:
            raise BenchError(
                f"h2load into {socket}: {data['bytes']} response bytes are not a whole number "
                f"of {self.frame_size}-byte GetUserResponse frames for {requests} calls:\n{output}"
            )
        latencies = sorted(
            int(line.split("\t")[2]) for line in log.read_text().splitlines() if line
        )
        result = LoadResult(requests, ok, float(finished["rate"]), latencies)
        self.results.setdefault(socket, []).append(result)
        return result

    async def warm_up(self, socket: Path, cpu: int | None = None) -> LoadResult:
        """Connections, caches and a first estimate of the path's maximum rate."""
        return await self.run(socket, WARM_UP_REQUESTS, Shape.saturating(), 10, cpu)

    async def flat_out(
        self, socket: Path, warm: LoadResult, seconds: float, cpu: int | None = None
    ) -> LoadResult:
        """A run sized to last about `seconds` at the warm-up's rate."""
        requests = min(MAX_REQUESTS, max(MIN_REQUESTS, round(warm.rate * seconds)))
        return await self.run(socket, requests, Shape.saturating(), requests / warm.rate, cpu)

    async def at_rate(self, socket: Path, shape: Shape, seconds: float) -> LoadResult:
        assert shape.rate is not None
        requests = min(MAX_REQUESTS, max(MIN_REQUESTS, round(shape.rate * seconds)))
        # A multiple of the connections, so that each sends the same number at the same pace.
        requests = math.ceil(requests / shape.clients) * shape.clients
        return await self.run(socket, requests, shape, requests / shape.rate)


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: no compression flag, 4-byte big-endian length."""
    return struct.pack(">BI", 0, len(message)) + message
