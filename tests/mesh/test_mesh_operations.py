"""Operating the running mesh as its users do, from the `shopmesh` command line: faults
injected and cleared at a sidecar without a restart, certificates rotated under checkout
traffic; and per-method RBAC at a live sidecar's inbound port.

One real mesh (every app, its Envoy sidecar, the gateway) serves the whole module; the CLI
runs as a separate process against its state directory, exactly as `shopmesh` in a terminal.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import uuid
from dataclasses import dataclass, field

import grpc
import pytest
from cryptography import x509
from grpc import aio

from services.common.status import error_info
from shop.common.v1 import money_pb2
from shop.orders.v1 import orders_pb2
from shop.payments.v1 import payments_pb2
from shopmesh.local import faults
from shopmesh.local.handles import PodHandle
from shopmesh.local.mesh import RunningMesh
from shopmesh.pki import LocalPki
from shopmesh.topology import GATEWAY
from tests.support.calls import call_raw
from tests.support.cli import shopmesh_ok
from tests.support.clients import MeshClients, Shopper
from tests.support.databases import count_rows
from tests.support.polling import CALL_TIMEOUT, eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHARGE = "/shop.payments.v1.PaymentsService/Charge"
RBAC_DENIED = "http.inbound.rbac.denied"
FAULTS_INJECTED = "http.inbound.fault.aborts_injected"


async def shopmesh(mesh: RunningMesh, *args: str) -> str:
    """Run `shopmesh ARGS --state-dir <the mesh's>` to completion; its output (exit 0)."""
    return await shopmesh_ok(*args, "--state-dir", str(mesh.state_dir))


def envoy_pids(mesh: RunningMesh) -> dict[str, int | None]:
    """Every Envoy's pid: a restart would change it."""
    pids = {pod.name: pod.sidecar.pid if pod.sidecar else None for pod in mesh.pods.values()}
    pids[GATEWAY] = mesh.gateway.pid
    return pids


def assert_envoys_never_restarted(mesh: RunningMesh, before: dict[str, int | None]) -> None:
    assert envoy_pids(mesh) == before
    for pod in mesh.pods.values():
        assert pod.sidecar is not None
        assert pod.sidecar.alive(), pod.sidecar_name
    assert mesh.gateway.process is not None
    assert mesh.gateway.process.alive()


def payments_of(mesh: RunningMesh, order_id: str) -> int:
    database = mesh.replicas("payments")[0].db_path
    return count_rows(database, f"SELECT COUNT(*) FROM payments WHERE order_id = '{order_id}'")


# --- shopmesh fault ------------------------------------------------------------------------


async def test_cli_abort_fault_leaves_checkouts_pending_until_cleared(
    mesh: RunningMesh, mesh_clients: MeshClients, shopper: Shopper
) -> None:
    payments = mesh.replicas("payments")[0]
    pids = envoy_pids(mesh)
    key = f"order-{uuid.uuid4().hex}"
    injected_before = (await mesh.admin(payments.name).stats()).get(FAULTS_INJECTED, 0)
    try:
        said = await shopmesh(mesh, "fault", "payments", "--abort-percent", "100", "--status", "14")
        assert "100% of calls fail with status 14" in said

        with pytest.raises(aio.AioRpcError) as failure:
            await mesh_clients.place_order(shopper, idempotency_key=key)
        # orders keeps the order at its payment step and says so (orders.proto, PlaceOrder).
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        info = error_info(failure.value)
        assert info is not None, failure.value.details()
        assert info.reason == "ORDER_PENDING"
        assert info.metadata["step"] == "CHARGE_PAYMENT"
        order_id = info.metadata["order_id"]
        pending = await mesh_clients.orders.GetOrder(
            orders_pb2.GetOrderRequest(order_id=order_id),
            timeout=CALL_TIMEOUT,
            metadata=shopper.metadata,
        )
        assert pending.order.status == orders_pb2.ORDER_STATUS_PENDING
        assert payments_of(mesh, order_id) == 0
        # The sidecar, not the app, refused the charges.
        injected = (await mesh.admin(payments.name).stats())[FAULTS_INJECTED]
        assert injected > injected_before

        said = await shopmesh(mesh, "fault", "payments", "--clear")
        assert "faults cleared on payments" in said
        assert await faults.active(mesh, "payments") == {payments.name: {}}
    finally:
        await faults.clear(mesh, "payments")

    # Retrying with the same key resumes the very same order (or finds it already resumed
    # by orders' recovery), charged exactly once.
    confirmed = await mesh_clients.place_order(shopper, idempotency_key=key)
    assert confirmed.order_id == order_id
    assert confirmed.status == orders_pb2.ORDER_STATUS_CONFIRMED
    assert payments_of(mesh, order_id) == 1
    assert_envoys_never_restarted(mesh, pids)


async def test_cli_delay_fault_slows_calls_until_cleared(
    mesh: RunningMesh, mesh_clients: MeshClients, shopper: Shopper
) -> None:
    delay = 0.4
    pids = envoy_pids(mesh)
    request = payments_pb2.GetPaymentRequest(payment_id="pay_missing")

    async def get_payment(deadline: float = CALL_TIMEOUT) -> tuple[grpc.StatusCode, float]:
        started = time.monotonic()
        try:
            await mesh_clients.payments.GetPayment(
                request, timeout=deadline, metadata=shopper.metadata
            )
        except aio.AioRpcError as error:
            return error.code(), time.monotonic() - started
        return grpc.StatusCode.OK, time.monotonic() - started

    try:
        said = await shopmesh(mesh, "fault", "payments", "--delay-ms", str(int(delay * 1000)))
        assert f"100% of calls wait {int(delay * 1000)} ms" in said

        code, took = await get_payment()
        assert code == grpc.StatusCode.NOT_FOUND
        # Envoy's timer may fire a fraction of a millisecond before the client's clock says so.
        assert took >= delay - 0.005
        # A caller whose deadline is shorter than the delay gets DEADLINE_EXCEEDED.
        code, took = await get_payment(deadline=delay / 2)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert took < delay

        await shopmesh(mesh, "fault", "payments", "--clear")
    finally:
        await faults.clear(mesh, "payments")

    code, took = await get_payment()
    assert code == grpc.StatusCode.NOT_FOUND
    assert took < delay
    assert_envoys_never_restarted(mesh, pids)


# --- shopmesh certs rotate -----------------------------------------------------------------


def current_serial(mesh: RunningMesh, identity: str) -> int:
    """The serial of `identity`'s current certificate on disk."""
    certificate, _ = LocalPki(mesh.paths.certs).files(identity).current()
    return int(x509.load_pem_x509_certificate(certificate.read_bytes()).serial_number)


def handshake_serial(mesh: RunningMesh, pod: PodHandle, client: str) -> int:
    """The serial of the certificate `pod`'s inbound listener presents to a new mTLS
    connection made with `client`'s current certificate."""
    files = LocalPki(mesh.paths.certs).files(client)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(files.trust_bundle))
    certificate, key = files.current()
    context.load_cert_chain(certificate, key)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((pod.host, pod.ports.inbound), timeout=CALL_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=pod.service) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


TRAFFIC_SKUS = (*["STICKER-01"] * 5, "NOTEBOOK-01")


@dataclass
class CheckoutTraffic:
    """Checkouts through the gateway by one shopper, back to back, until stopped (bounded in
    count)."""

    clients: MeshClients
    shopper: Shopper
    limit: int
    confirmed: int = 0
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self) -> None:
        placed = 0
        while not self.stop.is_set() and self.confirmed + len(self.failures) < self.limit:
            # The two products with the most stock (1000 and 200), in that proportion: even
            # `limit` checkouts stay within it.
            sku = TRAFFIC_SKUS[placed % len(TRAFFIC_SKUS)]
            placed += 1
            try:
                order = await self.clients.place_order(self.shopper, items=[(sku, 1)])
            except aio.AioRpcError as error:
                self.failures.append(f"{error.code().name}: {error.details()}")
                continue
            if order.status == orders_pb2.ORDER_STATUS_CONFIRMED:
                self.confirmed += 1
            else:
                self.failures.append(
                    f"{order.order_id} {orders_pb2.OrderStatus.Name(order.status)}"
                )

    async def at_least(self, count: int, within: float) -> None:
        async def reached() -> bool:
            return self.confirmed >= count or bool(self.failures)

        await eventually(reached, within, f"{count} confirmed checkouts")
        assert not self.failures, self.failures


async def test_certificates_rotate_twice_under_checkout_traffic_without_a_failed_call(
    mesh: RunningMesh, mesh_clients: MeshClients, shopper: Shopper
) -> None:
    pids = envoy_pids(mesh)
    identities = mesh.topology.identities
    old = {identity: current_serial(mesh, identity) for identity in identities}
    payments = mesh.replicas("payments")[0]
    assert handshake_serial(mesh, payments, "orders") == old["payments"]
    traffic = CheckoutTraffic(mesh_clients, shopper, limit=1100)
    between: dict[str, int] = {}

    workers = [asyncio.create_task(traffic.worker()) for _ in range(4)]
    try:
        await traffic.at_least(5, within=CALL_TIMEOUT)
        for rotation in range(2):
            before_rotation = traffic.confirmed
            said = await shopmesh(mesh, "certs", "rotate")
            assert f"rotated {len(identities)} certificates" in said
            rotated_at = traffic.confirmed
            # Checkouts completed while the certificates were being switched.
            assert rotated_at > before_rotation, rotation
            # Checkouts go on after the switch, on new connections with the new certificates.
            await traffic.at_least(rotated_at + 10, within=CALL_TIMEOUT)
            if not between:
                between = {identity: current_serial(mesh, identity) for identity in identities}
    finally:
        traffic.stop.set()
        await asyncio.gather(*workers)

    assert traffic.failures == []
    new = {identity: current_serial(mesh, identity) for identity in identities}
    assert all(len({old[i], between[i], new[i]}) == 3 for i in identities)
    # On disk: the current pair, and the previous one an Envoy may still have been reading.
    for identity in identities:
        directory = LocalPki(mesh.paths.certs).files(identity).directory
        assert len(list(directory.glob("cert-*.pem"))) == 2, identity
        assert len(list(directory.glob("key-*.pem"))) == 2, identity
    # Every Envoy presents its identity's new certificate and nothing older (admin /certs)...
    for pod in mesh.pods.values():
        assert await mesh.admin(pod.name).served_serials() == {new[pod.service]}, pod.name
    assert await mesh.admin(GATEWAY).served_serials() == {new[GATEWAY]}
    # ...and on the wire, to a client holding a new certificate.
    assert handshake_serial(mesh, payments, "orders") == new["payments"]
    assert_envoys_never_restarted(mesh, pids)


# --- RBAC at a live sidecar ----------------------------------------------------------------


def mtls_channel(mesh: RunningMesh, pod: PodHandle, identity: str) -> aio.Channel:
    """A channel straight to `pod`'s inbound listener, holding `identity`'s current mesh
    certificate (as that service's sidecar would)."""
    files = LocalPki(mesh.paths.certs).files(identity)
    certificate, key = files.current()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=files.trust_bundle.read_bytes(),
        private_key=key.read_bytes(),
        certificate_chain=certificate.read_bytes(),
    )
    # The sidecar's certificate names its service as a DNS SAN too, for clients like this.
    return aio.secure_channel(
        pod.inbound, credentials, options=[("grpc.ssl_target_name_override", pod.service)]
    )


def charge_request() -> payments_pb2.ChargeRequest:
    """A charge payments would accept and record, were the caller allowed."""
    return payments_pb2.ChargeRequest(
        idempotency_key=f"rbac-{uuid.uuid4().hex}",
        order_id=f"ord_{uuid.uuid4().hex}",
        amount=money_pb2.Money(currency_code="USD", minor_units=4200),
        payment_token="tok_visa",
    )


@pytest.mark.parametrize("caller", ["users", "notifications", GATEWAY])
async def test_caller_not_granted_charge_gets_permission_denied_at_payments_sidecar(
    mesh: RunningMesh, caller: str
) -> None:
    payments = mesh.replicas("payments")[0]
    request = charge_request()
    denied_before = (await mesh.admin(payments.name).stats()).get(RBAC_DENIED, 0)

    async with mtls_channel(mesh, payments, caller) as channel:
        code = (await call_raw(channel, CHARGE, request.SerializeToString())).code

    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert (await mesh.admin(payments.name).stats())[RBAC_DENIED] == denied_before + 1
    attempts = count_rows(
        payments.db_path,
        f"SELECT COUNT(*) FROM charge_attempts WHERE idempotency_key = '{request.idempotency_key}'",
    )
    assert attempts == 0


async def test_orders_certificate_reaches_charge_at_payments_sidecar(mesh: RunningMesh) -> None:
    # The control: the same path with the caller the topology grants Charge reaches the app,
    # which refuses the empty request itself.
    payments = mesh.replicas("payments")[0]

    async with mtls_channel(mesh, payments, "orders") as channel:
        code = (
            await call_raw(channel, CHARGE, payments_pb2.ChargeRequest().SerializeToString())
        ).code

    assert code == grpc.StatusCode.INVALID_ARGUMENT
