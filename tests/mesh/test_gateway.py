"""The edge gateway of the running mesh, reached the way its users reach it: grpcurl with
server reflection and no proto files, JSON over HTTP/1.1 through gRPC-JSON transcoding (the
standard library and curl), only what envoy/mesh.yaml exposes, and the local rate limit.

Everything runs against one real mesh (every app, its Envoy sidecar, the gateway) started for
this module; the expectations (what is exposed, the rate limit) come from the topology file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, json_format
from google.protobuf.message import Message
from grpc import aio
from grpc_reflection.v1alpha import reflection_pb2

from shop.common.v1 import money_pb2
from shop.inventory.v1 import inventory_pb2
from shop.notifications.v1 import notifications_pb2
from shop.payments.v1 import payments_pb2
from shop.users.v1 import users_pb2
from shopmesh.envoy.signin import bearer_metadata
from shopmesh.local.mesh import RunningMesh
from shopmesh.topology import load_topology
from tests.support.calls import Outcome, call_raw
from tests.support.cli import command_ok
from tests.support.clients import PASSWORD, MeshClients, Shopper
from tests.support.databases import count_rows
from tests.support.grpcurl import GRPCURL_STATUS_EXIT_BASE, Grpcurl
from tests.support.http import CURL, HttpResponse, curl_json, grpc_path, post_json
from tests.support.paths import DESCRIPTOR_SET, MESH_FILE, ROOT
from tests.support.polling import CALL_TIMEOUT, eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Read once at collection: the tests are parametrized by what the topology exposes.
TOPOLOGY = load_topology(MESH_FILE)
EXPOSED = {service: TOPOLOGY.services[service].grpc_service for service in TOPOLOGY.gateway.exposes}
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
ERROR_DOMAIN = "shop.example"


@pytest.fixture(scope="module")
def grpcurl(mesh: RunningMesh) -> Grpcurl:
    return Grpcurl(mesh.gateway_address)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def method_of(service: str, method: str) -> str:
    """grpcurl's name of a method: `pkg.Service/Method`."""
    return f"{EXPOSED[service]}/{method}"


# --- grpcurl: reflection of the whole exposed API, with or without -authority ---------------


def contract_comment(symbol: str) -> str:
    """The first line of the leading comment of `pkg.Service.Method` in gen/shop.pb."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    service_name, method_name = symbol.rsplit(".", 1)
    for file in files.file:
        for s, service in enumerate(file.service):
            if f"{file.package}.{service.name}" != service_name:
                continue
            m = [method.name for method in service.method].index(method_name)
            for location in file.source_code_info.location:
                if list(location.path) == [6, s, 2, m]:
                    return location.leading_comments.strip().splitlines()[0]
    raise AssertionError(f"no comment on {symbol} in {DESCRIPTOR_SET}")


@pytest.mark.parametrize("authority", [None, "payments"], ids=["no-authority", "payments"])
async def test_grpcurl_lists_exactly_the_exposed_services(
    grpcurl: Grpcurl, authority: str | None
) -> None:
    result = await grpcurl.run(authority, "list")

    assert result.returncode == 0, result.explain()
    # One reflection service answers for the whole API, whichever virtual host: not the app
    # of -authority payments (whose reflection lists Charge, health and reflection).
    assert sorted(result.stdout.split()) == sorted(EXPOSED.values())


@pytest.mark.parametrize("authority", [None, "payments"], ids=["no-authority", "payments"])
async def test_an_unexposed_method_is_not_advertised(
    grpcurl: Grpcurl, authority: str | None
) -> None:
    payments = EXPOSED["payments"]

    methods = await grpcurl.run(authority, "list", payments)
    charge = await grpcurl.run(authority, "describe", f"{payments}.Charge")

    assert methods.returncode == 0, methods.explain()
    assert methods.stdout.split() == [
        f"{payments}.{method}" for method in TOPOLOGY.gateway.exposes["payments"]
    ]
    assert charge.returncode != 0
    assert f"Symbol not found: {payments}.Charge" in charge.stderr, charge.explain()


async def test_grpcurl_describe_shows_the_contract_comments(grpcurl: Grpcurl) -> None:
    place_order = f"{EXPOSED['orders']}.PlaceOrder"

    described = await grpcurl.run(None, "describe", place_order)

    assert described.returncode == 0, described.explain()
    assert f"{place_order} is a method:" in described.stdout
    assert f"// {contract_comment(place_order)}" in described.stdout, described.stdout


@pytest.mark.parametrize("service", list(EXPOSED))
async def test_grpcurl_describes_every_exposed_method(grpcurl: Grpcurl, service: str) -> None:
    described = await grpcurl.run(None, "describe", EXPOSED[service])

    assert described.returncode == 0, described.explain()
    assert f"{EXPOSED[service]} is a service:" in described.stdout
    rpcs = re.findall(r"^\s*rpc (\w+) \( \.(\S+) \) returns", described.stdout, re.MULTILINE)
    assert sorted(method for method, _ in rpcs) == sorted(TOPOLOGY.gateway.exposes[service])
    for _, request_type in rpcs:
        # Messages resolve too: grpcurl builds requests from them, with no proto file.
        request = await grpcurl.run(None, "describe", request_type)
        assert f"{request_type} is a message:" in request.stdout, request.explain()


async def test_reflection_v1_answers_as_v1alpha_does(mesh: RunningMesh) -> None:
    # grpcurl 1.8 speaks v1alpha only: a client of v1, whose messages are v1alpha's.
    async with aio.insecure_channel(mesh.gateway_address) as channel:
        reflect = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        get_payment = f"{EXPOSED['payments']}.GetPayment"
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=get_payment),
        ]
        listed, found = [response async for response in reflect(iter(requests), timeout=5)]

    assert sorted(s.name for s in listed.list_services_response.service) == sorted(EXPOSED.values())
    assert found.original_request == requests[1]
    first = found.file_descriptor_response.file_descriptor_proto[0]
    assert descriptor_pb2.FileDescriptorProto.FromString(first).name == (
        "shop/payments/v1/payments.proto"
    )


async def test_methods_reflection_found_are_called_without_authority(
    grpcurl: Grpcurl, shopper: Shopper
) -> None:
    # What grpcurl learnt by reflection is enough: no -authority, no proto file.
    products = await grpcurl.call(None, method_of("inventory", "ListProducts"), {"page_size": 1})
    signed_in = grpcurl.signed_in(shopper.metadata)
    orders = await signed_in.call(
        None, method_of("orders", "ListOrders"), {"user_id": shopper.user_id}
    )

    assert len(products["products"]) == 1
    assert orders.get("orders", []) == []


# --- grpcurl: every public RPC -----------------------------------------------------------


@dataclass
class Journey:
    """A shopper's session through grpcurl; remembers which public methods it used."""

    grpcurl: Grpcurl
    called: set[tuple[str, str]]

    def sign_in(self, access_token: str) -> None:
        """Send `access_token` with every call from now on (-H authorization: Bearer ...)."""
        self.grpcurl = self.grpcurl.signed_in(bearer_metadata(access_token))

    async def __call__(self, service: str, method: str, data: Mapping[str, Any]) -> Any:
        self.called.add((service, method))
        # No -authority: the default virtual host routes every public method.
        return await self.grpcurl.call(None, method_of(service, method), data)


@dataclass
class Watch:
    """A running `grpcurl -v ... WatchNotifications`, bounded by -max-time."""

    process: asyncio.subprocess.Process
    output: list[str]

    async def headers_received(self, within: float) -> None:
        """Wait until the response headers arrived: from then on, the subscription is in
        place (the contract says so), so a notification created next is streamed."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + within
        while not any(line.startswith("Response headers received") for line in self.output):
            line = await asyncio.wait_for(
                self.process.stdout.readline(), max(0.0, deadline - time.monotonic())
            )
            assert line, f"watch ended before its headers: {''.join(self.output)}"
            self.output.append(line.decode())

    async def finish(self, within: float) -> tuple[int, list[Any]]:
        """Wait for grpcurl to end (its -max-time); its exit status and streamed messages."""
        assert self.process.stdout is not None
        rest = await asyncio.wait_for(self.process.stdout.read(), within)
        returncode = await asyncio.wait_for(self.process.wait(), within)
        text = "".join(self.output) + rest.decode()
        decoder = json.JSONDecoder()
        messages = []
        for block in text.split("Response contents:\n")[1:]:
            message, _ = decoder.raw_decode(block)
            messages.append(message)
        return returncode, messages


async def start_watch(grpcurl: Grpcurl, user_id: str, max_time: float) -> Watch:
    request = json.dumps({"user_id": user_id})
    command = [
        *grpcurl.command(None, "-v", "-d", request, max_time=max_time),
        grpcurl.target,
        method_of("notifications", "WatchNotifications"),
    ]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    return Watch(process, [])


async def test_grpcurl_invokes_every_public_rpc(grpcurl: Grpcurl) -> None:
    call = Journey(grpcurl, set())

    email = f"{unique('ada')}@example.com"
    created = await call(
        "users",
        "CreateUser",
        {
            "request_id": unique("req"),
            "email": email,
            "display_name": "Ada Lovelace",
            "password": PASSWORD,
        },
    )
    user = created["user"]
    assert user["email"] == email
    assert user["display_name"] == "Ada Lovelace"
    assert user["user_id"]
    assert user["create_time"]
    session = (await call("users", "SignIn", {"email": email, "password": PASSWORD}))["session"]
    assert session["user_id"] == user["user_id"]
    renewed = (await call("users", "RenewToken", {"refresh_token": session["refresh_token"]}))[
        "session"
    ]
    assert renewed["user_id"] == user["user_id"]
    assert json.loads((await call("users", "GetJwks", {}))["jwks_json"])["keys"]
    # From here on every call is the signed-in shopper's, as the README shows.
    call.sign_in(renewed["access_token"])
    assert (await call("users", "GetUser", {"user_id": user["user_id"]}))["user"] == user

    first_page = await call("inventory", "ListProducts", {"page_size": 2})
    assert len(first_page["products"]) == 2
    second_page = await call(
        "inventory",
        "ListProducts",
        {"page_size": 2, "page_token": first_page["next_page_token"]},
    )
    first_skus = {product["sku"] for product in first_page["products"]}
    assert first_skus.isdisjoint(product["sku"] for product in second_page["products"])
    # The best-stocked product of the first two pages: ordering two never runs out.
    product = max(
        first_page["products"] + second_page["products"],
        key=lambda p: int(p["available_quantity"]),
    )
    fetched = await call("inventory", "GetProduct", {"sku": product["sku"]})
    assert fetched["product"] == product

    # The watch outlives the gateway's default route timeout: WatchNotifications has no
    # route timeout (envoy/mesh.yaml), so only the client's -max-time ends it.
    default_timeout = TOPOLOGY.policies["notifications"].route.route_timeout.total_seconds()
    watch_time = default_timeout + 1
    watch = await start_watch(call.grpcurl, user["user_id"], watch_time)
    watch_started = time.monotonic()
    try:
        await watch.headers_received(within=CALL_TIMEOUT)

        price = product["price"]
        placed = await call(
            "orders",
            "PlaceOrder",
            {
                "idempotency_key": unique("checkout"),
                "user_id": user["user_id"],
                "items": [{"sku": product["sku"], "quantity": 2}],
                "payment_token": "tok_visa",
                "currency_code": price["currency_code"],
            },
        )
        order = placed["order"]
        assert order["status"] == "ORDER_STATUS_CONFIRMED", order
        assert order["total"] == {
            "currency_code": price["currency_code"],
            "minor_units": str(2 * int(price["minor_units"])),
        }
        assert [(item["sku"], item["quantity"]) for item in order["items"]] == [
            (product["sku"], "2")
        ]
        assert (await call("orders", "GetOrder", {"order_id": order["order_id"]}))["order"] == order
        listed = await call("orders", "ListOrders", {"user_id": user["user_id"]})
        assert listed["orders"] == [order]

        payment = (await call("payments", "GetPayment", {"payment_id": order["payment_id"]}))[
            "payment"
        ]
        assert payment["status"] == "PAYMENT_STATUS_CAPTURED"
        assert payment["order_id"] == order["order_id"]
        assert payment["amount"] == order["total"]

        cancelled = await call(
            "orders", "CancelOrder", {"order_id": order["order_id"], "reason": "changed my mind"}
        )
        assert cancelled["order"]["status"] == "ORDER_STATUS_CANCELLED"
        assert cancelled["order"]["cancel_reason"] == "changed my mind"
        refunded = await call("payments", "GetPayment", {"payment_id": order["payment_id"]})
        assert refunded["payment"]["status"] == "PAYMENT_STATUS_REFUNDED"

        # Order events reach notifications through orders' outbox, asynchronously.
        notifications: list[Any] = []

        async def both_notified() -> bool:
            listed = await call("notifications", "ListNotifications", {"user_id": user["user_id"]})
            notifications[:] = listed.get("notifications", [])
            return len(notifications) == 2

        await eventually(both_notified, within=CALL_TIMEOUT, what="two notifications")
        # Newest first.
        assert [n["event_type"] for n in notifications] == [
            "ORDER_EVENT_TYPE_CANCELLED",
            "ORDER_EVENT_TYPE_CONFIRMED",
        ]
        assert {n["order_id"] for n in notifications} == {order["order_id"]}

        returncode, streamed = await watch.finish(within=watch_time + CALL_TIMEOUT)
    finally:
        if watch.process.returncode is None:
            watch.process.kill()
            await watch.process.wait()
    assert returncode == GRPCURL_STATUS_EXIT_BASE + grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert time.monotonic() - watch_started >= default_timeout
    assert [message["notification"] for message in streamed] == notifications[::-1]

    exposed = {(s, m) for s, methods in TOPOLOGY.gateway.exposes.items() for m in methods}
    assert call.called | {("notifications", "WatchNotifications")} == exposed


# --- only what the topology exposes --------------------------------------------------------


@dataclass(frozen=True)
class InternalCall:
    """A valid request to an internal method, and how to tell whether it ran."""

    service: str
    method: str
    request: Message
    executed_sql: str
    """Counts the rows the call would have written (0: it never ran)."""


def internal_calls() -> list[InternalCall]:
    order_id = unique("ord")
    usd = money_pb2.Money(currency_code="USD", minor_units=1299)
    key = unique("charge")
    event_id = unique("evt")
    return [
        InternalCall(
            "payments",
            "Charge",
            payments_pb2.ChargeRequest(
                idempotency_key=key,
                order_id=order_id,
                amount=usd,
                payment_token="tok_visa",
            ),
            f"SELECT COUNT(*) FROM charge_attempts WHERE idempotency_key = '{key}'",
        ),
        InternalCall(
            "notifications",
            "PublishOrderEvent",
            json_format.ParseDict(
                {
                    "event": {
                        "event_id": event_id,
                        "order_id": order_id,
                        "user_id": unique("usr"),
                        "type": "ORDER_EVENT_TYPE_CONFIRMED",
                        "total": json_format.MessageToDict(usd),
                        "occur_time": "2026-01-01T00:00:00Z",
                    }
                },
                notifications_pb2.PublishOrderEventRequest(),
            ),
            f"SELECT COUNT(*) FROM events WHERE event_id = '{event_id}'",
        ),
        InternalCall(
            "inventory",
            "ReserveStock",
            inventory_pb2.ReserveStockRequest(
                order_id=order_id,
                items=[inventory_pb2.ReservationItem(sku="STICKER-01", quantity=1)],
            ),
            f"SELECT COUNT(*) FROM reservations WHERE order_id = '{order_id}'",
        ),
    ]


@pytest.mark.parametrize("internal", internal_calls(), ids=lambda c: f"{c.service}.{c.method}")
async def test_internal_rpc_is_unimplemented_at_the_gateway_and_never_runs(
    mesh: RunningMesh, grpcurl: Grpcurl, mesh_clients: MeshClients, internal: InternalCall
) -> None:
    database = mesh.replicas(internal.service)[0].db_path
    path = grpc_path(EXPOSED[internal.service], internal.method)
    request_json = json_format.MessageToDict(internal.request, preserving_proto_field_name=True)

    # grpcurl resolves the method from the contracts (reflection at the gateway does not
    # advertise it), the gateway has no route for it: UNIMPLEMENTED, from Envoy.
    with_contracts = dataclasses.replace(grpcurl, protoset=DESCRIPTOR_SET)
    result = await with_contracts.run(
        internal.service, method_of(internal.service, internal.method), data=request_json
    )
    code, error = result.status()
    assert code == grpc.StatusCode.UNIMPLEMENTED, result.explain()
    assert [detail["reason"] for detail in error["details"]] == ["UNKNOWN_METHOD"]
    # The same through the default virtual host, from a plain gRPC client...
    serialized = internal.request.SerializeToString()
    assert (
        await call_raw(mesh_clients.channel, path, serialized)
    ).code == grpc.StatusCode.UNIMPLEMENTED
    # ...and as JSON: the transcoder knows the method, the router still has no route.
    response = await post_json(mesh.gateway_address, path, request_json)
    assert response.status == 404, response

    assert count_rows(database, internal.executed_sql) == 0


def contract_methods(descriptor_set: Path) -> dict[str, list[str]]:
    """gRPC service -> every method the contracts define (from gen/shop.pb)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    return {
        f"{file.package}.{service.name}": [method.name for method in service.method]
        for file in files.file
        if file.package.startswith("shop.")
        for service in file.service
    }


async def test_no_method_beyond_the_exposed_ones_is_routed(
    mesh: RunningMesh, mesh_clients: MeshClients
) -> None:
    exposes = mesh.topology.gateway.exposes
    names = {service.grpc_service: name for name, service in mesh.topology.services.items()}
    internal = [
        (names[grpc_service], grpc_path(grpc_service, method))
        for grpc_service, methods in contract_methods(DESCRIPTOR_SET).items()
        for method in methods
        if method not in exposes.get(names[grpc_service], ())
    ]
    assert internal, "every contract method is exposed: nothing to check"
    for service, path in internal:
        # An empty request would be INVALID_ARGUMENT in any app: UNIMPLEMENTED is Envoy's.
        assert (await call_raw(mesh_clients.channel, path)).code == grpc.StatusCode.UNIMPLEMENTED, (
            path
        )
        by_authority = mesh_clients.authority(service)
        assert (await call_raw(by_authority, path)).code == grpc.StatusCode.UNIMPLEMENTED, path


# --- JSON through gRPC-JSON transcoding ----------------------------------------------------

CREATE_USER = grpc_path(EXPOSED["users"], "CreateUser")
SIGN_IN = grpc_path(EXPOSED["users"], "SignIn")
GET_USER = grpc_path(EXPOSED["users"], "GetUser")


def detail(error: Mapping[str, Any], type_url: str) -> Any:
    """The one detail of `type_url` in a JSON google.rpc.Status."""
    (found,) = [d for d in error.get("details", []) if d["@type"] == type_url]
    return found


async def test_json_create_user_answers_200_with_json(mesh: RunningMesh) -> None:
    email = f"{unique('grace')}@example.com"
    created = await post_json(
        mesh.gateway_address,
        CREATE_USER,
        {"email": email, "displayName": "Grace Hopper", "password": PASSWORD},
    )

    assert created.status == 200, created
    user = created.json()["user"]
    assert user["email"] == email
    assert user["displayName"] == "Grace Hopper"
    assert user["userId"]
    signed_in = await post_json(
        mesh.gateway_address, SIGN_IN, {"email": email, "password": PASSWORD}
    )
    assert signed_in.status == 200, signed_in
    fetched = await post_json(
        mesh.gateway_address,
        GET_USER,
        {"user_id": user["userId"]},
        dict(bearer_metadata(signed_in.json()["session"]["accessToken"])),
    )
    assert fetched.status == 200, fetched
    assert fetched.json() == {"user": user}


@pytest.mark.skipif(CURL is None, reason="curl is not installed (apt-get install curl)")
async def test_curl_create_user_answers_200_with_json(mesh: RunningMesh) -> None:
    email = f"{unique('linus')}@example.com"
    body = json.dumps({"request_id": unique("req"), "email": email, "display_name": "Linus"})

    created = await curl_json(mesh.gateway_address, CREATE_USER, body)

    assert created.status == 200, created
    assert created.json()["user"]["email"] == email
    # The same request again is idempotent: the same user, not a conflict.
    again = await curl_json(mesh.gateway_address, CREATE_USER, body)
    assert again.status == 200, again
    assert again.json() == created.json()


def assert_json_status(
    response: HttpResponse, http_status: int, code: grpc.StatusCode, reason: str
) -> Any:
    """An error answered as JSON: the HTTP status, then a google.rpc.Status body with the gRPC
    code and an ErrorInfo detail of `reason`. Returns the body."""
    assert response.status == http_status, response
    error = response.json()
    assert error["code"] == code.value[0], error
    assert error["message"]
    info = detail(error, ERROR_INFO)
    assert info["reason"] == reason
    assert info["domain"] == ERROR_DOMAIN
    return error


async def test_json_invalid_request_is_400_with_status_and_field_violations(
    mesh: RunningMesh,
) -> None:
    response = await post_json(
        mesh.gateway_address, CREATE_USER, {"email": "not-an-email", "display_name": "x" * 1000}
    )

    error = assert_json_status(response, 400, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    violations = detail(error, BAD_REQUEST)["fieldViolations"]
    assert {violation["field"] for violation in violations} == {"email", "display_name"}
    assert all(violation["description"] for violation in violations)


async def test_json_unknown_user_is_404_with_error_info(
    mesh: RunningMesh, shopper: Shopper
) -> None:
    response = await post_json(
        mesh.gateway_address, GET_USER, {"user_id": "usr_missing"}, dict(shopper.metadata)
    )

    error = assert_json_status(response, 404, grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND")
    assert detail(error, ERROR_INFO)["metadata"] == {"user_id": "usr_missing"}


@pytest.mark.skipif(CURL is None, reason="curl is not installed (apt-get install curl)")
async def test_curl_conflicting_email_is_409_with_error_info(mesh: RunningMesh) -> None:
    email = f"{unique('dup')}@example.com"
    first = await curl_json(mesh.gateway_address, CREATE_USER, json.dumps({"email": email}))
    assert first.status == 200, first

    second = await curl_json(mesh.gateway_address, CREATE_USER, json.dumps({"email": email}))

    assert_json_status(second, 409, grpc.StatusCode.ALREADY_EXISTS, "EMAIL_TAKEN")


@pytest.mark.parametrize(
    "body", [b'{"email": ', b'{"email": 5}', b"not json"], ids=["truncated", "wrong-type", "text"]
)
async def test_json_unparsable_body_is_400_with_a_json_status(
    mesh: RunningMesh, body: bytes
) -> None:
    response = await post_json(mesh.gateway_address, CREATE_USER, body)

    assert response.status == 400, response
    error = response.json()
    assert error["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert error["message"]


async def test_json_unexposed_method_is_404_with_a_json_status(mesh: RunningMesh) -> None:
    path = grpc_path(EXPOSED["payments"], "Refund")
    response = await post_json(mesh.gateway_address, path, {"payment_id": "pay_x"})

    assert response.status == 404, response
    assert response.json()["code"] == grpc.StatusCode.UNIMPLEMENTED.value[0]


# --- scripts/kind-smoke.sh, against this gateway -------------------------------------------

KIND_SMOKE_TIMEOUT = 90.0
"""The script's calls, its PlaceOrder retries (5 x 15 s at most) cut short."""


@pytest.mark.skipif(CURL is None, reason="curl is not installed (apt-get install curl)")
async def test_the_kind_smoke_passes_against_this_gateway(mesh: RunningMesh) -> None:
    # The kind gateway is rendered from the same topology by the same builders; only a
    # cluster is missing here (no Docker engine), so the script's every command runs against
    # the local one: list without -authority, the storefront, gRPC-Web, sign-in, a checkout.
    environment = {**os.environ, "SHOPMESH_KIND_GATEWAY": mesh.gateway_address}
    printed = await command_ok(
        ["bash", str(ROOT / "scripts" / "kind-smoke.sh")], environment, KIND_SMOKE_TIMEOUT
    )

    assert f"{len(EXPOSED)} services" in printed, printed
    assert "200 text/html" in printed, printed
    assert "grpc-status 0" in printed, printed
    assert "ORDER_STATUS_CONFIRMED" in printed, printed
    assert "kind-smoke: OK" in printed, printed


# --- local rate limit ----------------------------------------------------------------------


async def test_rate_limit_answers_resource_exhausted_beyond_the_bucket(
    mesh: RunningMesh, shopper: Shopper
) -> None:
    # One client: its own bucket, smaller than the shared one, is the first to run dry.
    limit = mesh.topology.gateway.per_client_rate_limit
    assert limit.max_tokens <= mesh.topology.gateway.local_rate_limit.max_tokens
    fill_seconds = limit.fill_interval.total_seconds()
    breaker = mesh.topology.policies["users"].circuit_breaker
    # Fewer in flight than the users circuit breaker admits: only the rate limiter refuses.
    concurrency = min(16, breaker.max_requests // 2, breaker.max_pending_requests // 2)
    # Enough to drain the bucket even if it refilled several times meanwhile, never unbounded.
    budget = limit.max_tokens + 10 * limit.tokens_per_fill
    before = await mesh.admin("gateway").stats()
    request = users_pb2.GetUserRequest(user_id="usr_missing")
    grpc_outcomes: dict[grpc.StatusCode, int] = {}
    json_refusals: list[HttpResponse] = []
    json_admitted = 0

    def get_user() -> Awaitable[Outcome]:
        serialized = request.SerializeToString()
        return call_raw(channel, GET_USER, serialized, metadata=shopper.metadata)

    async with aio.insecure_channel(mesh.gateway_address) as channel:
        started = time.monotonic()
        sent = 0
        # gRPC and JSON clients share the bucket; both are refused once it is empty.
        while (
            grpc.StatusCode.RESOURCE_EXHAUSTED not in grpc_outcomes or not json_refusals
        ) and sent < budget:
            calls = [get_user() for _ in range(concurrency)]
            codes, response = await asyncio.gather(
                asyncio.gather(*calls),
                post_json(
                    mesh.gateway_address,
                    GET_USER,
                    {"user_id": request.user_id},
                    dict(shopper.metadata),
                ),
            )
            sent += concurrency + 1
            for outcome in codes:
                grpc_outcomes[outcome.code] = grpc_outcomes.get(outcome.code, 0) + 1
            if response.status == 429:
                json_refusals.append(response)
            else:
                assert response.status == 404, response
                json_admitted += 1
        elapsed = time.monotonic() - started

    assert grpc_outcomes.get(grpc.StatusCode.RESOURCE_EXHAUSTED, 0) > 0, grpc_outcomes
    # Everything else reached the app (an unknown user): nothing failed another way.
    assert set(grpc_outcomes) == {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert json_refusals, f"no JSON request was refused in {sent} requests"
    for refusal in json_refusals:
        assert refusal.json()["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    admitted = grpc_outcomes[grpc.StatusCode.NOT_FOUND] + json_admitted
    refills = int(elapsed / fill_seconds) + 1
    # At most a full bucket plus what refilled meanwhile (earlier tests may have used some).
    assert 0 < admitted <= limit.max_tokens + refills * limit.tokens_per_fill
    after = await mesh.admin("gateway").stats()
    limited = [
        f"{prefix}.http_local_rate_limit.rate_limited"
        for prefix in ("ingress_per_client", "ingress")
    ]
    assert sum(after.get(name, 0) - before.get(name, 0) for name in limited) == (
        grpc_outcomes[grpc.StatusCode.RESOURCE_EXHAUSTED] + len(json_refusals)
    )

    # The bucket refills by itself: later callers get through again.
    async def admitted_again() -> bool:
        async with aio.insecure_channel(mesh.gateway_address) as fresh:
            serialized = request.SerializeToString()
            outcome = await call_raw(fresh, GET_USER, serialized, metadata=shopper.metadata)
            return outcome.code == grpc.StatusCode.NOT_FOUND

    await eventually(admitted_again, within=2 * fill_seconds + CALL_TIMEOUT, what="a refill")
