"""Real Envoy processes for tests that render one config themselves: validate it, start it and
wait until it is ready, learn the ports it bound, and always stop it. Envoy runs with the one
command line shopmesh uses (shopmesh.envoy.command)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from google.protobuf import descriptor_pb2

from services.common.clock import utc_now
from services.users.keys import KeyDirectory
from shopmesh.envoy.admin import AdminClient, AdminUnreachable
from shopmesh.envoy.browser import STOREFRONT_FILES
from shopmesh.envoy.command import envoy_command, validate_command
from shopmesh.envoy.render import dump
from shopmesh.envoy.sidecar import render_sidecar
from shopmesh.layout import GatewayPorts, LocalLayout, Pod, PodPorts, StateDir, local_pods
from shopmesh.local.signing import ensure_signing_keys
from shopmesh.pki import CertificateAuthority, LocalPki
from shopmesh.topology import Topology
from tests.support.paths import ENVOY

STARTUP_DEADLINE = 20.0
HOUR = datetime.timedelta(hours=1)


def validate(config: Path) -> subprocess.CompletedProcess[str]:
    """Run `envoy --mode validate` on `config`."""
    return subprocess.run(
        validate_command(ENVOY, config), capture_output=True, text=True, timeout=60, check=False
    )


def admin_socket_of(config: Path) -> Path:
    """The admin socket a rendered bootstrap names."""
    document = yaml.safe_load(config.read_text())
    return Path(document["admin"]["address"]["pipe"]["path"])


@dataclass
class EnvoyProcess:
    """A running Envoy and its admin client."""

    process: asyncio.subprocess.Process
    admin: AdminClient
    log: Path

    async def listener_port(self, name: str) -> int:
        """The TCP port the listener `name` is bound to."""
        return (await self.admin.listener_ports())[name]

    async def stats(self) -> dict[str, int]:
        """Every counter and gauge, by name."""
        return await self.admin.stats()

    async def stat_sum(self, suffix: str) -> int:
        """The sum of the stats whose names end with `suffix` (listener stats carry the
        listener's address in their name)."""
        return sum(value for name, value in (await self.stats()).items() if name.endswith(suffix))

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


StartEnvoy = Callable[[Path], Awaitable[EnvoyProcess]]
"""The `envoys` fixture: start an Envoy on a config; it is stopped at teardown."""


async def start_envoy(config: Path, workdir: Path) -> EnvoyProcess:
    """Start Envoy on `config` and wait (with a deadline) until its admin /ready says LIVE."""
    log = workdir / f"{config.stem}.envoy.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            *envoy_command(ENVOY, config, log_level="warning"),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    envoy = EnvoyProcess(process, AdminClient(config.stem, admin_socket_of(config)), log)
    deadline = time.monotonic() + STARTUP_DEADLINE
    try:
        while not await envoy.admin.ready():
            if process.returncode is not None:
                raise AssertionError(f"envoy exited with {process.returncode}:\n{envoy.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"envoy not ready in {STARTUP_DEADLINE}s:\n{envoy.log_tail()}")
            await asyncio.sleep(0.05)
        return envoy
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


async def admin_gone(admin: AdminClient) -> bool:
    """Whether nothing answers on an admin socket any more."""
    with contextlib.suppress(AdminUnreachable):
        await admin.request("GET", "/ready")
        return False
    return True


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


def issue_identities(topology: Topology, certs_dir: Path) -> tuple[LocalPki, CertificateAuthority]:
    """A fresh local CA and a certificate for every mesh identity (with its name as DNS SAN,
    so plain gRPC test clients can check the server)."""
    pki = LocalPki(certs_dir)
    ca = pki.ensure_ca(datetime.timedelta(days=1))
    for identity, spiffe_id in topology.spiffe_ids.items():
        pki.issue(ca, identity, spiffe_id, HOUR, [identity])
    return pki, ca


def stand_in_jwks(directory: Path) -> Path:
    """A key directory with a JWKS at `directory` (as `shopmesh k8s issue-keys` writes it, and a
    Kubernetes gateway mounts it): a gateway config naming `directory / jwks.json` validates."""
    KeyDirectory(directory).ensure(utc_now())
    return directory


def stand_in_storefront(directory: Path) -> Path:
    """The storefront's files, each a stand-in (web/dist holds the built ones): a gateway
    config naming them validates."""
    directory.mkdir(parents=True, exist_ok=True)
    for file, _ in STOREFRONT_FILES.values():
        (directory / file).write_text(f"stand-in {file}\n")
    return directory


def local_layout(
    topology: Topology, root: Path, ports: Mapping[str, PodPorts] | None = None
) -> LocalLayout:
    """A local layout with its state directory under `root` (certificates in `root/var/certs`);
    pods without an entry in `ports` get port 0 everywhere (the OS picks; tests read the bound
    ports from admin)."""
    chosen = {pod.name: PodPorts(0, 0, 0) for pod in local_pods(topology)}
    chosen.update(ports or {})
    state = StateDir(root / "var")
    layout = LocalLayout(
        state, topology, "127.0.0.1", chosen, GatewayPorts(0, 0, 0), root / "shop.pb"
    )
    state.make_directories(layout.pods())
    ensure_signing_keys(state)  # the JWKS the gateway's config names
    stand_in_storefront(state.storefront)
    return layout


def write_sidecar(topology: Topology, layout: LocalLayout, pod: Pod, root: Path) -> Path:
    """Render `pod`'s sidecar config into `root`; returns its path."""
    path = root / f"{pod.name}.yaml"
    path.write_text(dump(render_sidecar(topology, layout, pod)))
    return path
