"""Helpers for tests that run real Envoy processes: validate a config, start one Envoy, wait for
it to be ready and learn the ports it bound, and always stop it.

The whole mesh: the module-scoped `mesh` fixture starts every app, sidecar and the gateway
through shopmesh.supervisor (the code behind `shopmesh up`) in a fresh state directory and
always stops all of them; `mesh_clients` gives a test gRPC stubs through the gateway plus
checkout helpers. Tests that use either run in their module's event loop (set by
`pytest_collection_modifyitems` below, so a module needs no marker of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from google.protobuf import descriptor_pb2
from grpc import aio

from shop.inventory.v1 import inventory_pb2_grpc
from shop.notifications.v1 import notifications_pb2, notifications_pb2_grpc
from shop.orders.v1 import orders_pb2, orders_pb2_grpc
from shop.payments.v1 import payments_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc
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
from shopmesh.supervisor import MeshOptions, RunningMesh, http_request, parse_stats, up
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


@dataclass
class EnvoyProcess:
    """A running Envoy with its admin address (written by Envoy itself, so port 0 works)."""

    process: asyncio.subprocess.Process
    admin: str
    log: Path

    async def admin_get(self, path: str) -> tuple[int, str]:
        """GET an admin endpoint; returns (status, body)."""
        return await http_request(f"http://{self.admin}{path}")

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
        return parse_stats(body)

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


# --- the whole mesh -------------------------------------------------------------------------

DESCRIPTOR_SET = ROOT / "gen" / "shop.pb"
MESH_STARTUP_DEADLINE = 60.0
"""Generous for a loaded CI machine; a warm start takes one to two seconds."""
KEEP_STATE_VARIABLE = "SHOPMESH_TEST_KEEP_STATE"
"""Set to 1 to keep each mesh's state directory (logs, access logs, data) after the tests."""


@contextlib.asynccontextmanager
async def running_mesh(**options: Any) -> AsyncIterator[RunningMesh]:
    """Start the whole mesh in a fresh, short temporary state directory (Unix socket paths
    are limited to ~100 bytes) and always stop every process when the block exits.

    `options` override MeshOptions fields, e.g. `app_env={"SHOPMESH_ORDERS_RECOVERY_INTERVAL":
    "0.5"}` or `grace_seconds=5`; the defaults suit tests (2 s drain grace, Envoy warnings
    only). A failed start has already stopped what it started and raises MeshError naming the
    process, with the end of its log."""
    state_dir = Path(tempfile.mkdtemp(prefix="smm-", dir="/tmp"))
    settings: dict[str, Any] = {
        "state_dir": state_dir,
        "topology": MESH_FILE,
        "descriptor": DESCRIPTOR_SET,
        "envoy": ENVOY,
        "startup_timeout": MESH_STARTUP_DEADLINE,
        "grace_seconds": 2.0,
        "envoy_log_level": "warning",
        **options,
    }
    try:
        mesh = await up(MeshOptions(**settings))
        try:
            yield mesh
        finally:
            await mesh.stop()
    finally:
        if os.environ.get(KEEP_STATE_VARIABLE) == "1":
            print(f"mesh state kept in {state_dir}", file=sys.stderr)
        else:
            shutil.rmtree(state_dir, ignore_errors=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh() -> AsyncIterator[RunningMesh]:
    """The whole mesh (every app with its sidecar, and the gateway), shared by one module's
    tests. A test that changes it (faults, stopped apps) restores it in a `finally`."""
    async with running_mesh() as running:
        yield running


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run every test that uses the mesh in its module's event loop, the loop the `mesh`
    fixture lives in (pytest-asyncio 1.x gives each test its own loop unless told)."""
    here = Path(__file__).parent
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if item.path.is_relative_to(here) and ("mesh" in fixtures or "mesh_clients" in fixtures):
            marker = item.get_closest_marker("asyncio")
            if marker is None or marker.kwargs.get("loop_scope") != "module":
                item.add_marker(pytest.mark.asyncio(loop_scope="module"), append=False)


CALL_TIMEOUT = 10.0
"""Seconds any one call through the gateway may take in a test."""


@dataclass
class MeshClients:
    """gRPC stubs of every public service through the gateway, and checkout helpers.

    `channel` uses the gateway's default virtual host (every public method, no reflection);
    `authority(service)` gives a channel whose :authority selects that service's own virtual
    host (its public methods, reflection and health)."""

    gateway: str
    channel: aio.Channel
    users: users_pb2_grpc.UsersServiceAsyncStub
    inventory: inventory_pb2_grpc.InventoryServiceAsyncStub
    orders: orders_pb2_grpc.OrdersServiceAsyncStub
    payments: payments_pb2_grpc.PaymentsServiceAsyncStub
    notifications: notifications_pb2_grpc.NotificationsServiceAsyncStub
    _by_authority: dict[str, aio.Channel] = field(default_factory=dict)

    def authority(self, service: str) -> aio.Channel:
        """A channel to the gateway whose :authority is `service` (closed with the others)."""
        if service not in self._by_authority:
            self._by_authority[service] = aio.insecure_channel(
                self.gateway, options=[("grpc.default_authority", service)]
            )
        return self._by_authority[service]

    async def close(self) -> None:
        for channel in [self.channel, *self._by_authority.values()]:
            await channel.close()

    async def create_user(
        self, email: str | None = None, display_name: str = "Mesh Tester"
    ) -> users_pb2.User:
        """A new account (a unique email unless one is given)."""
        response = await self.users.CreateUser(
            users_pb2.CreateUserRequest(
                request_id=f"req-{uuid.uuid4().hex}",
                email=email or f"tester-{uuid.uuid4().hex[:12]}@example.com",
                display_name=display_name,
            ),
            timeout=CALL_TIMEOUT,
        )
        return response.user

    async def place_order(
        self,
        user_id: str,
        items: Sequence[tuple[str, int]] = (("STICKER-01", 1),),
        payment_token: str = "tok_visa",
        idempotency_key: str | None = None,
        within: float = CALL_TIMEOUT,
    ) -> orders_pb2.Order:
        """PlaceOrder through the gateway, with a gRPC deadline of `within` seconds; `items`
        are (sku, quantity). The default item has a stock of 1000 in the seed catalog, so
        hundreds of checkouts fit in one mesh."""
        response = await self.orders.PlaceOrder(
            orders_pb2.PlaceOrderRequest(
                idempotency_key=idempotency_key or f"order-{uuid.uuid4().hex}",
                user_id=user_id,
                items=[orders_pb2.OrderItem(sku=sku, quantity=qty) for sku, qty in items],
                payment_token=payment_token,
            ),
            timeout=within,
        )
        return response.order

    async def checkout(self, **order: Any) -> tuple[users_pb2.User, orders_pb2.Order]:
        """A new user places one order (keyword arguments as for `place_order`)."""
        user = await self.create_user()
        return user, await self.place_order(user.user_id, **order)

    async def notifications_of(self, user_id: str) -> list[notifications_pb2.Notification]:
        response = await self.notifications.ListNotifications(
            notifications_pb2.ListNotificationsRequest(user_id=user_id, page_size=100),
            timeout=CALL_TIMEOUT,
        )
        return list(response.notifications)

    async def wait_for_notification(
        self, user_id: str, order_id: str, within: float = 10.0
    ) -> notifications_pb2.Notification:
        """The notification about `order_id`, once the outbox relay has delivered it."""
        found: list[notifications_pb2.Notification] = []

        async def delivered() -> bool:
            found[:] = [n for n in await self.notifications_of(user_id) if n.order_id == order_id]
            return bool(found)

        await eventually(delivered, within, f"a notification about {order_id}", interval=0.05)
        return found[0]


@contextlib.asynccontextmanager
async def gateway_clients(mesh: RunningMesh) -> AsyncIterator[MeshClients]:
    """MeshClients for `mesh`'s gateway, closed when the block exits."""
    channel = aio.insecure_channel(mesh.gateway_address)
    clients = MeshClients(
        gateway=mesh.gateway_address,
        channel=channel,
        users=users_pb2_grpc.UsersServiceStub(channel),
        inventory=inventory_pb2_grpc.InventoryServiceStub(channel),
        orders=orders_pb2_grpc.OrdersServiceStub(channel),
        payments=payments_pb2_grpc.PaymentsServiceStub(channel),
        notifications=notifications_pb2_grpc.NotificationsServiceStub(channel),
    )
    try:
        yield clients
    finally:
        await clients.close()


@pytest_asyncio.fixture(loop_scope="module")
async def mesh_clients(mesh: RunningMesh) -> AsyncIterator[MeshClients]:
    """Clients of the module's mesh through its gateway, for one test."""
    async with gateway_clients(mesh) as clients:
        yield clients
