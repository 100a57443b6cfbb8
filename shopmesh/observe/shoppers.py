"""The shopper mix of `shopmesh load`: which public RPC the next call is, and with what request.

Shoppers browse the catalog (ListProducts page by page, GetProduct), sign up (CreateUser with a
unique email and a password), sign in (SignIn: a new account, or a returning one), check out
(PlaceOrder, mostly with cards that pay, some that are declined, now and then the one-off
POSTER-LTD), read their orders back (GetOrder, ListOrders), cancel some confirmed ones
(CancelOrder) and now and then renew their session (RenewToken). What they know is small and
bounded: the SKUs seen with their stock, the accounts signed up but not yet signed in, and a
pool of the latest signed-in accounts with their session and a few of their orders each.

An account enters the pool once signed in, and every call that needs a signed-in caller
(PlaceOrder, GetOrder, ListOrders, CancelOrder) carries its shopper's access token. A shopper
whose token is about to expire renews it before its next such call, so runs longer than a
token's life stay signed in.

Every random draw happens in `next_call`, which the scheduler calls in schedule order, so the
sequence of intents is a function of the seed. An intent that lacks what it needs (an order to
cancel before any was confirmed) becomes the call that would create it, so the calls actually
sent also depend on which answers have arrived by then.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from grpc import aio

from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.orders.v1 import orders_pb2, orders_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc
from shopmesh.envoy.signin import bearer_metadata

LIST_PRODUCTS = "inventory.ListProducts"
GET_PRODUCT = "inventory.GetProduct"
CREATE_USER = "users.CreateUser"
SIGN_IN = "users.SignIn"
RENEW_TOKEN = "users.RenewToken"
PLACE_ORDER = "orders.PlaceOrder"
GET_ORDER = "orders.GetOrder"
LIST_ORDERS = "orders.ListOrders"
CANCEL_ORDER = "orders.CancelOrder"

MIX: tuple[tuple[str, int], ...] = (
    (LIST_PRODUCTS, 20),
    (GET_PRODUCT, 25),
    (CREATE_USER, 8),
    (SIGN_IN, 8),
    (RENEW_TOKEN, 2),
    (PLACE_ORDER, 20),
    (GET_ORDER, 10),
    (LIST_ORDERS, 8),
    (CANCEL_ORDER, 7),
)
"""Each RPC of the mix (`service.Method`) with its weight: reads dominate, as in a shop."""
PAYMENT_TOKENS: tuple[tuple[str, int], ...] = (
    ("tok_visa", 50),
    ("tok_mastercard", 30),
    ("tok_chargeDeclined", 10),
    ("tok_insufficientFunds", 10),
)
"""The payments test tokens with their weights: the first two pay, the others are declined."""
LIMITED_SKU = "POSTER-LTD"
"""The seed catalog's product with a stock of 1: orders of it show a shortage."""
LIMITED_SHARE = 0.05
POOL_SIZE = 32
ORDERS_KEPT = 4
RENEW_MARGIN = 60.0
"""Seconds before its access token expires that a shopper renews it (more than any call's
deadline, so the old token outlives the calls sent with it meanwhile)."""
Metadata = Sequence[tuple[str, str]]


class UsersCalls(Protocol):
    """What the mix calls of shop.users.v1.UsersService (its async stub is one)."""

    def CreateUser(
        self, request: users_pb2.CreateUserRequest, *, timeout: float | None = None
    ) -> Awaitable[users_pb2.CreateUserResponse]: ...

    def SignIn(
        self, request: users_pb2.SignInRequest, *, timeout: float | None = None
    ) -> Awaitable[users_pb2.SignInResponse]: ...

    def RenewToken(
        self, request: users_pb2.RenewTokenRequest, *, timeout: float | None = None
    ) -> Awaitable[users_pb2.RenewTokenResponse]: ...


class InventoryCalls(Protocol):
    """What the mix calls of shop.inventory.v1.InventoryService."""

    def ListProducts(
        self, request: inventory_pb2.ListProductsRequest, *, timeout: float | None = None
    ) -> Awaitable[inventory_pb2.ListProductsResponse]: ...

    def GetProduct(
        self, request: inventory_pb2.GetProductRequest, *, timeout: float | None = None
    ) -> Awaitable[inventory_pb2.GetProductResponse]: ...


class OrdersCalls(Protocol):
    """What the mix calls of shop.orders.v1.OrdersService: every call as a signed-in shopper
    (`metadata`, its access token)."""

    def PlaceOrder(
        self,
        request: orders_pb2.PlaceOrderRequest,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Awaitable[orders_pb2.PlaceOrderResponse]: ...

    def GetOrder(
        self,
        request: orders_pb2.GetOrderRequest,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Awaitable[orders_pb2.GetOrderResponse]: ...

    def ListOrders(
        self,
        request: orders_pb2.ListOrdersRequest,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Awaitable[orders_pb2.ListOrdersResponse]: ...

    def CancelOrder(
        self,
        request: orders_pb2.CancelOrderRequest,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Awaitable[orders_pb2.CancelOrderResponse]: ...


@dataclass(frozen=True)
class Stubs:
    """The services the shoppers call: the generated async stubs on one gateway channel, or
    fakes with the same methods (tests)."""

    users: UsersCalls
    inventory: InventoryCalls
    orders: OrdersCalls

    @classmethod
    def through(cls, channel: aio.Channel) -> Stubs:
        """The generated stubs on `channel`: the gateway's default virtual host routes every
        public method by its gRPC service name."""
        return cls(
            users=users_pb2_grpc.UsersServiceStub(channel),
            inventory=inventory_pb2_grpc.InventoryServiceStub(channel),
            orders=orders_pb2_grpc.OrdersServiceStub(channel),
        )


@dataclass(frozen=True)
class Call:
    """One planned RPC: `send(deadline)` makes it and returns the outcome of an OK answer (for
    PlaceOrder the order's status, e.g. CONFIRMED or REJECTED:CARD_DECLINED, else OK)."""

    method: str
    send: Callable[[float], Awaitable[str]]
    token: str = ""
    """PlaceOrder's payment token, so outcomes can be told apart by card."""


@dataclass(frozen=True)
class SignUp:
    """An account the load created, not signed in yet."""

    email: str
    password: str


@dataclass
class Shopper:
    """A signed-in account the load created: its session (renewed `RENEW_MARGIN` seconds
    before its access token expires, by the event loop's clock) and a few of its orders (the
    latest first to go)."""

    account: SignUp
    user_id: str
    access_token: str
    refresh_token: str
    renew_at: float
    renewing: bool = False
    orders: deque[str] = field(default_factory=lambda: deque(maxlen=ORDERS_KEPT))
    confirmed: deque[str] = field(default_factory=lambda: deque(maxlen=ORDERS_KEPT))

    @property
    def metadata(self) -> Metadata:
        """The request metadata of a call made as this shopper."""
        return bearer_metadata(self.access_token)

    def signed_in(self, session: users_pb2.Session) -> None:
        self.access_token = session.access_token
        self.refresh_token = session.refresh_token
        self.renew_at = renew_at(session)

    def due_for_renewal(self) -> bool:
        return not self.renewing and asyncio.get_running_loop().time() >= self.renew_at


def renew_at(session: users_pb2.Session) -> float:
    """When, on the event loop's clock, to renew `session`'s access token: `RENEW_MARGIN`
    seconds before its expiry (a wall-clock time, from the server)."""
    left = session.access_token_expire_time.ToMicroseconds() / 1e6 - time.time()
    return asyncio.get_running_loop().time() + left - RENEW_MARGIN


def order_outcome(order: orders_pb2.Order) -> str:
    """CONFIRMED, PENDING, CANCELLED, or REJECTED:<rejection reason>."""
    status = orders_pb2.OrderStatus.Name(order.status).removeprefix("ORDER_STATUS_")
    return f"{status}:{order.rejection_reason}" if order.rejection_reason else status


class Shoppers:
    """The mix: plans the next call from a seeded random source and what shoppers know, and
    learns from the answers (new accounts, SKUs and their stock, confirmed orders)."""

    def __init__(self, stubs: Stubs, rng: random.Random, run_id: str) -> None:
        self._stubs = stubs
        self._rng = rng
        # In every email, request id and idempotency key: two runs never collide in the shop.
        self._run_id = run_id
        self._serial = 0
        self._stock: dict[str, int] = {}
        self._page_token = ""
        self._signed_up: deque[SignUp] = deque(maxlen=POOL_SIZE)
        self._pool: deque[Shopper] = deque(maxlen=POOL_SIZE)
        self._methods = [method for method, _ in MIX]
        self._weights = [weight for _, weight in MIX]
        self._tokens = [token for token, _ in PAYMENT_TOKENS]
        self._token_weights = [weight for _, weight in PAYMENT_TOKENS]

    def next_call(self) -> Call:
        """The next call of the mix (every random draw of the run happens here, in order)."""
        intent = self._rng.choices(self._methods, self._weights)[0]
        if intent == CANCEL_ORDER:
            with_confirmed = [s for s in self._pool if s.confirmed]
            if with_confirmed:
                return self._as(self._rng.choice(with_confirmed), self._cancel_order)
            intent = PLACE_ORDER
        if intent == GET_ORDER:
            with_orders = [s for s in self._pool if s.orders]
            if with_orders:
                return self._as(self._rng.choice(with_orders), self._get_order)
            intent = PLACE_ORDER
        if intent == RENEW_TOKEN:
            renewable = [s for s in self._pool if not s.renewing]
            if renewable:
                return self._renew_token(self._rng.choice(renewable))
            intent = SIGN_IN
        if intent == SIGN_IN and not self._signed_up and not self._pool:
            intent = CREATE_USER
        if intent in (PLACE_ORDER, LIST_ORDERS) and not self._pool:
            intent = SIGN_IN if self._signed_up else CREATE_USER
        if intent in (PLACE_ORDER, GET_PRODUCT) and not self._stock:
            intent = LIST_PRODUCTS
        if intent == PLACE_ORDER:
            return self._as(self._shopper(), self._place_order)
        if intent == LIST_ORDERS:
            return self._as(self._shopper(), self._list_orders)
        plan = {
            LIST_PRODUCTS: self._list_products,
            GET_PRODUCT: self._get_product,
            CREATE_USER: self._create_user,
            SIGN_IN: self._sign_in,
        }[intent]
        return plan()

    def _as(self, shopper: Shopper, plan: Callable[[Shopper], Call]) -> Call:
        """`plan(shopper)`, unless its access token is about to expire: then it renews it."""
        if shopper.due_for_renewal():
            return self._renew_token(shopper)
        return plan(shopper)

    def _next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def _shopper(self) -> Shopper:
        return self._rng.choice(self._pool)

    def _list_products(self) -> Call:
        request = inventory_pb2.ListProductsRequest(
            page_size=self._rng.randint(2, 4), page_token=self._page_token
        )

        async def send(deadline: float) -> str:
            response = await self._stubs.inventory.ListProducts(request, timeout=deadline)
            for product in response.products:
                self._stock[product.sku] = product.available_quantity
            # The last page leads back to the first: browsing goes round the catalog.
            self._page_token = response.next_page_token
            return "OK"

        return Call(LIST_PRODUCTS, send)

    def _get_product(self) -> Call:
        request = inventory_pb2.GetProductRequest(sku=self._rng.choice(sorted(self._stock)))

        async def send(deadline: float) -> str:
            response = await self._stubs.inventory.GetProduct(request, timeout=deadline)
            self._stock[response.product.sku] = response.product.available_quantity
            return "OK"

        return Call(GET_PRODUCT, send)

    def _create_user(self) -> Call:
        serial = self._next_serial()
        account = SignUp(
            email=f"shopper-{self._run_id}-{serial}@example.com",
            password=f"load {self._run_id} password {serial}",
        )
        request = users_pb2.CreateUserRequest(
            request_id=f"load-{self._run_id}-u{serial}",
            email=account.email,
            display_name=f"Shopper {serial}",
            password=account.password,
        )

        async def send(deadline: float) -> str:
            await self._stubs.users.CreateUser(request, timeout=deadline)
            self._signed_up.append(account)
            return "OK"

        return Call(CREATE_USER, send)

    def _sign_in(self) -> Call:
        # A new account first (taken now, so no other call signs it in too), else one of the
        # pool signs in again, as a returning shopper would.
        returning = None if self._signed_up else self._shopper()
        account = self._signed_up.popleft() if returning is None else returning.account
        request = users_pb2.SignInRequest(email=account.email, password=account.password)

        async def send(deadline: float) -> str:
            session = (await self._stubs.users.SignIn(request, timeout=deadline)).session
            if returning is not None:
                returning.signed_in(session)
            else:
                self._pool.append(
                    Shopper(
                        account,
                        session.user_id,
                        session.access_token,
                        session.refresh_token,
                        renew_at(session),
                    )
                )
            return "OK"

        return Call(SIGN_IN, send)

    def _renew_token(self, shopper: Shopper) -> Call:
        # One renewal at a time: a refresh token works once, and presenting it twice revokes
        # the whole session.
        shopper.renewing = True
        request = users_pb2.RenewTokenRequest(refresh_token=shopper.refresh_token)

        async def send(deadline: float) -> str:
            try:
                response = await self._stubs.users.RenewToken(request, timeout=deadline)
            finally:
                shopper.renewing = False
            shopper.signed_in(response.session)
            return "OK"

        return Call(RENEW_TOKEN, send)

    def _items(self) -> list[orders_pb2.OrderItem]:
        if self._rng.random() < LIMITED_SHARE:
            return [orders_pb2.OrderItem(sku=LIMITED_SKU, quantity=1)]
        skus = sorted(sku for sku in self._stock if sku != LIMITED_SKU) or sorted(self._stock)
        # Shoppers buy what is in stock: weighting by the stock last seen keeps repeated runs
        # on one mesh from selling out the small lines and turning checkouts into shortages.
        weights = [max(self._stock[sku], 0) + 1 for sku in skus]
        chosen = dict.fromkeys(self._rng.choices(skus, weights, k=self._rng.randint(1, 2)))
        return [orders_pb2.OrderItem(sku=sku, quantity=self._rng.randint(1, 2)) for sku in chosen]

    def _place_order(self, shopper: Shopper) -> Call:
        token = self._rng.choices(self._tokens, self._token_weights)[0]
        request = orders_pb2.PlaceOrderRequest(
            idempotency_key=f"load-{self._run_id}-o{self._next_serial()}",
            user_id=shopper.user_id,
            items=self._items(),
            payment_token=token,
        )

        async def send(deadline: float) -> str:
            response = await self._stubs.orders.PlaceOrder(
                request, timeout=deadline, metadata=shopper.metadata
            )
            order = response.order
            shopper.orders.append(order.order_id)
            if order.status == orders_pb2.ORDER_STATUS_CONFIRMED:
                shopper.confirmed.append(order.order_id)
            return order_outcome(order)

        return Call(PLACE_ORDER, send, token)

    def _get_order(self, shopper: Shopper) -> Call:
        request = orders_pb2.GetOrderRequest(order_id=self._rng.choice(shopper.orders))

        async def send(deadline: float) -> str:
            await self._stubs.orders.GetOrder(request, timeout=deadline, metadata=shopper.metadata)
            return "OK"

        return Call(GET_ORDER, send)

    def _list_orders(self, shopper: Shopper) -> Call:
        request = orders_pb2.ListOrdersRequest(user_id=shopper.user_id, page_size=10)

        async def send(deadline: float) -> str:
            await self._stubs.orders.ListOrders(
                request, timeout=deadline, metadata=shopper.metadata
            )
            return "OK"

        return Call(LIST_ORDERS, send)

    def _cancel_order(self, shopper: Shopper) -> Call:
        # Taken off the pool now: a second cancel of the same order is never planned, whatever
        # the answer to this one.
        order_id = shopper.confirmed.popleft()
        request = orders_pb2.CancelOrderRequest(order_id=order_id, reason="changed my mind")

        async def send(deadline: float) -> str:
            await self._stubs.orders.CancelOrder(
                request, timeout=deadline, metadata=shopper.metadata
            )
            return "OK"

        return Call(CANCEL_ORDER, send)
