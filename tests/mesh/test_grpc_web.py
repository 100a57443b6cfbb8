"""gRPC-Web through the gateway, as a browser calls (tests/support/grpcweb.py): public and
signed-in calls, a server stream, and every refusal of the gateway answered as a gRPC caller
gets it — a 200 whose grpc-status, grpc-message and details (the ErrorInfo reason) a gRPC-Web
client reads — never an HTTP error status it would read instead."""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from google.protobuf.message import Message
from google.rpc import code_pb2

from shop.inventory.v1 import inventory_pb2
from shop.notifications.v1 import notifications_pb2
from shop.users.v1 import users_pb2
from shopmesh.local.mesh import RunningMesh
from tests.support import grpcweb
from tests.support.clients import MeshClients, Shopper
from tests.support.cors import preflight
from tests.support.http import grpc_path

pytestmark = pytest.mark.asyncio(loop_scope="module")

LIST_PRODUCTS = "/shop.inventory.v1.InventoryService/ListProducts"
GET_PRODUCT = "/shop.inventory.v1.InventoryService/GetProduct"
GET_USER = "/shop.users.v1.UsersService/GetUser"
LIST_NOTIFICATIONS = "/shop.notifications.v1.NotificationsService/ListNotifications"
WATCH = "/shop.notifications.v1.NotificationsService/WatchNotifications"
REFUND = "/shop.payments.v1.PaymentsService/Refund"
"""A method of an exposed service that the gateway does not expose."""
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


async def web_call(
    mesh: RunningMesh,
    path: str,
    request: Message | bytes,
    shopper: Shopper | None = None,
    content_type: str = grpcweb.BINARY,
) -> grpcweb.GrpcWebReply:
    headers = dict(shopper.metadata) if shopper is not None else {}
    return await asyncio.to_thread(
        grpcweb.call, mesh.gateway_address, path, request, headers, content_type
    )


def refusal(reply: grpcweb.GrpcWebReply) -> tuple[int, int | None, str | None]:
    """HTTP status, grpc-status and ErrorInfo reason of a refused call."""
    assert reply.headers["content-type"] == grpcweb.BINARY, reply
    assert not reply.messages, reply
    return reply.http_status, reply.status, reply.reason


@pytest.mark.parametrize("content_type", [grpcweb.BINARY, grpcweb.TEXT])
async def test_a_public_call_answers_grpc_web(mesh: RunningMesh, content_type: str) -> None:
    reply = await web_call(
        mesh, LIST_PRODUCTS, inventory_pb2.ListProductsRequest(page_size=5), None, content_type
    )

    assert (reply.http_status, reply.status) == (200, code_pb2.OK), reply
    assert reply.headers["content-type"] == f"{content_type.removesuffix('+proto')}+proto"
    products = reply.message(inventory_pb2.ListProductsResponse).products
    assert products
    assert all(p.price.minor_units > 0 for p in products)


async def test_a_signed_in_call_carries_the_bearer_token(
    mesh: RunningMesh, shopper: Shopper
) -> None:
    request = users_pb2.GetUserRequest(user_id=shopper.user_id)
    reply = await web_call(mesh, GET_USER, request, shopper)

    assert reply.status == code_pb2.OK, reply
    assert reply.message(users_pb2.GetUserResponse).user.email == shopper.user.email
    missing = await web_call(mesh, GET_USER, request)
    assert refusal(missing) == (200, code_pb2.UNAUTHENTICATED, "TOKEN_MISSING")
    assert "sign in" in missing.headers["grpc-message"]


async def test_another_shoppers_data_is_permission_denied(
    mesh: RunningMesh, shopper: Shopper
) -> None:
    request = notifications_pb2.ListNotificationsRequest(user_id="usr_someone_else")
    reply = await web_call(mesh, LIST_NOTIFICATIONS, request, shopper)

    assert reply.status == code_pb2.PERMISSION_DENIED, reply
    assert reply.reason == "NOT_YOUR_DATA"


@pytest.mark.parametrize("path", [REFUND, REFLECTION, "/nowhere"])
async def test_a_method_the_gateway_does_not_expose_is_unimplemented(
    mesh: RunningMesh, path: str
) -> None:
    """Reflection too: it is a bidirectional stream, which gRPC-Web cannot carry."""
    reply = await web_call(mesh, path, b"")
    assert refusal(reply) == (200, code_pb2.UNIMPLEMENTED, "UNKNOWN_METHOD")


async def test_bodies_the_gateway_does_not_take_are_refused_in_grpc_web(
    mesh: RunningMesh,
) -> None:
    limit = mesh.topology.gateway.limits.max_request_bytes
    huge = inventory_pb2.GetProductRequest(sku="x" * (2 * limit))
    assert refusal(await web_call(mesh, GET_PRODUCT, huge)) == (
        200,
        code_pb2.RESOURCE_EXHAUSTED,
        "REQUEST_TOO_LARGE",
    )
    # A frame announcing more than it carries.
    truncated = grpcweb.frame(b"\x0a\x02ab")[:-1]
    assert refusal(await web_call(mesh, GET_PRODUCT, truncated)) == (
        200,
        code_pb2.INVALID_ARGUMENT,
        "MALFORMED_MESSAGE",
    )


async def test_a_grpc_web_kind_the_gateway_does_not_convert_is_refused_deliberately(
    mesh: RunningMesh,
) -> None:
    """gRPC-Web with JSON messages: Envoy's filter converts only the protobuf kinds."""
    request = inventory_pb2.GetProductRequest(sku="STICKER-01")
    reply = await web_call(mesh, GET_PRODUCT, request, None, "application/grpc-web+json")
    assert (reply.http_status, reply.status, reply.reason) == (
        200,
        code_pb2.INVALID_ARGUMENT,
        "UNSUPPORTED_MEDIA_TYPE",
    )


async def test_validation_errors_keep_their_field_violations(mesh: RunningMesh) -> None:
    request = users_pb2.CreateUserRequest(
        request_id="req-grpc-web-invalid", email="not-an-email", display_name="Web", password="x"
    )
    reply = await web_call(mesh, grpc_path("shop.users.v1.UsersService", "CreateUser"), request)

    assert reply.status == code_pb2.INVALID_ARGUMENT, reply
    assert "email" in dict(reply.field_violations())


async def test_a_fast_caller_is_rate_limited_with_a_retry_delay(mesh: RunningMesh) -> None:
    """From a source address of its own, calls of an unexposed method (which cost no upstream)
    until the caller's bucket is empty: RESOURCE_EXHAUSTED RATE_LIMITED, as a gRPC caller."""
    limit = mesh.topology.gateway.per_client_rate_limit
    budget = limit.max_tokens + 10 * limit.tokens_per_fill

    def one() -> grpcweb.GrpcWebReply:
        with grpcweb.open_call(
            mesh.gateway_address, REFUND, grpcweb.frame(b""), source="127.0.0.5"
        ) as started:
            return started.finish()

    refused: list[grpcweb.GrpcWebReply] = []
    with ThreadPoolExecutor(max_workers=16) as pool:
        sent = 0
        while not refused and sent < budget:
            batch = list(pool.map(lambda _: one(), range(32)))
            sent += len(batch)
            refused += [r for r in batch if r.status == code_pb2.RESOURCE_EXHAUSTED]
            assert all(r.reason in ("UNKNOWN_METHOD", "RATE_LIMITED") for r in batch)
    assert refused, f"nothing refused in {sent} calls"
    assert refusal(refused[0]) == (200, code_pb2.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert refused[0].retry_delay == 1.0


async def test_a_server_stream_delivers_over_grpc_web(
    mesh: RunningMesh, mesh_clients: MeshClients
) -> None:
    shopper = await mesh_clients.create_user()
    request = notifications_pb2.WatchNotificationsRequest(user_id=shopper.user_id)
    with contextlib.ExitStack() as stack:
        opening = grpcweb.open_call(
            mesh.gateway_address,
            WATCH,
            grpcweb.frame(request.SerializeToString()),
            dict(shopper.metadata),
        )
        # Headers come once the subscription exists (the contract says so).
        watch = await asyncio.to_thread(stack.enter_context, opening)
        assert watch.reply.http_status == 200
        orders = [await mesh_clients.place_order(shopper) for _ in range(2)]
        delivered = [await asyncio.to_thread(watch.next_message) for _ in orders]

    notified = [
        notifications_pb2.WatchNotificationsResponse.FromString(m).notification.order_id
        for m in delivered
        if m is not None
    ]
    assert notified == [order.order_id for order in orders]


async def test_without_allowed_origins_no_answer_carries_cors_headers(mesh: RunningMesh) -> None:
    status, headers = await asyncio.to_thread(preflight, mesh, "https://shop.example.com")

    # Refused as any request that is neither gRPC nor JSON; nothing answers for CORS.
    assert status == 415
    assert not [name for name in headers if name.startswith("access-control-")]
