"""An open-loop PlaceOrder generator: calls leave at a fixed rate whatever the earlier ones take
(a closed loop of workers slows down with the mesh and never overloads it), spread over a few
gRPC channels, each its own HTTP/2 connection (one connection would serialize every call on one
socket and one Envoy worker's read loop). Every call has a deadline and is recorded: when it was
due, when it left, how long it took, its status and ErrorInfo reason, the order it made."""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status

from scripts.account import Shopper
from scripts.bench.checkout import CHECKOUT_SKU, PAYMENT_TOKEN
from scripts.bench.machine_load import MachineLoad, Sample
from services.common.status import error_info
from shop.orders.v1 import orders_pb2, orders_pb2_grpc
from shopmesh.local.mesh import RunningMesh

CHANNELS = 4
CALL_DEADLINE = 5.0
"""Far above any admitted checkout's latency: a call still running then counts as failed."""
SEND_LAG_BOUND = 0.05
"""Calls leaving later than this after they were due (p99) arrive in bursts, not at the rate:
the generator could not keep up (on two shared cores, a few ms late is the norm)."""
OFFER_SHARE = 0.95
"""Below this share of the target rate actually sent, the generator was the bottleneck."""
OK = grpc.StatusCode.OK.name
REFUSED = grpc.StatusCode.RESOURCE_EXHAUSTED.name


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile of `values` (any order); NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(share * len(ordered))) - 1]


@dataclass(frozen=True)
class Call:
    due: float
    """Seconds after the run's start at which the call should have left."""
    sent: float
    latency_ms: float
    code: str
    """grpc.StatusCode name."""
    reason: str = ""
    """The ErrorInfo reason of a failed call ("" when it had none)."""
    retry_info: bool = False
    order_id: str = ""
    order_status: str = ""


@dataclass(frozen=True)
class Run:
    """One open-loop run at `rate` calls/s for `seconds`."""

    rate: float
    seconds: float
    calls: list[Call]
    wall: float
    """From the run's start to the last answer."""
    machine: MachineLoad | None = None
    """Who else used the machine meanwhile."""

    @property
    def admitted(self) -> list[Call]:
        return [call for call in self.calls if call.code == OK]

    @property
    def refused(self) -> list[Call]:
        return [call for call in self.calls if call.code == REFUSED]

    @property
    def failed(self) -> list[Call]:
        """Neither admitted nor refused: a deadline, an UNAVAILABLE... (the order may exist)."""
        return [call for call in self.calls if call.code not in (OK, REFUSED)]

    @property
    def admitted_share(self) -> float:
        return len(self.admitted) / len(self.calls) if self.calls else 0.0

    def admitted_p99(self) -> float:
        return percentile([call.latency_ms for call in self.admitted], 0.99)

    @property
    def offered_rate(self) -> float:
        """Calls sent per second, measured between the first and the last send."""
        if len(self.calls) < 2:
            return 0.0
        sends = [call.sent for call in self.calls]
        span = max(sends) - min(sends)
        return (len(self.calls) - 1) / span if span > 0 else math.inf

    def send_lag_ms(self, share: float) -> float:
        return percentile([(call.sent - call.due) * 1000 for call in self.calls], share)

    @property
    def generator_bound(self) -> bool:
        """Whether the generator itself fell behind its schedule (the offer is then less than
        the rate asked for, and the run does not show what the mesh does at that rate)."""
        late = self.send_lag_ms(0.99) > SEND_LAG_BOUND * 1000
        return late or self.offered_rate < OFFER_SHARE * self.rate

    def outcomes(self) -> Counter[str]:
        """Calls by outcome: the order status, or the code with its ErrorInfo reason."""
        return Counter(
            call.order_status if call.code == OK else f"{call.code} {call.reason or '(no reason)'}"
            for call in self.calls
        )


def _retry_info(error: aio.AioRpcError) -> bool:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    details = [] if status is None else status.details
    return any(detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for detail in details)


class Generator:
    """PlaceOrder as one shopper over CHANNELS connections to the gateway of `mesh`."""

    def __init__(
        self,
        stubs: list[orders_pb2_grpc.OrdersServiceAsyncStub],
        shopper: Shopper,
        mesh: RunningMesh,
    ) -> None:
        self._stubs = stubs
        self._shopper = shopper
        self._mesh = mesh

    async def _place(self, index: int, due: float, sent: float, clock: Callable[[], float]) -> Call:
        request = orders_pb2.PlaceOrderRequest(
            idempotency_key=f"overload-{uuid.uuid4().hex}",
            user_id=self._shopper.user_id,
            items=[orders_pb2.OrderItem(sku=CHECKOUT_SKU, quantity=1)],
            payment_token=PAYMENT_TOKEN,
        )
        stub = self._stubs[index % len(self._stubs)]
        try:
            response = await stub.PlaceOrder(
                request, timeout=CALL_DEADLINE, metadata=self._shopper.metadata
            )
        except aio.AioRpcError as error:
            info = error_info(error)
            return Call(
                due,
                sent,
                (clock() - sent) * 1000,
                error.code().name,
                info.reason if info is not None else "",
                _retry_info(error),
            )
        order = response.order
        status = orders_pb2.OrderStatus.Name(order.status)
        return Call(due, sent, (clock() - sent) * 1000, OK, "", False, order.order_id, status)

    async def run(self, rate: float, seconds: float) -> Run:
        """Call i is due at i / rate seconds; all `rate * seconds` calls, then every answer."""
        loop = asyncio.get_running_loop()
        before, started = Sample.now(self._mesh), loop.time()

        def clock() -> float:
            return loop.time() - started

        calls = []
        for index in range(max(1, round(rate * seconds))):
            due = index / rate
            # Pacing an open-loop offer, not synchronization: a late call leaves at once.
            await asyncio.sleep(max(0.0, due - clock()))
            calls.append(asyncio.create_task(self._place(index, due, clock(), clock)))
        done = await asyncio.gather(*calls)
        wall = clock()
        machine = MachineLoad.between(before, Sample.now(self._mesh), wall)
        return Run(rate, seconds, sorted(done, key=lambda call: call.due), wall, machine)


@contextlib.asynccontextmanager
async def generator(mesh: RunningMesh, shopper: Shopper) -> AsyncIterator[Generator]:
    """A Generator whose channels are open for the block. Each channel gets its own subchannel
    pool: gRPC would otherwise share one connection between channels to the same target."""
    channels = [
        aio.insecure_channel(mesh.gateway_address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS)
    ]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), CALL_DEADLINE)
        yield Generator([orders_pb2_grpc.OrdersServiceStub(c) for c in channels], shopper, mesh)
    finally:
        for channel in channels:
            await channel.close()
