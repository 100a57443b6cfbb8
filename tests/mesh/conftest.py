"""Helpers for tests that run real Envoy processes: validate a config, start one Envoy, wait for
it to be ready and learn the ports it bound, and always stop it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from shopmesh.pki import CertificateAuthority, LocalPki
from shopmesh.render import (
    GatewayPorts,
    LocalAddressing,
    Pod,
    PodPorts,
    dump,
    local_pods,
    render_sidecar,
)
from shopmesh.topology import Topology

ROOT = Path(__file__).resolve().parents[2]
MESH_FILE = ROOT / "envoy" / "mesh.yaml"
ENVOY = Path(sys.executable).parent / "envoy"
STARTUP_DEADLINE = 20.0


async def eventually(
    condition: Callable[[], Awaitable[bool]], within: float, what: str, interval: float = 0.05
) -> None:
    """Poll `condition` until it holds; fail naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


def envoy_command(config: Path, *extra: str) -> list[str]:
    """The Envoy command line every test uses: one worker thread (2-core machines) and no hot
    restart, so concurrent Envoys never share a base id."""
    return [str(ENVOY), "-c", str(config), "--concurrency", "1", "--disable-hot-restart", *extra]


def validate(config: Path) -> subprocess.CompletedProcess[str]:
    """Run `envoy --mode validate` on `config`."""
    return subprocess.run(
        [*envoy_command(config, "--mode", "validate"), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@dataclass
class EnvoyProcess:
    """A running Envoy with its admin address (written by Envoy itself, so port 0 works)."""

    process: asyncio.subprocess.Process
    admin: str
    log: Path

    async def admin_get(self, path: str) -> tuple[int, str]:
        """GET an admin endpoint; returns (status, body)."""
        return await asyncio.to_thread(_get, f"http://{self.admin}{path}")

    async def listener_port(self, name: str) -> int:
        """The TCP port the listener `name` is bound to."""
        status, body = await self.admin_get("/listeners?format=json")
        assert status == 200, body
        for listener in json.loads(body)["listener_statuses"]:
            if listener["name"] == name:
                return int(listener["local_address"]["socket_address"]["port_value"])
        raise AssertionError(f"no listener {name!r} in {body}")

    async def stats(self) -> dict[str, int]:
        """Every counter and gauge, by name."""
        status, body = await self.admin_get("/stats")
        assert status == 200, body
        values: dict[str, int] = {}
        for line in body.splitlines():
            name, _, value = line.partition(": ")
            if value.isdigit():
                values[name] = int(value)
        return values

    async def stat_sum(self, suffix: str) -> int:
        """The sum of the stats whose names end with `suffix` (listener stats carry the
        listener's address in their name)."""
        return sum(value for name, value in (await self.stats()).items() if name.endswith(suffix))

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


async def start_envoy(config: Path, workdir: Path) -> EnvoyProcess:
    """Start Envoy on `config` and wait (with a deadline) until its admin /ready says LIVE."""
    admin_file = workdir / f"{config.stem}.admin"
    log = workdir / f"{config.stem}.envoy.log"
    admin_file.unlink(missing_ok=True)
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            *envoy_command(config, "--admin-address-path", str(admin_file)),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    envoy = EnvoyProcess(process, "", log)
    deadline = time.monotonic() + STARTUP_DEADLINE
    try:
        while True:
            if process.returncode is not None:
                raise AssertionError(f"envoy exited with {process.returncode}:\n{envoy.log_tail()}")
            if not envoy.admin and admin_file.exists():
                envoy.admin = admin_file.read_text().strip()
            if envoy.admin:
                with contextlib.suppress(OSError):
                    status, _ = await envoy.admin_get("/ready")
                    if status == 200:
                        return envoy
            if time.monotonic() > deadline:
                raise AssertionError(f"envoy not ready in {STARTUP_DEADLINE}s:\n{envoy.log_tail()}")
            await asyncio.sleep(0.05)
    except BaseException:
        await stop_envoy(envoy)
        raise


async def stop_envoy(envoy: EnvoyProcess) -> None:
    """Stop Envoy: SIGTERM, then SIGKILL if it lingers."""
    if envoy.process.returncode is not None:
        return
    envoy.process.terminate()
    try:
        await asyncio.wait_for(envoy.process.wait(), timeout=10)
    except TimeoutError:
        envoy.process.kill()
        await envoy.process.wait()


StartEnvoy = Callable[[Path], Awaitable["EnvoyProcess"]]


@pytest.fixture
async def envoys(socket_dir: Path) -> AsyncIterator[StartEnvoy]:
    """Start Envoys with `await envoys(config)`; every one is stopped at teardown."""
    started: list[EnvoyProcess] = []

    async def start(config: Path) -> EnvoyProcess:
        envoy = await start_envoy(config, socket_dir)
        started.append(envoy)
        return envoy

    try:
        yield start
    finally:
        for envoy in started:
            await stop_envoy(envoy)


def contracts_descriptor_set(topology: Topology) -> bytes:
    """A FileDescriptorSet with every gRPC service and method the topology names (empty
    messages): enough for Envoy's JSON transcoder to load, without depending on proto/."""
    descriptors = descriptor_pb2.FileDescriptorSet()
    for service in topology.services.values():
        package, name = service.grpc_service.rsplit(".", 1)
        methods = set(topology.policies[service.name].methods)
        for methods_of_caller in topology.callers(service.name).values():
            methods.update(methods_of_caller)
        file = descriptors.file.add(name=f"{package}.proto", package=package, syntax="proto3")
        file.message_type.add(name="Message")
        grpc_service = file.service.add(name=name)
        for method in sorted(methods):
            grpc_service.method.add(
                name=method, input_type=f".{package}.Message", output_type=f".{package}.Message"
            )
    return descriptors.SerializeToString()


HOUR = datetime.timedelta(hours=1)


def issue_identities(topology: Topology, certs_dir: Path) -> tuple[LocalPki, CertificateAuthority]:
    """A fresh local CA and a certificate for every mesh identity (with its name as DNS SAN,
    so plain gRPC test clients can check the server)."""
    pki = LocalPki(certs_dir)
    ca = pki.ensure_ca(datetime.timedelta(days=1))
    for identity in topology.identities:
        pki.issue(ca, identity, topology.spiffe_id(identity), HOUR, [identity])
    return pki, ca


def local_addressing(
    topology: Topology, root: Path, ports: Mapping[str, PodPorts] | None = None
) -> LocalAddressing:
    """Local addressing under `root`; pods without an entry in `ports` get port 0 everywhere
    (the OS picks; tests read the bound ports from admin)."""
    chosen = {pod.name: PodPorts(0, 0, 0) for pod in local_pods(topology)}
    chosen.update(ports or {})
    addressing = LocalAddressing(
        var_dir=root / "var",
        certs_dir=root / "certs",
        descriptor=root / "shop.pb",
        host="127.0.0.1",
        ports=chosen,
        gateway=GatewayPorts(0, 0, 0),
    )
    addressing.make_directories(topology)
    return addressing


def write_sidecar(topology: Topology, addressing: LocalAddressing, pod: Pod, root: Path) -> Path:
    """Render `pod`'s sidecar config into `root`; returns its path."""
    path = root / f"{pod.name}.yaml"
    path.write_text(dump(render_sidecar(topology, addressing, pod)))
    return path
