"""`shopmesh load` without a network: the open-loop schedule, the concurrency cap, the bounds,
the bookkeeping and the shopper mix, against a fake shop with the stubs' methods.

Each run goes on an event loop whose clock jumps to its next timer instead of waiting for it:
a fake call "takes" 2.5 s of the loop's time and no real time, and every timing is exact."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import selectors
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from click.testing import CliRunner
from grpc import aio

from shop.inventory.v1 import inventory_pb2
from shop.orders.v1 import orders_pb2
from shop.users.v1 import users_pb2
from shopmesh.cli import main
from shopmesh.envoy.signin import bearer_metadata
from shopmesh.gatewayclient import GatewayTarget
from shopmesh.observe.load import LoadRun, LoadSettings, LoadSummary, quantile
from shopmesh.observe.shoppers import LIMITED_SKU, MIX, PAYMENT_TOKENS, Stubs

GATEWAY = GatewayTarget("gateway.test:8080")
CATALOG = {"BOTTLE-01": 75, "CAP-01": 40, "MUG-01": 100, LIMITED_SKU: 1, "STICKER-01": 1000}
DECLINED = {"tok_chargeDeclined", "tok_insufficientFunds"}
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Metadata = Sequence[tuple[str, str]] | None


class _JumpingSelector(selectors.SelectSelector):
    """Never blocks: a wait for a timer moves the loop's clock to it instead."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise AssertionError("the loop would wait forever: nothing is scheduled")
        self.now += max(timeout, 0.0)
        return super().select(0)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock that starts at 0 (no sockets: nothing would wake it)."""

    def __init__(self) -> None:
        self._jumping = _JumpingSelector()
        super().__init__(self._jumping)

    def time(self) -> float:
        return self._jumping.now


def now() -> float:
    return asyncio.get_running_loop().time()


class FakeShop:
    """The gateway's RPCs the mix calls, as the stubs have them (a call returns an awaitable),
    answering like the shop would after `latency(method)` seconds (unknown users, orders not
    confirmed, a sold-out poster and declined cards included), DEADLINE_EXCEEDED past the
    call's timeout, or the status `fail(method)` gives. It logs every call as it starts.

    It signs accounts in as the gateway and users would: orders' methods need the access token
    of a session SignIn or RenewToken issued, unexpired (`token_lifetime` seconds of the loop's
    clock), and answer only for its user's own orders; a refresh token works once."""

    def __init__(
        self,
        latency: Callable[[str], float] = lambda method: 0.001,
        fail: Callable[[str], grpc.StatusCode | None] = lambda method: None,
        token_lifetime: float = 900.0,
    ) -> None:
        self.latency = latency
        self.fail = fail
        self.token_lifetime = token_lifetime
        self.accounts: dict[str, tuple[str, str]] = {}
        """email -> (password, user id)"""
        self.access: dict[str, tuple[str, float]] = {}
        """access token -> (user id, when it expires on the loop's clock)"""
        self.refresh: dict[str, str] = {}
        """unused refresh token -> user id"""
        self.owners: dict[str, str] = {}
        """order id -> user id"""
        self.calls: list[tuple[float, str, Any]] = []
        self.deadlines: list[float | None] = []
        self.on_call: Callable[[int], None] = lambda count: None
        self.in_flight = 0
        self.most_in_flight = 0
        self.poster_sold = False
        self.users: set[str] = set()
        self.emails: set[str] = set()
        self.orders: dict[str, int] = {}

    @staticmethod
    def refuse(code: grpc.StatusCode) -> aio.AioRpcError:
        return aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), details="fake")

    async def _call(
        self, method: str, request: Req, deadline: float | None, answer: Callable[[Req], Resp]
    ) -> Resp:
        self.calls.append((now(), method, request))
        self.deadlines.append(deadline)
        self.on_call(len(self.calls))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            latency = self.latency(method)
            if deadline is not None and latency > deadline:
                await asyncio.sleep(deadline)
                raise self.refuse(grpc.StatusCode.DEADLINE_EXCEEDED)
            await asyncio.sleep(latency)
        finally:
            self.in_flight -= 1
        code = self.fail(method)
        if code is not None:
            raise self.refuse(code)
        return answer(request)

    def ListProducts(
        self, request: inventory_pb2.ListProductsRequest, *, timeout: float | None = None
    ) -> Awaitable[inventory_pb2.ListProductsResponse]:
        return self._call("inventory.ListProducts", request, timeout, self._products)

    def GetProduct(
        self, request: inventory_pb2.GetProductRequest, *, timeout: float | None = None
    ) -> Awaitable[inventory_pb2.GetProductResponse]:
        return self._call("inventory.GetProduct", request, timeout, self._product)

    def CreateUser(
        self, request: users_pb2.CreateUserRequest, *, timeout: float | None = None
    ) -> Awaitable[users_pb2.CreateUserResponse]:
        return self._call("users.CreateUser", request, timeout, self._create_user)

    def SignIn(
        self, request: users_pb2.SignInRequest, *, timeout: float | None = None
    ) -> Awaitable[users_pb2.SignInResponse]:
        return self._call("users.SignIn", request, timeout, self._sign_in)

    def RenewToken(
        self, request: users_pb2.RenewTokenRequest, *, timeout: float | None = None
    ) -> Awaitable[users_pb2.RenewTokenResponse]:
        return self._call("users.RenewToken", request, timeout, self._renew_token)

    def PlaceOrder(
        self,
        request: orders_pb2.PlaceOrderRequest,
        *,
        timeout: float | None = None,
        metadata: Metadata = None,
    ) -> Awaitable[orders_pb2.PlaceOrderResponse]:
        return self._call(
            "orders.PlaceOrder",
            request,
            timeout,
            lambda r: self._place_order(r, self._caller(metadata, r.user_id)),
        )

    def GetOrder(
        self,
        request: orders_pb2.GetOrderRequest,
        *,
        timeout: float | None = None,
        metadata: Metadata = None,
    ) -> Awaitable[orders_pb2.GetOrderResponse]:
        return self._call(
            "orders.GetOrder", request, timeout, lambda r: self._get_order(r, metadata)
        )

    def ListOrders(
        self,
        request: orders_pb2.ListOrdersRequest,
        *,
        timeout: float | None = None,
        metadata: Metadata = None,
    ) -> Awaitable[orders_pb2.ListOrdersResponse]:
        def answer(request: orders_pb2.ListOrdersRequest) -> orders_pb2.ListOrdersResponse:
            self._caller(metadata, request.user_id)
            return orders_pb2.ListOrdersResponse()

        return self._call("orders.ListOrders", request, timeout, answer)

    def CancelOrder(
        self,
        request: orders_pb2.CancelOrderRequest,
        *,
        timeout: float | None = None,
        metadata: Metadata = None,
    ) -> Awaitable[orders_pb2.CancelOrderResponse]:
        return self._call(
            "orders.CancelOrder", request, timeout, lambda r: self._cancel_order(r, metadata)
        )

    def _caller(self, metadata: Metadata, user_id: str | None = None) -> str:
        """The signed-in caller of `metadata` (UNAUTHENTICATED without a valid token), who
        must be `user_id` if one is given (PERMISSION_DENIED)."""
        tokens = [
            token
            for token, (_, expires) in self.access.items()
            if tuple(metadata or ()) == bearer_metadata(token) and now() < expires
        ]
        if not tokens:
            raise self.refuse(grpc.StatusCode.UNAUTHENTICATED)
        caller = self.access[tokens[0]][0]
        if user_id is not None and user_id != caller:
            raise self.refuse(grpc.StatusCode.PERMISSION_DENIED)
        return caller

    def _session(self, user_id: str) -> users_pb2.Session:
        serial = len(self.access)
        access, refresh = f"access-{serial}", f"refresh-{serial}"
        self.access[access] = (user_id, now() + self.token_lifetime)
        self.refresh[refresh] = user_id
        session = users_pb2.Session(access_token=access, refresh_token=refresh, user_id=user_id)
        session.access_token_expire_time.FromMicroseconds(
            int((time.time() + self.token_lifetime) * 1e6)
        )
        return session

    def _sign_in(self, request: users_pb2.SignInRequest) -> users_pb2.SignInResponse:
        password, user_id = self.accounts.get(request.email, ("", ""))
        if not password or password != request.password:
            raise self.refuse(grpc.StatusCode.UNAUTHENTICATED)
        return users_pb2.SignInResponse(session=self._session(user_id))

    def _renew_token(self, request: users_pb2.RenewTokenRequest) -> users_pb2.RenewTokenResponse:
        user_id = self.refresh.pop(request.refresh_token, "")
        if not user_id:
            raise self.refuse(grpc.StatusCode.UNAUTHENTICATED)
        return users_pb2.RenewTokenResponse(session=self._session(user_id))

    def _products(
        self, request: inventory_pb2.ListProductsRequest
    ) -> inventory_pb2.ListProductsResponse:
        start = int(request.page_token or 0)
        skus = sorted(CATALOG)[start : start + request.page_size]
        more = start + request.page_size < len(CATALOG)
        return inventory_pb2.ListProductsResponse(
            products=[inventory_pb2.Product(sku=s, available_quantity=CATALOG[s]) for s in skus],
            next_page_token=str(start + request.page_size) if more else "",
        )

    def _product(
        self, request: inventory_pb2.GetProductRequest
    ) -> inventory_pb2.GetProductResponse:
        product = inventory_pb2.Product(sku=request.sku, available_quantity=CATALOG[request.sku])
        return inventory_pb2.GetProductResponse(product=product)

    def _create_user(self, request: users_pb2.CreateUserRequest) -> users_pb2.CreateUserResponse:
        if request.email in self.emails:
            raise self.refuse(grpc.StatusCode.ALREADY_EXISTS)
        self.emails.add(request.email)
        user = users_pb2.User(user_id=f"usr_{request.request_id}", email=request.email)
        self.users.add(user.user_id)
        self.accounts[request.email] = (request.password, user.user_id)
        return users_pb2.CreateUserResponse(user=user)

    def _place_order(
        self, request: orders_pb2.PlaceOrderRequest, caller: str
    ) -> orders_pb2.PlaceOrderResponse:
        order = orders_pb2.Order(order_id=f"ord_{request.idempotency_key}")
        self.owners[order.order_id] = caller
        poster = any(item.sku == LIMITED_SKU for item in request.items)
        if request.user_id not in self.users:
            order.rejection_reason = "USER_NOT_FOUND"
        elif poster and self.poster_sold:
            order.rejection_reason = "INSUFFICIENT_STOCK"
        elif request.payment_token in DECLINED:
            order.rejection_reason = "CARD_DECLINED"
        else:
            self.poster_sold |= poster
        order.status = (
            orders_pb2.ORDER_STATUS_REJECTED
            if order.rejection_reason
            else orders_pb2.ORDER_STATUS_CONFIRMED
        )
        self.orders[order.order_id] = order.status
        return orders_pb2.PlaceOrderResponse(order=order)

    def _get_order(
        self, request: orders_pb2.GetOrderRequest, metadata: Metadata
    ) -> orders_pb2.GetOrderResponse:
        if self.owners.get(request.order_id) != self._caller(metadata):
            raise self.refuse(grpc.StatusCode.NOT_FOUND)
        return orders_pb2.GetOrderResponse(order=orders_pb2.Order(order_id=request.order_id))

    def _cancel_order(
        self, request: orders_pb2.CancelOrderRequest, metadata: Metadata
    ) -> orders_pb2.CancelOrderResponse:
        if self.owners.get(request.order_id) != self._caller(metadata):
            raise self.refuse(grpc.StatusCode.NOT_FOUND)
        if self.orders.get(request.order_id) != orders_pb2.ORDER_STATUS_CONFIRMED:
            raise self.refuse(grpc.StatusCode.FAILED_PRECONDITION)
        self.orders[request.order_id] = orders_pb2.ORDER_STATUS_CANCELLED
        return orders_pb2.CancelOrderResponse(order=orders_pb2.Order(order_id=request.order_id))

    def methods(self) -> list[str]:
        return [method for _, method, _ in self.calls]

    def starts(self) -> list[float]:
        return [started for started, _, _ in self.calls]


def load_run(shop: FakeShop, **settings: Any) -> LoadRun:
    return LoadRun(GATEWAY, LoadSettings(**settings), stubs=Stubs(shop, shop, shop))


def run_virtual(run: LoadRun) -> LoadSummary:
    """`run.run()` to its end on a virtual clock."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(run.run())


def by_method(summary: LoadSummary) -> dict[str, Any]:
    return {rpc.method: rpc for rpc in summary.rpcs}


def test_calls_start_on_schedule_however_slow_the_answers() -> None:
    shop = FakeShop(latency=lambda method: 2.5)  # slower than the whole run

    summary = run_virtual(load_run(shop, rate=10, duration=1.0, concurrency=100))

    assert shop.starts() == pytest.approx([i / 10 for i in range(10)])
    assert (summary.sent, summary.skipped, summary.completed) == (10, 0, 10)
    assert summary.stop_reason == "duration"
    assert summary.elapsed == pytest.approx(0.9 + 2.5)


def test_a_call_beyond_the_concurrency_is_skipped_not_queued() -> None:
    shop = FakeShop(latency=lambda method: 0.95)

    summary = run_virtual(load_run(shop, rate=10, duration=2.0, concurrency=5))

    # Five start; the five due while they run are skipped; once they answer, five more.
    assert shop.starts() == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 1.0, 1.1, 1.2, 1.3, 1.4])
    assert shop.most_in_flight == 5
    assert (summary.sent, summary.skipped, summary.completed) == (10, 10, 10)


def test_the_run_ends_at_max_requests() -> None:
    shop = FakeShop()

    summary = run_virtual(load_run(shop, rate=100, duration=10.0, max_requests=25))

    assert (summary.sent, summary.stop_reason) == (25, "max_requests")
    assert shop.starts()[-1] == pytest.approx(0.24)


def test_skipped_calls_count_towards_max_requests() -> None:
    shop = FakeShop(latency=lambda method: 10.0)

    summary = run_virtual(load_run(shop, rate=10, duration=60, concurrency=2, max_requests=6))

    assert (summary.sent, summary.skipped, summary.stop_reason) == (2, 4, "max_requests")


def test_the_run_ends_at_its_duration() -> None:
    shop = FakeShop()

    summary = run_virtual(load_run(shop, rate=10, duration=1.5))

    assert (summary.sent, summary.stop_reason, summary.state) == (15, "duration", "finished")
    assert summary.in_flight == 0


def test_stop_ends_the_run_and_cancels_the_calls_in_flight() -> None:
    shop = FakeShop(latency=lambda method: 10.0)
    run = load_run(shop, rate=10, duration=30)
    shop.on_call = lambda count: run.stop() if count == 5 else None

    summary = run_virtual(run)

    assert (summary.sent, summary.stop_reason, summary.in_flight) == (5, "stopped", 0)
    assert summary.elapsed == pytest.approx(0.4)
    assert sum(rpc.codes.get("CANCELLED", 0) for rpc in summary.rpcs) == 5
    assert all(rpc.p50_ms is None for rpc in summary.rpcs)


def test_every_call_has_the_deadline() -> None:
    shop = FakeShop(latency=lambda method: 60.0)

    summary = run_virtual(load_run(shop, rate=10, duration=1.0, deadline=2.0))

    assert shop.deadlines == [2.0] * 10
    assert {code for rpc in summary.rpcs for code in rpc.codes} == {"DEADLINE_EXCEEDED"}
    assert summary.elapsed == pytest.approx(0.9 + 2.0)


def test_quantiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]

    assert quantile(values, 0.50) == 50.0
    assert quantile(values, 0.99) == 99.0
    assert quantile([7.0], 0.99) == 7.0
    assert quantile([], 0.5) is None


def test_latencies_and_status_codes_are_kept_per_rpc() -> None:
    latencies = {"inventory.ListProducts": 0.010, "inventory.GetProduct": 0.030}
    shop = FakeShop(
        latency=lambda method: latencies.get(method, 0.020),
        fail=lambda method: grpc.StatusCode.NOT_FOUND if method == "orders.GetOrder" else None,
    )

    summary = run_virtual(load_run(shop, rate=20, duration=10.0, seed=5))

    rpcs = by_method(summary)
    assert [rpc.method for rpc in summary.rpcs] == [method for method, _ in MIX]
    assert rpcs["inventory.ListProducts"].p50_ms == pytest.approx(10.0)
    assert rpcs["inventory.GetProduct"].p99_ms == pytest.approx(30.0)
    assert rpcs["orders.PlaceOrder"].p50_ms == pytest.approx(20.0)
    get_order = rpcs["orders.GetOrder"]
    assert get_order.count > 0
    assert get_order.codes == {"NOT_FOUND": get_order.count}
    assert get_order.success_rate == 0.0
    assert rpcs["users.CreateUser"].codes == {"OK": rpcs["users.CreateUser"].count}
    assert summary.ok == summary.completed - get_order.count
    assert Counter(shop.methods()) == {rpc.method: rpc.count for rpc in summary.rpcs}


def test_checkout_outcomes_are_kept_per_payment_token() -> None:
    shop = FakeShop()

    summary = run_virtual(load_run(shop, rate=50, duration=10.0, seed=2))

    assert set(summary.checkouts) == {token for token, _ in PAYMENT_TOKENS}
    for token, outcomes in summary.checkouts.items():
        paid = "REJECTED:CARD_DECLINED" if token in DECLINED else "CONFIRMED"
        assert set(outcomes) <= {paid, "CONFIRMED", "REJECTED:INSUFFICIENT_STOCK"}
        assert outcomes[paid] > 0
    assert (
        sum(sum(o.values()) for o in summary.checkouts.values())
        == by_method(summary)["orders.PlaceOrder"].count
    )


def test_the_mix_is_a_function_of_the_seed() -> None:
    def mix(seed: int) -> list[str]:
        shop = FakeShop()
        run_virtual(load_run(shop, rate=50, duration=8.0, seed=seed))
        return shop.methods()

    first = mix(3)

    assert mix(3) == first
    assert mix(4) != first
    shares = Counter(first)
    assert set(shares) == {method for method, _ in MIX}
    assert shares["inventory.GetProduct"] > shares["users.CreateUser"]


def test_every_call_uses_only_what_the_shoppers_learnt() -> None:
    # The fake refuses what the shop would: orders of unknown users, unknown orders, cancels
    # of orders that are not confirmed (or already cancelled), a reused email.
    shop = FakeShop(latency=lambda method: 0.05)

    summary = run_virtual(load_run(shop, rate=50, duration=8.0, seed=8))

    assert {code for rpc in summary.rpcs for code in rpc.codes} == {"OK"}
    outcomes = {outcome for o in summary.checkouts.values() for outcome in o}
    assert outcomes == {"CONFIRMED", "REJECTED:CARD_DECLINED", "REJECTED:INSUFFICIENT_STOCK"}
    assert by_method(summary)["orders.CancelOrder"].count > 0
    tokens = Counter(r.payment_token for _, m, r in shop.calls if m == "orders.PlaceOrder")
    assert tokens["tok_visa"] > tokens["tok_mastercard"] > tokens["tok_chargeDeclined"]


def test_shoppers_sign_in_before_their_calls_and_send_their_own_token() -> None:
    shop = FakeShop(latency=lambda method: 0.05)

    summary = run_virtual(load_run(shop, rate=50, duration=8.0, seed=11))

    # The fake refuses orders' calls without a valid token of the right user.
    assert {code for rpc in summary.rpcs for code in rpc.codes} == {"OK"}
    methods = shop.methods()
    assert methods.index("users.SignIn") < methods.index("orders.PlaceOrder")
    assert by_method(summary)["users.RenewToken"].count > 0


def test_a_run_longer_than_a_token_lives_renews_the_tokens_in_time() -> None:
    # Tokens of 65 s, renewed 60 s before they expire, in a ten-minute run: shoppers stay in
    # the pool longer than that (without the renewals, UNAUTHENTICATED after 65 s).
    shop = FakeShop(latency=lambda method: 0.05, token_lifetime=65.0)

    summary = run_virtual(load_run(shop, rate=5, duration=600.0, seed=12))

    assert {code for rpc in summary.rpcs for code in rpc.codes} == {"OK"}
    late_orders = [started for started, method, _ in shop.calls if method == "orders.PlaceOrder"]
    assert max(late_orders) > 500


def test_a_snapshot_during_the_run_is_live_and_json_friendly() -> None:
    shop = FakeShop(latency=lambda method: 1.0)
    run = load_run(shop, rate=10, duration=2.0)
    taken: list[LoadSummary] = []
    shop.on_call = lambda count: taken.append(run.snapshot()) if count == 4 else None

    final = run_virtual(run)

    live = taken[0]
    assert (live.state, live.sent, live.in_flight, live.completed) == ("running", 4, 4, 0)
    assert live.elapsed == pytest.approx(0.3)
    assert json.loads(json.dumps(dataclasses.asdict(live)))["settings"]["rate"] == 10
    assert json.loads(json.dumps(dataclasses.asdict(final)))["sent"] == 20


def test_a_bug_in_the_load_is_raised_not_counted() -> None:
    shop = FakeShop(latency=lambda method: 0.01)

    def break_on_third(count: int) -> None:
        if count == 3:
            raise RuntimeError("bug")

    shop.on_call = break_on_third

    with pytest.raises(RuntimeError, match="bug"):
        run_virtual(load_run(shop, rate=10, duration=5.0))


def test_a_run_runs_once() -> None:
    run = load_run(FakeShop(), rate=10, duration=0.2)
    run_virtual(run)

    with pytest.raises(RuntimeError, match="runs once"):
        run_virtual(run)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": 20_000}, "rate"),
        ({"duration": 0}, "duration"),
        ({"concurrency": 0}, "concurrency"),
        ({"max_requests": 0}, "max_requests"),
        ({"deadline": -1}, "deadline"),
    ],
)
def test_settings_refuse_an_unbounded_or_empty_run(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        LoadSettings(**settings)


def test_without_a_mesh_the_command_says_how_to_start_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["load", "--state-dir", str(tmp_path)])

    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: no mesh is running in {tmp_path}: start one with `shopmesh up` or give --gateway"
    ]
