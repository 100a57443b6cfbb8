"""Wiring of the orders service: store, upstream channels, saga, outbox relay and recovery loop,
as an App for common.server.

Service-specific settings (seconds, from the environment):
- SHOPMESH_ORDERS_RECOVERY_INTERVAL: how often in-flight orders are resumed (default 5)
- SHOPMESH_ORDERS_PENDING_TIMEOUT: age after which a saga that has not reached the charge step
  is compensated instead of resumed (default 900)
- SHOPMESH_ORDERS_RELAY_POLL_INTERVAL: how often the relay checks the outbox when nothing woke
  it (default 2)
- SHOPMESH_ORDERS_RELAY_MAX_BACKOFF: cap of the relay's retry backoff while notifications is
  unreachable (default 10)
- SHOPMESH_ORDERS_LEASE_TTL: how long a replica's lease on a saga lasts after its last write;
  after a replica dies, the others take its sagas over this long after (default 15)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from services.common.clients import open_channel
from services.common.config import ServiceConfig, env_seconds
from services.common.server import App, Registration
from services.orders.clients import GrpcInventory, GrpcNotifications, GrpcPayments, GrpcUsers
from services.orders.recovery import recover_forever
from services.orders.relay import Backoff, OutboxRelay
from services.orders.saga import CheckoutSaga
from services.orders.service import Orders
from services.orders.servicer import OrdersServicer
from services.orders.store import DEFAULT_LEASE_TTL, SqlOrderStore
from shop.orders.v1 import orders_pb2, orders_pb2_grpc

SERVICE_NAME = orders_pb2.DESCRIPTOR.services_by_name["OrdersService"].full_name
UPSTREAM_NAMES = ("users", "inventory", "payments", "notifications")


@dataclass(frozen=True)
class OrdersSettings:
    """The orders-specific settings (see module docstring)."""

    recovery_interval: float = 5.0
    pending_timeout: float = 900.0
    relay_poll_interval: float = 2.0
    relay_max_backoff: float = 10.0
    lease_ttl: float = DEFAULT_LEASE_TTL.total_seconds()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OrdersSettings:
        """Read the settings; a malformed value raises ConfigError naming the variable."""
        return cls(
            recovery_interval=env_seconds(
                env, "ORDERS_RECOVERY_INTERVAL", cls.recovery_interval, minimum=0.01
            ),
            pending_timeout=env_seconds(
                env, "ORDERS_PENDING_TIMEOUT", cls.pending_timeout, minimum=1.0
            ),
            relay_poll_interval=env_seconds(
                env, "ORDERS_RELAY_POLL_INTERVAL", cls.relay_poll_interval, minimum=0.01
            ),
            relay_max_backoff=env_seconds(
                env, "ORDERS_RELAY_MAX_BACKOFF", cls.relay_max_backoff, minimum=0.01
            ),
            lease_ttl=env_seconds(env, "ORDERS_LEASE_TTL", cls.lease_ttl, minimum=0.5),
        )


async def build(config: ServiceConfig, env: Mapping[str, str] | None = None) -> App:
    """The orders App: OrdersService on `config.database`, calling the upstreams in `config`.

    Settings come from `env` (default: os.environ).
    """
    settings = OrdersSettings.from_env(os.environ if env is None else env)
    # Resolve every address first, so a missing upstream fails before anything is opened.
    addresses = {name: config.upstream(name) for name in UPSTREAM_NAMES}
    store = await SqlOrderStore.open(
        config.database, owner=config.replica, lease_ttl=timedelta(seconds=settings.lease_ttl)
    )
    channels = {name: open_channel(address) for name, address in addresses.items()}

    relay = OutboxRelay(
        store,
        GrpcNotifications(channels["notifications"]),
        poll_interval=settings.relay_poll_interval,
        backoff=Backoff(maximum=settings.relay_max_backoff),
    )
    saga = CheckoutSaga(
        store,
        GrpcUsers(channels["users"]),
        GrpcInventory(channels["inventory"]),
        GrpcPayments(channels["payments"]),
        on_event=relay.wake,
        pending_timeout=timedelta(seconds=settings.pending_timeout),
    )

    async def recovery() -> None:
        await recover_forever(saga, settings.recovery_interval)

    async def close_channels() -> None:
        for channel in channels.values():
            await channel.close()

    return App(
        registrations=[
            Registration(
                SERVICE_NAME,
                OrdersServicer(Orders(store, saga)),
                orders_pb2_grpc.add_OrdersServiceServicer_to_server,
            )
        ],
        background=[recovery, relay.run],
        # Run in reverse: channels close before the store.
        cleanups=[store.close, close_channels],
    )
