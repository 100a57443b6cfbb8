"""Clients of a running mesh: gRPC stubs of every public service through the gateway with
checkout helpers, and plaintext channels to the gateway or to a pod's egress socket."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from grpc import aio

from shop.inventory.v1 import inventory_pb2_grpc
from shop.notifications.v1 import notifications_pb2, notifications_pb2_grpc
from shop.orders.v1 import orders_pb2, orders_pb2_grpc
from shop.payments.v1 import payments_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc
from shopmesh.envoy.signin import bearer_metadata
from shopmesh.local.mesh import RunningMesh
from tests.support.polling import CALL_TIMEOUT, eventually

# Test clients must not retry on their own: every success has to be the mesh's doing. Even
# gRPC's transparent retries (of calls that never reached the server) are off on these
# channels; the gateway clients (checkouts) keep them, which cannot repeat a call a server has
# seen.
CHANNEL_OPTIONS = [("grpc.enable_retries", 0)]
PASSWORD = "a mesh tester's password"
"""The password of every account the test clients create."""


def channel(address: str) -> aio.Channel:
    """A plaintext channel to the gateway (host:port) or an egress socket (unix:/path)."""
    return aio.insecure_channel(address, options=CHANNEL_OPTIONS)


def egress(mesh: RunningMesh, pod: str) -> str:
    """The gRPC target of a pod's egress socket: calling it is calling as that pod's app."""
    return f"unix:{mesh.pod(pod).egress_socket}"


@dataclass(frozen=True)
class Shopper:
    """A signed-up, signed-in account: calls made for it carry `metadata` (its access token;
    the gateway turns it into the caller the services see)."""

    user: users_pb2.User
    session: users_pb2.Session

    @property
    def user_id(self) -> str:
        return self.user.user_id

    @property
    def metadata(self) -> tuple[tuple[str, str]]:
        return bearer_metadata(self.session.access_token)


@dataclass
class MeshClients:
    """gRPC stubs of every public service through the gateway, and checkout helpers.

    `channel` uses the gateway's default virtual host (every public method, and reflection);
    `authority(service)` gives a channel whose :authority selects that service's own virtual
    host (its public methods, reflection and its health check)."""

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
        for open_channel in [self.channel, *self._by_authority.values()]:
            await open_channel.close()

    async def create_user(
        self, email: str | None = None, display_name: str = "Mesh Tester"
    ) -> Shopper:
        """A new account (a unique email unless one is given), signed in."""
        email = email or f"tester-{uuid.uuid4().hex[:12]}@example.com"
        response = await self.users.CreateUser(
            users_pb2.CreateUserRequest(
                request_id=f"req-{uuid.uuid4().hex}",
                email=email,
                display_name=display_name,
                password=PASSWORD,
            ),
            timeout=CALL_TIMEOUT,
        )
        return Shopper(response.user, await self.sign_in(email))

    async def sign_in(self, email: str, password: str = PASSWORD) -> users_pb2.Session:
        response = await self.users.SignIn(
            users_pb2.SignInRequest(email=email, password=password), timeout=CALL_TIMEOUT
        )
        return response.session

    async def place_order(
        self,
        shopper: Shopper,
        items: Sequence[tuple[str, int]] = (("STICKER-01", 1),),
        payment_token: str = "tok_visa",
        idempotency_key: str | None = None,
        within: float = CALL_TIMEOUT,
    ) -> orders_pb2.Order:
        """PlaceOrder through the gateway as `shopper`, with a gRPC deadline of `within`
        seconds; `items` are (sku, quantity). The default item has a stock of 1000 in the seed
        catalog, so hundreds of checkouts fit in one mesh."""
        response = await self.orders.PlaceOrder(
            orders_pb2.PlaceOrderRequest(
                idempotency_key=idempotency_key or f"order-{uuid.uuid4().hex}",
                user_id=shopper.user_id,
                items=[orders_pb2.OrderItem(sku=sku, quantity=qty) for sku, qty in items],
                payment_token=payment_token,
            ),
            timeout=within,
            metadata=shopper.metadata,
        )
        return response.order

    async def checkout(self, **order: Any) -> tuple[Shopper, orders_pb2.Order]:
        """A new shopper places one order (keyword arguments as for `place_order`)."""
        shopper = await self.create_user()
        return shopper, await self.place_order(shopper, **order)

    async def notifications_of(self, shopper: Shopper) -> list[notifications_pb2.Notification]:
        response = await self.notifications.ListNotifications(
            notifications_pb2.ListNotificationsRequest(user_id=shopper.user_id, page_size=100),
            timeout=CALL_TIMEOUT,
            metadata=shopper.metadata,
        )
        return list(response.notifications)

    async def wait_for_notification(
        self, shopper: Shopper, order_id: str, within: float = 10.0
    ) -> notifications_pb2.Notification:
        """The notification about `order_id`, once the outbox relay has delivered it."""
        found: list[notifications_pb2.Notification] = []

        async def delivered() -> bool:
            found[:] = [n for n in await self.notifications_of(shopper) if n.order_id == order_id]
            return bool(found)

        await eventually(delivered, within, f"a notification about {order_id}")
        return found[0]


@contextlib.asynccontextmanager
async def gateway_clients(mesh: RunningMesh) -> AsyncIterator[MeshClients]:
    """MeshClients for `mesh`'s gateway, closed when the block exits."""
    gateway_channel = mesh.gateway_target.channel()
    clients = MeshClients(
        gateway=mesh.gateway_address,
        channel=gateway_channel,
        users=users_pb2_grpc.UsersServiceStub(gateway_channel),
        inventory=inventory_pb2_grpc.InventoryServiceStub(gateway_channel),
        orders=orders_pb2_grpc.OrdersServiceStub(gateway_channel),
        payments=payments_pb2_grpc.PaymentsServiceStub(gateway_channel),
        notifications=notifications_pb2_grpc.NotificationsServiceStub(gateway_channel),
    )
    try:
        yield clients
    finally:
        await clients.close()
