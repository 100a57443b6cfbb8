"""Who is calling, through the real gateway (issue 13): a method that needs a signed-in caller is
refused UNAUTHENTICATED at the gateway without a valid access token, whichever way the token
is wrong, and the call reaches no service; a shopper's verified id, and nothing a caller sends
from outside, is the caller the services see; a token signed with the previous key works after
a rotation, and new sign-ins use the new key; repeated wrong passwords slow sign-in down.

Tokens are forged with PyJWT: with the mesh's own current key (to change one claim at a time),
with a key the JWKS does not list, and unsigned (`alg: none`)."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import time
import uuid
from collections.abc import Awaitable
from typing import Any, TypedDict

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from grpc import aio

from services.common.caller import CALLER_HEADER
from services.users.keys import KeyDirectory
from services.users.sessions import SIGN_IN_THROTTLED
from services.users.throttle import DEFAULT_LIMITS
from services.users.tokens import ACCESS_TOKEN_LIFETIME, ALGORITHM, AUDIENCE, ISSUER
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.notifications.v1 import notifications_pb2
from shop.orders.v1 import orders_pb2, orders_pb2_grpc
from shop.payments.v1 import payments_pb2
from shop.users.v1 import users_pb2
from shopmesh.envoy.signin import bearer_metadata
from shopmesh.local import signing
from shopmesh.local.mesh import RunningMesh
from tests.support.callers import refusal
from tests.support.clients import PASSWORD, MeshClients, Shopper, gateway_clients
from tests.support.errors import expect_error_info
from tests.support.http import post_json
from tests.support.observe import access_log
from tests.support.polling import CALL_TIMEOUT, eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

LIST_ORDERS = "/shop.orders.v1.OrdersService/ListOrders"
SIGN_IN = "/shop.users.v1.UsersService/SignIn"


def claims(user_id: str, **changes: Any) -> dict[str, Any]:
    """The claims users.SignIn puts in an access token, with `changes` (None removes one)."""
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": user_id,
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
    }
    body.update(changes)
    return {name: value for name, value in body.items() if value is not None}


def signed(mesh: RunningMesh, body: dict[str, Any]) -> str:
    """`body` signed with the mesh's current signing key, named by its kid."""
    current = KeyDirectory(mesh.paths.signing_keys).ring().current
    return jwt.encode(body, current.private_key(), ALGORITHM, headers={"kid": current.kid})


def unsigned(body: dict[str, Any]) -> str:
    """An `alg: none` token: a header, the claims, and an empty signature."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(body)}."


def foreign(body: dict[str, Any], kid: str) -> str:
    """Signed by a key the JWKS does not list (under the kid of one it does, or not)."""
    return jwt.encode(body, ec.generate_private_key(ec.SECP256R1()), ALGORITHM, {"kid": kid})


async def upstream_requests(mesh: RunningMesh, service: str) -> int:
    return (await mesh.admin("gateway").stats()).get(f"cluster.svc_{service}.upstream_rq_total", 0)


async def list_orders(
    clients: MeshClients, user_id: str, metadata: tuple[tuple[str, str], ...] = ()
) -> orders_pb2.ListOrdersResponse:
    request = orders_pb2.ListOrdersRequest(user_id=user_id, page_size=10)
    response: orders_pb2.ListOrdersResponse = await clients.orders.ListOrders(
        request, timeout=CALL_TIMEOUT, metadata=metadata
    )
    return response


def bad_tokens(mesh: RunningMesh, user_id: str) -> dict[str, tuple[str | None, str]]:
    """Every way an access token can be wrong -> (the token, the ErrorInfo reason)."""
    current_kid = KeyDirectory(mesh.paths.signing_keys).ring().current.kid
    hour_ago = int(time.time()) - 3600
    lifetime = int(ACCESS_TOKEN_LIFETIME.total_seconds())
    return {
        "none": (None, "TOKEN_MISSING"),
        "expired": (
            signed(mesh, claims(user_id, iat=hour_ago, exp=hour_ago + 60)),
            "TOKEN_EXPIRED",
        ),
        "another key, its own kid": (foreign(claims(user_id), "not-in-jwks"), "TOKEN_INVALID"),
        "another key, a listed kid": (foreign(claims(user_id), current_kid), "TOKEN_INVALID"),
        "alg none": (unsigned(claims(user_id)), "TOKEN_INVALID"),
        "wrong issuer": (signed(mesh, claims(user_id, iss="evil.example")), "TOKEN_INVALID"),
        "wrong audience": (signed(mesh, claims(user_id, aud="other.example")), "TOKEN_INVALID"),
        "no expiry": (signed(mesh, claims(user_id, exp=None)), "TOKEN_INVALID"),
        "longer than a token lives": (
            signed(mesh, claims(user_id, exp=int(time.time()) + 2 * lifetime)),
            "TOKEN_INVALID",
        ),
        "not a JWT": ("not-a-token", "TOKEN_INVALID"),
    }


async def test_every_bad_token_is_refused_at_the_gateway_and_reaches_no_service(
    mesh: RunningMesh, mesh_clients: MeshClients, shopper: Shopper
) -> None:
    # The same shopper's own orders: only the token differs from a call that succeeds.
    await list_orders(mesh_clients, shopper.user_id, shopper.metadata)
    before = await upstream_requests(mesh, "orders")
    refused: dict[str, str] = {}
    for name, (token, reason) in bad_tokens(mesh, shopper.user_id).items():
        metadata = () if token is None else bearer_metadata(token)
        with pytest.raises(aio.AioRpcError) as caught:
            await list_orders(mesh_clients, shopper.user_id, metadata)
        refused[name] = expect_error_info(caught.value, grpc.StatusCode.UNAUTHENTICATED).reason
        assert refused[name] == reason, (name, caught.value.details())
    assert await upstream_requests(mesh, "orders") == before, "a refused call reached orders"


async def test_a_json_call_without_a_valid_token_is_refused_too(
    mesh: RunningMesh, shopper: Shopper
) -> None:
    # JSON is matched to its route only after the transcoder: the check must not depend on it.
    before = await upstream_requests(mesh, "orders")
    body = {"user_id": shopper.user_id}
    bare = await post_json(mesh.gateway_address, LIST_ORDERS, body)
    expired = signed(mesh, claims(shopper.user_id, iat=1, exp=61))
    stale = await post_json(
        mesh.gateway_address, LIST_ORDERS, body, {"authorization": f"Bearer {expired}"}
    )
    for response, reason in ((bare, "TOKEN_MISSING"), (stale, "TOKEN_EXPIRED")):
        assert response.status == 401, response
        assert response.json()["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
        assert [d["reason"] for d in response.json()["details"]] == [reason]
    assert await upstream_requests(mesh, "orders") == before
    token = shopper.session.access_token
    signed_in = await post_json(
        mesh.gateway_address, LIST_ORDERS, body, {"authorization": f"Bearer {token}"}
    )
    assert signed_in.status == 200, signed_in


async def test_public_methods_need_no_token(mesh_clients: MeshClients) -> None:
    products = await mesh_clients.inventory.ListProducts(
        inventory_pb2.ListProductsRequest(page_size=2), timeout=CALL_TIMEOUT
    )
    assert products.products


async def caller_seen(mesh: RunningMesh, service: str, user_agent: str) -> str | None:
    """The caller (CALLER_HEADER) that `service`'s inbound sidecars logged for the one call
    made with `user_agent`: what reached the app."""
    seen: list[str | None] = []

    async def logged() -> bool:
        seen[:] = [
            entry["caller"]
            for pod in mesh.replicas(service)
            for entry in access_log(mesh.paths.access_log(pod.name))
            if (entry["user_agent"] or "").startswith(user_agent)
        ]
        return bool(seen)

    await eventually(logged, 10.0, f"the call of {user_agent} in {service}'s access logs")
    assert len(seen) == 1, seen
    return seen[0]


async def test_the_service_sees_the_verified_shopper_not_a_header_from_outside(
    mesh: RunningMesh, shopper: Shopper
) -> None:
    spoofed = (CALLER_HEADER, "usr_somebody_else")
    # One channel each, with a user agent of its own, to find the call in the access logs.
    agent = f"spoofer-{uuid.uuid4().hex}"
    async with aio.insecure_channel(
        mesh.gateway_address, options=[("grpc.primary_user_agent", agent)]
    ) as channel:
        await orders_pb2_grpc.OrdersServiceStub(channel).ListOrders(
            orders_pb2.ListOrdersRequest(user_id=shopper.user_id),
            timeout=CALL_TIMEOUT,
            metadata=(*shopper.metadata, spoofed),
        )
        await inventory_pb2_grpc.InventoryServiceStub(channel).GetProduct(
            inventory_pb2.GetProductRequest(sku="STICKER-01"),
            timeout=CALL_TIMEOUT,
            metadata=(spoofed,),
        )
    assert await caller_seen(mesh, "orders", agent) == shopper.user_id
    assert await caller_seen(mesh, "inventory", agent) is None


class CallOptions(TypedDict):
    timeout: float
    metadata: tuple[tuple[str, str], ...]


async def refused(call: Awaitable[Any]) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_another_shopper_sees_nothing_of_an_order_and_cannot_cancel_it(
    mesh_clients: MeshClients, shopper: Shopper
) -> None:
    order = await mesh_clients.place_order(shopper)
    assert order.status == orders_pb2.ORDER_STATUS_CONFIRMED
    other = await mesh_clients.create_user()
    unknown = f"ord_{uuid.uuid4().hex}"[: len(order.order_id)].ljust(len(order.order_id), "0")
    orders, payments = mesh_clients.orders, mesh_clients.payments
    as_other = CallOptions(timeout=CALL_TIMEOUT, metadata=other.metadata)
    # Someone else's order or payment: exactly what an id that does not exist gets.
    for theirs, nobodys in (
        (
            orders.GetOrder(orders_pb2.GetOrderRequest(order_id=order.order_id), **as_other),
            orders.GetOrder(orders_pb2.GetOrderRequest(order_id=unknown), **as_other),
        ),
        (
            orders.CancelOrder(orders_pb2.CancelOrderRequest(order_id=order.order_id), **as_other),
            orders.CancelOrder(orders_pb2.CancelOrderRequest(order_id=unknown), **as_other),
        ),
    ):
        mine, none = await refused(theirs), await refused(nobodys)
        assert mine.code() is grpc.StatusCode.NOT_FOUND
        assert refusal(mine, order.order_id) == refusal(none, unknown)
    payment = await refused(
        payments.GetPayment(payments_pb2.GetPaymentRequest(payment_id=order.payment_id), **as_other)
    )
    assert payment.code() is grpc.StatusCode.NOT_FOUND
    # Naming another user's id in a list or watch.
    for call in (
        orders.ListOrders(orders_pb2.ListOrdersRequest(user_id=shopper.user_id), **as_other),
        mesh_clients.notifications.ListNotifications(
            notifications_pb2.ListNotificationsRequest(user_id=shopper.user_id), **as_other
        ),
    ):
        denied = await refused(call)
        assert expect_error_info(denied, grpc.StatusCode.PERMISSION_DENIED).reason == (
            "NOT_YOUR_DATA"
        )
    watch = mesh_clients.notifications.WatchNotifications(
        notifications_pb2.WatchNotificationsRequest(user_id=shopper.user_id), **as_other
    )
    with pytest.raises(aio.AioRpcError) as caught:
        async for _ in watch:
            pass
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    # The owner still sees the order, untouched.
    mine_now = await orders.GetOrder(
        orders_pb2.GetOrderRequest(order_id=order.order_id),
        timeout=CALL_TIMEOUT,
        metadata=shopper.metadata,
    )
    assert mine_now.order.status == orders_pb2.ORDER_STATUS_CONFIRMED
    await payments.GetPayment(
        payments_pb2.GetPaymentRequest(payment_id=order.payment_id),
        timeout=CALL_TIMEOUT,
        metadata=shopper.metadata,
    )


async def test_repeated_wrong_passwords_slow_sign_in_down(
    mesh_clients: MeshClients, shopper: Shopper
) -> None:
    wrong = users_pb2.SignInRequest(email=shopper.user.email, password="not the password")
    codes = []
    for _ in range(8):
        try:
            await mesh_clients.users.SignIn(wrong, timeout=CALL_TIMEOUT)
        except aio.AioRpcError as error:
            codes.append(error.code())
    # The first failures are free (UNAUTHENTICATED), then the account waits between attempts.
    assert codes[0] is grpc.StatusCode.UNAUTHENTICATED
    assert codes[-1] is grpc.StatusCode.RESOURCE_EXHAUSTED, codes
    with pytest.raises(aio.AioRpcError) as caught:
        await mesh_clients.sign_in(shopper.user.email)
    info = expect_error_info(caught.value, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert info.reason == SIGN_IN_THROTTLED, info


def sign_in_from(
    mesh: RunningMesh, source: str, email: str, password: str, claimed: str | None = None
) -> tuple[int, Any]:
    """SignIn over JSON from the loopback address `source`, claiming to come from `claimed`
    (x-envoy-external-address and x-forwarded-for) when given: the HTTP status and the body."""
    host, port = mesh.gateway_address.rsplit(":", 1)
    connection = http.client.HTTPConnection(
        host, int(port), timeout=CALL_TIMEOUT, source_address=(source, 0)
    )
    headers = {"content-type": "application/json"}
    if claimed is not None:
        headers |= {"x-envoy-external-address": claimed, "x-forwarded-for": claimed}
    try:
        body = json.dumps({"email": email, "password": password})
        connection.request("POST", SIGN_IN, body, headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


async def test_wrong_passwords_from_one_address_slow_down_every_account_it_tries(
    mesh: RunningMesh, mesh_clients: MeshClients
) -> None:
    shopper = await mesh_clients.create_user()  # its account has no failures of its own
    # users sees the caller's own address through the gateway (x-envoy-external-address), so
    # guesses spread over many accounts from one address are throttled too; from another
    # loopback address, so that the rest of the module can sign in. Each guess claims to come
    # from an address of its own (x-envoy-external-address, x-forwarded-for): were the claim
    # believed, no address would ever collect enough failures to be throttled.
    source = "127.0.0.2"
    statuses = []
    for attempt in range(DEFAULT_LIMITS.address.free_failures + 1):
        email = f"guess-{attempt}-{uuid.uuid4().hex[:8]}@example.com"
        claimed = f"198.51.100.{attempt + 1}"
        status, _ = await asyncio.to_thread(sign_in_from, mesh, source, email, "a guess!", claimed)
        statuses.append(status)
    assert statuses[0] == 401
    status, body = await asyncio.to_thread(sign_in_from, mesh, source, shopper.user.email, PASSWORD)
    assert (status, [d["reason"] for d in body.get("details", []) if "reason" in d]) == (
        429,
        [SIGN_IN_THROTTLED],
    ), statuses
    # Another address is not held back by this one's failures, even claiming to be it.
    for claim in (None, source):
        status, _ = await asyncio.to_thread(
            sign_in_from, mesh, "127.0.0.3", shopper.user.email, PASSWORD, claim
        )
        assert status == 200, claim


async def test_a_token_of_the_previous_key_works_after_a_rotation(
    mesh: RunningMesh, mesh_clients: MeshClients
) -> None:
    before = await mesh_clients.create_user()
    old_kid = jwt.get_unverified_header(before.session.access_token)["kid"]
    ring = await signing.rotate(mesh, force=True)
    assert ring.previous is not None
    assert ring.previous.kid == old_kid
    # The gateway restarted: new channels (the old ones saw the connection close).
    async with gateway_clients(mesh) as clients:
        assert (await list_orders(clients, before.user_id, before.metadata)).orders == []
        renewed = await clients.sign_in(before.user.email)
        assert jwt.get_unverified_header(renewed.access_token)["kid"] == ring.current.kid
        await list_orders(clients, before.user_id, bearer_metadata(renewed.access_token))
        # Rotating again drops the key that signed `before`'s token: its holder signs in again.
        await signing.rotate(mesh, force=True)

    async with gateway_clients(mesh) as clients:
        with pytest.raises(aio.AioRpcError) as caught:
            await list_orders(clients, before.user_id, before.metadata)
        assert expect_error_info(caught.value, grpc.StatusCode.UNAUTHENTICATED).reason == (
            "TOKEN_INVALID"
        )
        await list_orders(clients, before.user_id, bearer_metadata(renewed.access_token))
