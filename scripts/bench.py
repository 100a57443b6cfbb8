"""`make bench`: what the sidecars cost, measured on this machine.

One run, on loopback and Unix sockets only, bounded in request count and time, against the mesh
exactly as `make up` runs it (shopmesh.local: every app on its Unix socket behind its Envoy
sidecar, Envoy with --concurrency 1, real certificates from shopmesh.pki, configs from
shopmesh.envoy) in a temporary state directory:

1. Unary `users.GetUser` (a SQLite read of a user created first), driven by h2load:
   - direct: straight at the users app's own Unix socket;
   - mesh: into orders' sidecar egress socket -> mTLS -> users' sidecar -> the same app.
   h2load dials Unix sockets itself (`--base-uri=unix:<path>`), so both paths use the exact
   rendered configs: no bench-only listener. The maximum throughput of each path (median of
   alternating rounds) and their ratio; then p50/p99 of both at 25 % of the direct maximum
   (open loop, h2load --rps) and what the two sidecars add.
2. Checkout: PlaceOrder through the edge gateway from N concurrent grpc.aio workers, a fixed
   number of orders with unique idempotency keys: orders/s, p50/p99 and every outcome.
3. The resident memory (VmRSS, and the peak VmHWM) of every Envoy after the run.

h2load counts an HTTP 200 as a success even when grpc-status is not 0 (Envoy's own gRPC answers,
such as a circuit-breaker overflow, are HTTP 200 too). So the OK calls are counted separately:
every OK GetUser answer is the same GetUserResponse frame and an error carries none, so the DATA
bytes h2load received divided by that frame's size is the number of OK calls; the sidecars'
access logs give every call's grpc-status as a cross-check.

Usage: python scripts/bench.py [--seconds 6] [--orders 200] [--workers 8] [--keep]
       make bench BENCH_ARGS='--seconds 10'
Run it on an otherwise idle machine: it reports (and warns about) the CPU time other processes
used during the run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc import aio
from rich import box
from rich.console import Console
from rich.table import Table

from shop.orders.v1 import orders_pb2, orders_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc
from shopmesh.envoy.sidecar import EGRESS, INBOUND
from shopmesh.local.errors import MeshError
from shopmesh.local.mesh import RunningMesh
from shopmesh.local.startup import MeshOptions, find_envoy, up
from shopmesh.topology import GATEWAY

ROOT = Path(__file__).resolve().parent.parent
MESH_FILE = ROOT / "envoy" / "mesh.yaml"
DESCRIPTOR = ROOT / "gen" / "shop.pb"

CALLER = "orders-0"
"""The pod whose egress the mesh path enters: orders may call users.GetUser (mesh.yaml)."""
CALLEE = "users-0"
GET_USER = "/shop.users.v1.UsersService/GetUser"
H2LOAD_AUTHORITY = "bench.h2load"
"""The :authority of h2load's calls, which tells them apart from orders' own in the logs."""

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
LATENCY_LOAD = 0.25
"""Latency is measured at this share of the direct path's maximum rate."""

FOREIGN_CPU_LIMIT = 0.05
"""Above this share of CPU time used by other processes during the run, it warns."""
CALL_TIMEOUT = 10.0
CHECKOUT_SKU = "STICKER-01"
"""A seed-catalog product with enough stock (1000) for every benchmark order."""
PAYMENT_TOKEN = "tok_visa"


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
    results: dict[Path, list[LoadResult]] = field(default_factory=dict)
    """Every run (warm-ups too) by the socket it drove."""

    def calls(self, socket: Path) -> tuple[int, int]:
        """(calls, failed calls) h2load sent into `socket`."""
        results = self.results.get(socket, [])
        return sum(r.requests for r in results), sum(r.failed for r in results)

    async def run(
        self, socket: Path, requests: int, shape: Shape, expected_seconds: float
    ) -> LoadResult:
        """`requests` GetUser calls into `socket` offered as `shape` says; h2load is killed
        if the run takes far longer than `expected_seconds`."""
        log = self.work / f"h2load-{sum(map(len, self.results.values())) + 1}.tsv"
        argv = [
            "h2load",
            f"--requests={requests}",
            *shape.arguments(),
            f"--base-uri=unix:{socket}",
            f"--data={self.body}",
            "--header=content-type: application/grpc",
            "--header=te: trailers",
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

    async def warm_up(self, socket: Path) -> LoadResult:
        """Connections, caches and a first estimate of the path's maximum rate."""
        return await self.run(socket, WARM_UP_REQUESTS, Shape.saturating(), expected_seconds=10)

    async def flat_out(self, socket: Path, warm: LoadResult, seconds: float) -> LoadResult:
        """A run sized to last about `seconds` at the warm-up's rate."""
        requests = min(MAX_REQUESTS, max(MIN_REQUESTS, round(warm.rate * seconds)))
        return await self.run(socket, requests, Shape.saturating(), requests / warm.rate)

    async def at_rate(self, socket: Path, shape: Shape, seconds: float) -> LoadResult:
        assert shape.rate is not None
        requests = min(MAX_REQUESTS, max(MIN_REQUESTS, round(shape.rate * seconds)))
        # A multiple of the connections, so that each sends the same number at the same pace.
        requests = math.ceil(requests / shape.clients) * shape.clients
        return await self.run(socket, requests, shape, requests / shape.rate)


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: no compression flag, 4-byte big-endian length."""
    return struct.pack(">BI", 0, len(message)) + message


# --- unary: direct vs through the sidecars --------------------------------------------------


@dataclass(frozen=True)
class Maximum:
    """The maximum throughput of one path over several rounds."""

    rounds: list[LoadResult]

    @property
    def rate(self) -> float:
        """The median of the rounds' OK calls per second."""
        return statistics.median(r.ok_rate for r in self.rounds)

    def spread(self) -> str:
        rates = [r.ok_rate for r in self.rounds]
        return f"{min(rates):.0f}-{max(rates):.0f}"

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.rounds)


@dataclass(frozen=True)
class Unary:
    direct_max: Maximum
    mesh_max: Maximum
    paced: Shape
    direct_at_rate: LoadResult
    mesh_at_rate: LoadResult
    frame_size: int
    direct_calls: tuple[int, int]
    """(calls, failed) straight at the app, over every h2load run."""
    mesh_calls: tuple[int, int]
    """(calls, failed) into the caller's egress, over every h2load run."""


def _raw(message: bytes) -> bytes:
    return message


async def get_user_raw(address: str, request: bytes) -> bytes:
    """One GetUser call with a grpc client, returning the serialized response."""
    async with aio.insecure_channel(address) as channel:
        method = channel.unary_unary(GET_USER, request_serializer=_raw, response_deserializer=_raw)
        response: bytes = await method(request, timeout=CALL_TIMEOUT)
        return response


async def bench_unary(mesh: RunningMesh, user_id: str, work: Path, seconds: float) -> Unary:
    request = users_pb2.GetUserRequest(user_id=user_id).SerializeToString()
    direct = mesh.pod(CALLEE).app_socket
    through = mesh.pod(CALLER).egress_socket
    # Both paths must answer the very bytes h2load sends with the same, right user.
    responses = {path: await get_user_raw(f"unix:{path}", request) for path in (direct, through)}
    if len(set(responses.values())) != 1:
        raise BenchError("GetUser answers differ between the direct and the mesh path")
    response = responses[direct]
    if users_pb2.GetUserResponse.FromString(response).user.user_id != user_id:
        raise BenchError(f"GetUser did not return user {user_id}")
    body = work / "get_user.bin"
    body.write_bytes(grpc_frame(request))
    h2load = H2Load(body, len(grpc_frame(response)), work)

    warm = {path: await h2load.warm_up(path) for path in (direct, through)}
    # Alternating rounds, so that drifting background load on the machine hits both paths alike.
    rounds: dict[Path, list[LoadResult]] = {direct: [], through: []}
    for _ in range(ROUNDS):
        for path, results in rounds.items():
            results.append(await h2load.flat_out(path, warm[path], seconds))
    direct_max = Maximum(rounds[direct])
    paced = Shape.paced(LATENCY_LOAD * direct_max.rate)
    direct_at_rate = await h2load.at_rate(direct, paced, seconds)
    mesh_at_rate = await h2load.at_rate(through, paced, seconds)
    return Unary(
        direct_max,
        Maximum(rounds[through]),
        paced,
        direct_at_rate,
        mesh_at_rate,
        h2load.frame_size,
        h2load.calls(direct),
        h2load.calls(through),
    )


def grpc_statuses(access_log: Path, listener: str) -> Counter[str]:
    """h2load's GetUser calls an Envoy access log records for `listener`, by grpc-status (with
    Envoy's response flags when it answered itself, e.g. `14 UO` for a circuit-breaker
    overflow). h2load's calls are those with its authority."""
    counts: Counter[str] = Counter()
    for line in access_log.read_text().splitlines():
        entry = json.loads(line)
        if (entry["listener"], entry["path"], entry["authority"]) == (
            listener,
            GET_USER,
            H2LOAD_AUTHORITY,
        ):
            flags = entry["flags"]
            counts[f"{entry['grpc_status']}" + ("" if flags == "-" else f" {flags}")] += 1
    return counts


@dataclass(frozen=True)
class MeshLogs:
    """What the sidecars logged of h2load's GetUser calls through the mesh, by grpc-status."""

    caller: Counter[str]
    """orders' egress listener."""
    callee: Counter[str]
    """users' inbound listener."""


async def mesh_logs(mesh: RunningMesh, calls: int, failed: int) -> MeshLogs:
    """Read both sidecars' access logs once they hold all `calls` (the supervisor has Envoy
    flush them every 100 ms); the callee sees every call the caller did not fail itself."""
    deadline = time.monotonic() + 5
    while True:
        logs = MeshLogs(
            grpc_statuses(mesh.pod(CALLER).access_log, EGRESS),
            grpc_statuses(mesh.pod(CALLEE).access_log, INBOUND),
        )
        complete = logs.caller.total() >= calls and logs.callee.total() >= calls - failed
        if complete or time.monotonic() > deadline:
            return logs
        await asyncio.sleep(0.1)


# --- checkout through the gateway -----------------------------------------------------------


@dataclass(frozen=True)
class Checkout:
    orders: int
    workers: int
    seconds: float
    latencies_ms: list[float]
    outcomes: Counter[str]

    def percentile(self, share: float) -> float:
        rank = max(1, math.ceil(share * len(self.latencies_ms)))
        return self.latencies_ms[rank - 1]


async def bench_checkout(gateway: str, user_id: str, orders: int, workers: int) -> Checkout:
    """`orders` PlaceOrder calls through the gateway from `workers` concurrent callers, after
    one warm-up order per worker."""
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    async with aio.insecure_channel(gateway) as channel:
        stub = orders_pb2_grpc.OrdersServiceStub(channel)

        async def place() -> str:
            request = orders_pb2.PlaceOrderRequest(
                idempotency_key=f"bench-{uuid.uuid4().hex}",
                user_id=user_id,
                items=[orders_pb2.OrderItem(sku=CHECKOUT_SKU, quantity=1)],
                payment_token=PAYMENT_TOKEN,
            )
            try:
                response = await stub.PlaceOrder(request, timeout=CALL_TIMEOUT)
            except aio.AioRpcError as error:
                return error.code().name
            return orders_pb2.OrderStatus.Name(response.order.status)

        for _ in range(workers):
            await place()
        remaining = iter(range(orders))

        async def worker() -> None:
            for _ in remaining:
                started = time.perf_counter()
                outcome = await place()
                latencies.append((time.perf_counter() - started) * 1000)
                outcomes[outcome] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        elapsed = time.perf_counter() - started
    return Checkout(orders, workers, elapsed, sorted(latencies), outcomes)


async def create_user(gateway: str) -> str:
    async with aio.insecure_channel(gateway) as channel:
        response = await users_pb2_grpc.UsersServiceStub(channel).CreateUser(
            users_pb2.CreateUserRequest(
                request_id=f"bench-{uuid.uuid4().hex}",
                email=f"bench-{uuid.uuid4().hex[:12]}@example.com",
                display_name="Bench",
            ),
            timeout=CALL_TIMEOUT,
        )
        return response.user.user_id


# --- machine, memory, report ----------------------------------------------------------------


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB, from /proc/<pid>/status."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(value.split()[0])
    return values["VmRSS"], values["VmHWM"]


def envoy_memory(mesh: RunningMesh) -> dict[str, tuple[int, int]]:
    pids = {name: pod.sidecar.pid if pod.sidecar else None for name, pod in mesh.pods.items()}
    pids[GATEWAY] = mesh.gateway.pid
    return {name: memory_kib(pid) for name, pid in pids.items() if pid is not None}


def machine() -> list[tuple[str, str]]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    memory = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
    return [
        ("date (UTC)", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")),
        ("CPUs (nproc)", str(len(os.sched_getaffinity(0)))),
        ("CPU model", model[1].strip() if model else "unknown"),
        ("memory", f"{int(memory[1]) / 1024**2:.1f} GiB" if memory else "unknown"),
        ("kernel", f"{platform.system()} {platform.release()}"),
        # Other work on the machine skews every figure; this shows whether there was any.
        ("load average before (1/5/15 min)", " ".join(f"{v:.2f}" for v in os.getloadavg())),
    ]


async def tools(envoy: Path) -> list[tuple[str, str]]:
    envoy_output = await run_tool([str(envoy), "--version"], 30)
    envoy_version = re.search(r"version: \S+?/([\d.]+)/", envoy_output)
    h2load = (await run_tool(["h2load", "--version"], 30)).strip()
    return [
        ("envoy", envoy_version[1] if envoy_version else envoy_output.strip()),
        ("h2load", h2load.removeprefix("h2load ")),
        ("python", platform.python_version()),
        ("grpcio", grpc.__version__),
    ]


def ms(value: float) -> str:
    return f"{value:.2f} ms"


@dataclass(frozen=True)
class Figures:
    about: list[tuple[str, str]]
    startup: float
    pods: int
    unary: Unary
    logs: MeshLogs
    retries: int
    overflows: int
    checkout: Checkout
    memory: dict[str, tuple[int, int]]
    seconds: float
    foreign_cpu: float
    """Share of the machine's CPU time that processes outside the benchmark used during it."""


def signed_ms(value: float) -> str:
    return f"{value:+.2f} ms"


def two_columns(rows: Sequence[tuple[str, str]], right: bool = False) -> Table:
    table = Table(box=box.SIMPLE, show_header=False)
    table.add_column()
    table.add_column(justify="right" if right else "left")
    for row in rows:
        table.add_row(*row)
    return table


def render(figures: Figures, console: Console) -> None:
    """Print every figure as tables."""
    unary, checkout = figures.unary, figures.checkout
    console.print("[bold]Machine and tools[/bold]")
    console.print(
        two_columns(
            [
                *figures.about,
                ("CPU used by other processes during", f"{figures.foreign_cpu:.1%}"),
                ("mesh start (`shopmesh up`)", f"{figures.startup:.2f} s"),
            ]
        )
    )

    d, m = unary.direct_at_rate, unary.mesh_at_rate
    assert unary.paced.rate is not None
    console.print("[bold]Unary users.GetUser (a SQLite read), h2load over Unix sockets[/bold]")
    table = Table(box=box.SIMPLE)
    table.add_column("")
    table.add_column("direct\n(app socket)", justify="right")
    table.add_column("orders sidecar\n> mTLS >\nusers sidecar", justify="right")
    table.add_column("the sidecars\nadd", justify="right")
    table.add_row(
        f"max throughput (median of {ROUNDS})",
        f"{unary.direct_max.rate:.0f} req/s",
        f"{unary.mesh_max.rate:.0f} req/s",
        f"ratio {unary.mesh_max.rate / unary.direct_max.rate:.2f}",
    )
    table.add_row("  rounds ranged", unary.direct_max.spread(), unary.mesh_max.spread(), "")
    for name, share in (("p50", 0.5), ("p99", 0.99)):
        table.add_row(
            f"{name} at {unary.paced.rate:.0f} req/s ({LATENCY_LOAD:.0%})",
            ms(d.percentile(share)),
            ms(m.percentile(share)),
            signed_ms(m.percentile(share) - d.percentile(share)),
        )
    table.add_row(
        "calls sent / failed",
        "{} / {}".format(*unary.direct_calls),
        "{} / {}".format(*unary.mesh_calls),
        "",
    )
    console.print(table)

    def statuses(counts: Counter[str]) -> str:
        return ", ".join(f"{code}: {n}" for code, n in sorted(counts.items())) or "none"

    console.print("[bold]How the unary figures were measured[/bold]")
    console.print(
        two_columns(
            [
                (
                    "max throughput",
                    f"{Shape.saturating().describe()}; {WARM_UP_REQUESTS} warm-up calls per "
                    f"path, then {ROUNDS} alternating rounds of ~{figures.seconds:.0f} s per "
                    f"path ({unary.direct_max.requests} / {unary.mesh_max.requests} calls)",
                ),
                (
                    f"latency at {LATENCY_LOAD:.0%} of direct max",
                    f"{unary.paced.describe()}; {d.requests} calls per path",
                ),
                (
                    "OK calls (h2load: HTTP 2xx)",
                    f"every OK answer is the same {unary.frame_size}-byte GetUserResponse "
                    "frame, an error has none: h2load's DATA bytes count them (throughput "
                    "counts only OK calls)",
                ),
                ("grpc-status at orders' egress", statuses(figures.logs.caller)),
                ("grpc-status at users' inbound", statuses(figures.logs.callee)),
                (
                    "orders -> users retries / overflows",
                    f"{figures.retries} / {figures.overflows} (circuit breaker)",
                ),
            ]
        )
    )

    console.print(
        "[bold]Checkout: PlaceOrder through the gateway[/bold] "
        "(saga: user, price, reserve, charge, commit)"
    )
    console.print(
        two_columns(
            [
                ("orders (concurrent workers)", f"{checkout.orders} ({checkout.workers})"),
                ("throughput", f"{checkout.orders / checkout.seconds:.1f} orders/s"),
                ("p50", ms(checkout.percentile(0.5))),
                ("p99", ms(checkout.percentile(0.99))),
                ("outcomes", ", ".join(f"{k}: {v}" for k, v in checkout.outcomes.most_common())),
            ],
            right=True,
        )
    )

    console.print("[bold]Envoy memory after the run[/bold]")
    memory = Table(box=box.SIMPLE)
    memory.add_column("envoy")
    memory.add_column("VmRSS", justify="right")
    memory.add_column("peak (VmHWM)", justify="right")
    for name, (rss, peak) in figures.memory.items():
        memory.add_row(name, f"{rss / 1024:.1f} MiB", f"{peak / 1024:.1f} MiB")
    console.print(memory)


def problems(figures: Figures) -> list[str]:
    """What makes the figures less than clean: failed calls, or logs that disagree."""
    unary, logs, checkout = figures.unary, figures.logs, figures.checkout
    found = []
    # Not the load average: it trails the last minute, which may hold an earlier run.
    if figures.foreign_cpu > FOREIGN_CPU_LIMIT:
        found.append(
            f"the machine was busy: other processes used {figures.foreign_cpu:.0%} of the CPU "
            "time during the run, which skews every figure"
        )
    for path, (calls, failed) in (("direct", unary.direct_calls), ("mesh", unary.mesh_calls)):
        if failed:
            found.append(
                f"{failed} of {calls} GetUser calls ({path}) failed; the latencies include them"
            )
    logged_failures = logs.caller.total() - logs.caller["0"]
    if (logs.caller.total(), logged_failures) != unary.mesh_calls:
        found.append(
            f"orders' egress logged {logs.caller.total()} h2load calls, {logged_failures} "
            f"failed; h2load counted {unary.mesh_calls[0]}, {unary.mesh_calls[1]} failed"
        )
    if checkout.outcomes["ORDER_STATUS_CONFIRMED"] != checkout.orders:
        found.append(f"not every order was confirmed: {dict(checkout.outcomes)}")
    return found


# --- main -----------------------------------------------------------------------------------


async def stop_surely(mesh: RunningMesh) -> None:
    """Stop the mesh even when this task is cancelled meanwhile (Ctrl-C or SIGTERM arriving
    while a run ends), then pass the cancellation on."""
    stopping = asyncio.ensure_future(mesh.stop())
    cancelled = False
    while not stopping.done():
        try:
            await asyncio.shield(stopping)
        except asyncio.CancelledError:
            cancelled = True
    stopping.result()
    if cancelled:
        raise asyncio.CancelledError


@dataclass(frozen=True)
class CpuSample:
    """Busy CPU seconds of the whole machine and of this process with its children (the mesh
    and h2load are children: once reaped, their CPU time counts in os.times())."""

    machine: float
    ours: float

    @classmethod
    def now(cls) -> CpuSample:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        # user nice system idle iowait irq softirq steal: everything but idle and iowait.
        busy = sum(fields[:8]) - fields[3] - fields[4]
        times = os.times()
        ours = times.user + times.system + times.children_user + times.children_system
        return cls(busy / os.sysconf("SC_CLK_TCK"), ours)


def foreign_share(before: CpuSample, after: CpuSample, wall: float) -> float:
    """The share of all CPUs' time that other processes used between two samples."""
    other = (after.machine - before.machine) - (after.ours - before.ours)
    return max(0.0, other) / (wall * len(os.sched_getaffinity(0)))


async def bench(args: argparse.Namespace, root: Path) -> Figures:
    if shutil.which("h2load") is None:
        raise BenchError("h2load not found: `make bench` installs it (Debian nghttp2-client)")
    about = machine()
    cpu_before, started = CpuSample.now(), time.monotonic()
    print("starting the mesh (shopmesh.local) ...", flush=True)
    mesh = await up(MeshOptions(state_dir=root / "mesh", topology=MESH_FILE, descriptor=DESCRIPTOR))
    try:
        if "GetUser" not in mesh.topology.services["orders"].calls.get("users", ()):
            raise BenchError(f"{MESH_FILE} no longer lets orders call users.GetUser")
        about += await tools(find_envoy())
        gateway = mesh.gateway_address
        user_id = await create_user(gateway)
        h2load_seconds = (2 * ROUNDS + 2) * args.seconds
        print(f"h2load: GetUser direct and through two sidecars (~{h2load_seconds:.0f} s) ...")
        unary = await bench_unary(mesh, user_id, root, args.seconds)
        print(f"{args.orders} checkouts through the gateway ...", flush=True)
        checkout = await bench_checkout(gateway, user_id, args.orders, args.workers)
        memory = envoy_memory(mesh)
        stats = await mesh.admin(CALLER).stats()
        logs = await mesh_logs(mesh, *unary.mesh_calls)
    finally:
        await stop_surely(mesh)
    foreign = foreign_share(cpu_before, CpuSample.now(), time.monotonic() - started)
    return Figures(
        about=about,
        startup=mesh.state.up_seconds or 0.0,
        pods=len(mesh.pods),
        unary=unary,
        logs=logs,
        retries=stats.get("cluster.svc_users.upstream_rq_retry", 0),
        # Envoy 1.40 counts requests refused by max_requests as active (not pending) overflows.
        overflows=stats.get("cluster.svc_users.upstream_rq_active_overflow", 0)
        + stats.get("cluster.svc_users.upstream_rq_pending_overflow", 0),
        checkout=checkout,
        memory=memory,
        seconds=args.seconds,
        foreign_cpu=foreign,
    )


async def _main(args: argparse.Namespace, root: Path) -> Figures:
    # SIGTERM cancels like Ctrl-C does, so the mesh is stopped on the way out.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await bench(args, root)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each h2load run")
    parser.add_argument(
        "--orders",
        type=int,
        default=200,
        help="checkouts to place (the gateway's rate limit in mesh.yaml, a burst of 200 then "
        "100/s, answers RESOURCE_EXHAUSTED beyond)",
    )
    parser.add_argument("--workers", type=int, default=8, help="concurrent checkout callers")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    # Short: Unix socket paths must stay under ~100 bytes.
    root = Path(tempfile.mkdtemp(prefix="smbench-", dir="/tmp"))
    started = time.monotonic()
    status = 1
    try:
        figures = asyncio.run(_main(args, root))
        # Wide enough for the tables when the output is a file or a pipe, not a terminal.
        console = Console(width=None if sys.stdout.isatty() else 120, highlight=False)
        render(figures, console)
        console.print(f"bench took {time.monotonic() - started:.0f} s")
        for problem in problems(figures):
            console.print(f"WARNING: {problem}")
        status = 0
    except (BenchError, MeshError) as error:
        print(f"bench failed: {error}", file=sys.stderr)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(
            "interrupted; the mesh was stopped (if a second Ctrl-C cut that short: "
            f"shopmesh down --state-dir {root / 'mesh'})",
            file=sys.stderr,
        )
    finally:
        if status or args.keep:
            print(f"logs, configs and h2load logs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
