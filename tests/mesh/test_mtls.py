"""A real Envoy sidecar in front of a health-only app: mTLS and per-method RBAC on inbound,
and certificate rotation through file-based SDS.

The sidecar is rendered from envoy/mesh.yaml for payments-0, with certificates from the local
CA. Each test is a way in: only mesh identities get through, and each only to what the
topology grants it, spelled exactly (the app records every call that reaches it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import socket
import ssl
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from google.rpc import error_details_pb2
from grpc import aio
from grpc_health.v1 import health_pb2

from services.common.caller import CALLER_HEADER
from services.common.config import ServiceConfig
from services.common.server import App, Registration, start
from services.common.status import error_info
from shopmesh.layout import Pod
from shopmesh.local.health import health_check
from shopmesh.pki import CertificateAuthority, Credential, LocalPki
from shopmesh.topology import Topology
from tests.support.envoy import (
    HOUR,
    EnvoyProcess,
    StartEnvoy,
    issue_identities,
    local_layout,
    write_sidecar,
)
from tests.support.h2 import MAX_CONCURRENT_STREAMS, server_settings
from tests.support.paths import TOPOLOGY
from tests.support.polling import eventually

PAYMENTS = "shop.payments.v1.PaymentsService"
CHARGE = f"/{PAYMENTS}/Charge"
GET_PAYMENT = f"/{PAYMENTS}/GetPayment"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
REFLECTION_INFO = f"/{REFLECTION}/ServerReflectionInfo"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SERVER_NAME = "payments"
RBAC_DENIED = "http.inbound.rbac.denied"


@dataclass
class Recorder(grpc.GenericRpcHandler):
    """The app's view: every call that reaches it beyond health and reflection (which it
    serves), with its metadata; it serves none of them (UNIMPLEMENTED)."""

    calls: list[tuple[str, dict[str, str | bytes]]] = field(default_factory=list)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> None:
        self.calls.append(
            (handler_call_details.method, dict(handler_call_details.invocation_metadata))
        )

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.calls]


def recording(recorder: Recorder) -> Registration:
    return Registration(
        "recorder", recorder, lambda handler, server: server.add_generic_rpc_handlers([handler])
    )


@dataclass
class Sidecar:
    """The payments-0 sidecar under test, its CA, and mesh credentials to call it with."""

    topology: Topology
    pki: LocalPki
    ca: CertificateAuthority
    envoy: EnvoyProcess
    inbound: str
    health: str
    credentials: dict[str, Credential]
    app: Recorder


@pytest.fixture
def topology() -> Topology:
    """The topology the sidecar is rendered from (a test may override it)."""
    return TOPOLOGY


@pytest.fixture
async def sidecar(
    socket_dir: Path, envoys: StartEnvoy, topology: Topology
) -> AsyncIterator[Sidecar]:
    pod = Pod("payments", "payments-0")
    layout = local_layout(topology, socket_dir)
    pki, ca = issue_identities(topology, layout.state.certs)
    config = write_sidecar(topology, layout, pod, socket_dir)

    app_socket = layout.app_socket(pod)
    recorder = Recorder()
    app = await start(
        ServiceConfig(
            "payments", f"unix:{app_socket}", socket_dir / "payments.db", grace_seconds=0
        ),
        App([recording(recorder)]),
    )
    try:
        envoy = await envoys(config)
        # Test clients get their own credentials from the same CA.
        credentials = {
            identity: ca.issue(topology.spiffe_id(identity), HOUR)
            for identity in topology.identities
        }
        yield Sidecar(
            topology=topology,
            pki=pki,
            ca=ca,
            envoy=envoy,
            inbound=f"127.0.0.1:{await envoy.listener_port('inbound')}",
            health=f"127.0.0.1:{await envoy.listener_port('health')}",
            credentials=credentials,
            app=recorder,
        )
    finally:
        await app.stop(0)


def mtls_channel(sidecar: Sidecar, credential: Credential | None) -> aio.Channel:
    """A TLS channel to the inbound listener, presenting `credential` (None: no client cert)."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=sidecar.ca.credential.certificate_pem(),
        private_key=credential.key_pem() if credential else None,
        certificate_chain=credential.certificate_pem() if credential else None,
    )
    return aio.secure_channel(
        sidecar.inbound, credentials, options=[("grpc.ssl_target_name_override", SERVER_NAME)]
    )


async def check_health(channel: aio.Channel) -> int:
    async with channel:
        response = await health_check(channel)(health_pb2.HealthCheckRequest(), timeout=5)
        return int(response.status)


def _raw(message: bytes) -> bytes:
    return message


async def failure(
    channel: aio.Channel, path: str, metadata: Sequence[tuple[str, str]] = ()
) -> aio.AioRpcError | None:
    """Call `path` with an empty message; how it failed (None: it succeeded)."""
    async with channel:
        method = channel.unary_unary(path, request_serializer=_raw, response_deserializer=_raw)
        try:
            await method(b"", timeout=5, metadata=metadata)
        except aio.AioRpcError as error:
            return error
        return None


async def call(channel: aio.Channel, path: str) -> grpc.StatusCode:
    """Call `path` with an empty message; the status code it ends with."""
    error = await failure(channel, path)
    return grpc.StatusCode.OK if error is None else error.code()


async def refusal(sidecar: Sidecar, identity: str, path: str) -> tuple[grpc.StatusCode, str]:
    """Call `path` as `identity`, expecting a refusal: its code and ErrorInfo reason."""
    error = await failure(mtls_channel(sidecar, sidecar.credentials[identity]), path)
    assert error is not None, f"{path} succeeded"
    info = error_info(error)
    return error.code(), info.reason if info else f"no ErrorInfo ({error.details()!r})"


async def test_mesh_certificate_reaches_app_health_through_sidecar(sidecar: Sidecar) -> None:
    channel = mtls_channel(sidecar, sidecar.credentials["orders"])
    assert await check_health(channel) == health_pb2.HealthCheckResponse.SERVING


async def test_any_mesh_identity_may_health_check(sidecar: Sidecar) -> None:
    # users never calls payments, but callers' sidecars health-check their upstreams as
    # themselves, and the gateway does too: Health/Check is open to the whole mesh.
    for identity in ("users", "gateway"):
        channel = mtls_channel(sidecar, sidecar.credentials[identity])
        assert await check_health(channel) == health_pb2.HealthCheckResponse.SERVING


async def test_plaintext_client_is_refused(sidecar: Sidecar) -> None:
    assert await call(aio.insecure_channel(sidecar.inbound), GET_PAYMENT) == (
        grpc.StatusCode.UNAVAILABLE
    )
    assert await sidecar.envoy.stat_sum(".ssl.connection_error") >= 1


async def test_client_without_certificate_is_refused(sidecar: Sidecar) -> None:
    assert await call(mtls_channel(sidecar, None), GET_PAYMENT) == grpc.StatusCode.UNAVAILABLE
    assert await sidecar.envoy.stat_sum(".ssl.fail_verify_no_cert") == 1


async def test_certificate_from_foreign_ca_is_refused(sidecar: Sidecar) -> None:
    foreign = CertificateAuthority.create("foreign CA", datetime.timedelta(days=1))
    # Same SPIFFE ID as a legitimate caller: only the issuer differs.
    impostor = foreign.issue(sidecar.topology.spiffe_id("orders"), datetime.timedelta(hours=1))
    assert await call(mtls_channel(sidecar, impostor), CHARGE) == grpc.StatusCode.UNAVAILABLE
    assert await sidecar.envoy.stat_sum(".ssl.fail_verify_error") == 1


async def test_certificate_from_another_trust_domain_is_refused(sidecar: Sidecar) -> None:
    # Signed by the mesh CA, but not a mesh identity: refused in the handshake, before RBAC.
    outsider = sidecar.ca.issue("spiffe://elsewhere.local/ns/shop/sa/orders", HOUR)
    assert await call(mtls_channel(sidecar, outsider), CHARGE) == grpc.StatusCode.UNAVAILABLE
    assert await sidecar.envoy.stat_sum(".ssl.fail_verify_san") == 1


async def test_caller_not_granted_a_method_gets_permission_denied(sidecar: Sidecar) -> None:
    channel = mtls_channel(sidecar, sidecar.credentials["users"])
    assert await call(channel, CHARGE) == grpc.StatusCode.PERMISSION_DENIED
    assert (await sidecar.envoy.stats())["http.inbound.rbac.denied"] == 1


async def test_granted_caller_is_forwarded_to_the_app(sidecar: Sidecar) -> None:
    # The health-only app has no PaymentsService: UNIMPLEMENTED comes from the app itself,
    # so RBAC let the call through.
    channel = mtls_channel(sidecar, sidecar.credentials["orders"])
    assert await call(channel, CHARGE) == grpc.StatusCode.UNIMPLEMENTED


async def test_gateway_reaches_only_public_methods(sidecar: Sidecar) -> None:
    gateway = sidecar.credentials["gateway"]
    assert await call(mtls_channel(sidecar, gateway), CHARGE) == grpc.StatusCode.PERMISSION_DENIED
    assert await call(mtls_channel(sidecar, gateway), GET_PAYMENT) == (
        grpc.StatusCode.UNIMPLEMENTED
    )


async def test_no_caller_reaches_the_apps_own_reflection(sidecar: Sidecar) -> None:
    # The gateway answers reflection itself (shopmesh.reflection): the app's lists every
    # method, internal ones too, and is for calls straight to its socket only.
    for identity in ("gateway", "orders"):
        assert await refusal(sidecar, identity, REFLECTION_INFO) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "CALLER_NOT_ALLOWED",
        )
    assert sidecar.app.paths == []


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(f"/{REFLECTION}/../../{PAYMENTS}/Charge", id="dot-dot-out-of-reflection"),
        pytest.param(f"/{REFLECTION}/%2e%2e/%2e%2e/{PAYMENTS}/Charge", id="encoded-dot-dot"),
        pytest.param(f"//{PAYMENTS}/Charge", id="double-slash"),
        pytest.param(f"/{REFLECTION}/{PAYMENTS}/Charge", id="under-reflection-prefix"),
        pytest.param(f"{GET_PAYMENT}?x=/Charge", id="query-naming-another-method"),
        pytest.param(f"{GET_PAYMENT}?x", id="query-on-granted-method"),
        pytest.param(f"{HEALTH_CHECK}?x", id="query-on-health-check"),
    ],
)
async def test_only_an_exactly_granted_path_passes_rbac(sidecar: Sidecar, path: str) -> None:
    # As the gateway, granted GetPayment and health: RBAC matches the whole
    # (normalized) path, so neither a prefix, a query string nor `..` lets another through.
    assert await refusal(sidecar, "gateway", path) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "CALLER_NOT_ALLOWED",
    )
    assert sidecar.app.paths == []
    assert (await sidecar.envoy.stats())[RBAC_DENIED] == 1


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(f"/{PAYMENTS}%2FGetPayment", id="escaped-slash"),
        pytest.param(f"/{REFLECTION}/..%2f..%2f{PAYMENTS}/Charge", id="escaped-slash-dot-dot"),
        pytest.param(f"/{REFLECTION}/%5C../{PAYMENTS}/Charge", id="escaped-backslash"),
        pytest.param(f"{GET_PAYMENT}#x", id="fragment"),
    ],
)
async def test_malformed_path_is_invalid_argument_before_rbac(sidecar: Sidecar, path: str) -> None:
    # Envoy's own INTERNAL would say nothing, and count against this replica as a 5xx.
    assert await refusal(sidecar, "gateway", path) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
    )
    assert sidecar.app.paths == []
    assert (await sidecar.envoy.stats())[RBAC_DENIED] == 0


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(f"//{PAYMENTS}/GetPayment", id="leading-double-slash"),
        pytest.param(f"/{PAYMENTS}//GetPayment", id="inner-double-slash"),
        pytest.param(f"/{PAYMENTS}/./GetPayment", id="dot"),
        pytest.param(f"/{REFLECTION}/../{PAYMENTS}/GetPayment", id="dot-dot"),
    ],
)
async def test_app_sees_the_canonical_path_rbac_checked(sidecar: Sidecar, path: str) -> None:
    gateway = sidecar.credentials["gateway"]
    # UNIMPLEMENTED comes from the app: RBAC let the canonical GetPayment through.
    assert await call(mtls_channel(sidecar, gateway), path) == grpc.StatusCode.UNIMPLEMENTED
    assert sidecar.app.paths == [GET_PAYMENT]


async def test_headers_with_underscores_never_reach_the_app(sidecar: Sidecar) -> None:
    # gRPC metadata may use `_`, but a stack behind that reads `_` as `-` would take this for
    # the client certificate header the sidecar sets; dropped, the call itself goes on.
    spoofed = ("x_forwarded_client_cert", f"URI={sidecar.topology.spiffe_id('orders')}")
    channel = mtls_channel(sidecar, sidecar.credentials["gateway"])
    error = await failure(channel, GET_PAYMENT, [spoofed, ("x-kept", "1")])
    assert error is not None
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    ((path, metadata),) = sidecar.app.calls
    assert path == GET_PAYMENT
    assert metadata["x-kept"] == "1"
    assert spoofed[0] not in metadata
    assert str(metadata["x-forwarded-client-cert"]).endswith(
        f";URI={sidecar.topology.spiffe_id('gateway')}"
    )
    assert (await sidecar.envoy.stats())["http2.dropped_headers_with_underscores"] == 1


async def test_health_port_serves_plaintext_probes(sidecar: Sidecar) -> None:
    channel = aio.insecure_channel(sidecar.health)
    assert await check_health(channel) == health_pb2.HealthCheckResponse.SERVING


async def test_health_port_serves_nothing_but_health(sidecar: Sidecar) -> None:
    assert await call(aio.insecure_channel(sidecar.health), GET_PAYMENT) == (
        grpc.StatusCode.UNIMPLEMENTED
    )


@contextlib.contextmanager
def h2_connection(sidecar: Sidecar) -> Iterator[ssl.SSLSocket]:
    """A raw TLS connection to the inbound listener as orders, HTTP/2 negotiated."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=sidecar.ca.credential.certificate_pem().decode())
    certificate, key = sidecar.pki.files("orders").current()
    context.load_cert_chain(certificate, key)
    context.set_alpn_protocols(["h2"])
    host, port = sidecar.inbound.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
    ):
        yield tls


def served_certificate(sidecar: Sidecar) -> x509.Certificate:
    """The certificate the inbound listener presents to a new connection (as orders)."""
    with h2_connection(sidecar) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def advertised_settings(sidecar: Sidecar) -> dict[int, int]:
    with h2_connection(sidecar) as tls:
        return server_settings(tls)


async def test_a_connection_gets_no_more_streams_than_a_callers_breaker_allows(
    sidecar: Sidecar,
) -> None:
    settings = await asyncio.to_thread(advertised_settings, sidecar)
    breaker = sidecar.topology.policies["payments"].circuit_breaker
    assert settings[MAX_CONCURRENT_STREAMS] == breaker.max_requests == 32


async def test_rotated_certificate_is_served_without_restart_under_traffic(
    sidecar: Sidecar,
) -> None:
    first = await asyncio.to_thread(served_certificate, sidecar)
    assert (
        first.serial_number
        == x509.load_pem_x509_certificate(
            sidecar.pki.files("payments").current()[0].read_bytes()
        ).serial_number
    )
    channel = mtls_channel(sidecar, sidecar.credentials["orders"])
    check = health_check(channel)
    stop = asyncio.Event()
    served = 0

    async def traffic() -> None:
        nonlocal served
        # Bounded: stops when told, or after 2000 calls at most.
        while not stop.is_set() and served < 2000:
            response = await check(health_pb2.HealthCheckRequest(), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
            served += 1

    async with channel:
        calls = asyncio.create_task(traffic())
        for _ in range(3):
            issued = sidecar.pki.issue(
                sidecar.ca, "payments", sidecar.topology.spiffe_id("payments"), HOUR, ["payments"]
            )
            serial = x509.load_pem_x509_certificate(issued.certificate.read_bytes()).serial_number

            async def serves_new_certificate(expected: int = serial) -> bool:
                return (await asyncio.to_thread(served_certificate, sidecar)).serial_number == (
                    expected
                )

            await eventually(serves_new_certificate, within=10, what="the rotated certificate")
            # New connections made after the switch succeed with the new certificate too.
            assert await check_health(mtls_channel(sidecar, sidecar.credentials["users"])) == (
                health_pb2.HealthCheckResponse.SERVING
            )
        stop.set()
        await calls
    assert served > 0
    assert sidecar.envoy.process.returncode is None
    assert await sidecar.envoy.stat_sum(".ssl_context_update_by_sds") >= 3


# --- the signed-in caller (CALLER_HEADER) -----------------------------------------------------

SHOPPER = (CALLER_HEADER, "usr_0123456789abcdef0123456789abcdef")


def without_passers_on() -> Topology:
    """envoy/mesh.yaml with no service allowed to pass a signed-in caller on."""
    sign_in = dataclasses.replace(TOPOLOGY.gateway.sign_in, passed_on_by=())
    return dataclasses.replace(
        TOPOLOGY, gateway=dataclasses.replace(TOPOLOGY.gateway, sign_in=sign_in)
    )


async def test_the_gateway_and_orders_may_name_the_caller(sidecar: Sidecar) -> None:
    # orders is in sign_in.passed_on_by: it calls on the shopper's behalf.
    for identity, path in (("gateway", GET_PAYMENT), ("orders", CHARGE)):
        channel = mtls_channel(sidecar, sidecar.credentials[identity])
        error = await failure(channel, path, [SHOPPER])
        assert error is not None
        assert error.code() is grpc.StatusCode.UNIMPLEMENTED  # the app's answer: it got through
    assert [metadata[CALLER_HEADER] for _, metadata in sidecar.app.calls] == [SHOPPER[1]] * 2


@pytest.mark.parametrize("topology", [without_passers_on()], ids=["nobody-passes-on"])
async def test_a_caller_not_allowed_to_pass_one_on_cannot_name_the_caller(
    sidecar: Sidecar,
) -> None:
    orders = sidecar.credentials["orders"]
    error = await failure(mtls_channel(sidecar, orders), CHARGE, [SHOPPER])
    assert error is not None
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert (error_info(error) or error_details_pb2.ErrorInfo()).reason == "CALLER_NOT_ALLOWED"
    assert sidecar.app.paths == []
    # The same call without a caller is granted as before.
    assert await call(mtls_channel(sidecar, orders), CHARGE) == grpc.StatusCode.UNIMPLEMENTED
    assert sidecar.app.paths == [CHARGE]
