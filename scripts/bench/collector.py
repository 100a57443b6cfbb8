"""`python -m scripts.bench.collector`: the CPU the mesh's trace collector spends per span,
offline (no mesh, no Envoy), on export requests shaped like a checkout's.

A checkout through the gateway is one trace of 35 spans: Envoy's (the gateway's edge span,
each sidecar's inbound and egress spans and every upstream attempt, all attributes strings)
and the Python SDK's (a server span per call served, the saga's steps and the outbox relay,
attributes of their own; a call made is orders' sidecar's egress span, under the step). They
reach the collector the way the mesh sends them: each Envoy exports every `ENVOY_FLUSH_SPANS`
spans (Envoy's `tracing.opentelemetry.min_flush_spans`), each app every flush interval (its
BatchSpanProcessor: `--rate` checkouts' worth of spans every half second).

Two measurements, on the same requests:
1. in process: the collector's own steps, one request at a time (parse the request's bytes,
   `records()`, `SpanStore.add`): CPU time of the process (the database's writer thread
   included) per span, and how much of it decoding (parse and `records()`) took;
2. end to end: `python -m shopmesh.collector` started on a Unix socket, the requests sent by
   `--senders` concurrent gRPC clients, and the CPU time the collector process used per span
   (/proc/<pid>/stat): what `make bench BENCH_ARGS=--tracing` measures in the mesh, gRPC
   included.

`--envoy-flush-spans N` models Envoys that export every N spans instead; more than an Envoy
gathers in a flush interval (e.g. 100000) makes each export once every half second.

Usage: python -m scripts.bench.collector [--checkouts 1200] [--max-traces 1000]
       [--envoy-flush-spans 5] [--senders 8] [--in-process-only]
About 20 seconds at the defaults on 2 cores, most of it the end-to-end part.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from grpc import aio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from scripts.bench.settings import ROOT
from scripts.bench.tracing import cpu_seconds
from shopmesh.collector.spans import records
from shopmesh.collector.store import SpanStore

ENVOY_FLUSH_SPANS = 5
"""Envoy's OpenTelemetry tracer sends its spans once it holds this many (its default)."""
FLUSH_SECONDS = 0.5
"""The mesh's flush interval of the apps' exporters (shopmesh.envoy.tracing)."""
SPANS_PER_CHECKOUT = 35
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
START_SECONDS = 30.0
CALL_SECONDS = 30.0
MS = 1_000_000
SERVER, CLIENT, INTERNAL = 2, 3, 1
USER_AGENT = "grpc-python-asyncio/1.85.1 grpc-c/58.0.0 (linux; chttp2)"
SDK_RESOURCE = {
    "telemetry.sdk.language": "python",
    "telemetry.sdk.name": "opentelemetry",
    "telemetry.sdk.version": "1.40.0",
}
# The calls orders makes in a checkout: (saga step or None, callee service, method).
CALLS = (
    ("VALIDATE_USER", "users", "shop.users.v1.UsersService/GetUser"),
    ("RESERVE_AND_PRICE", "inventory", "shop.inventory.v1.InventoryService/ReserveStock"),
    ("CHARGE_PAYMENT", "payments", "shop.payments.v1.PaymentsService/Charge"),
    ("COMMIT_RESERVATION", "inventory", "shop.inventory.v1.InventoryService/CommitReservation"),
    (None, "notifications", "shop.notifications.v1.NotificationsService/PublishOrderEvents"),
)


@dataclass
class Exporter:
    """One process that sends spans: an Envoy (`envoy`) or an app's SDK."""

    service: str
    pod: str
    envoy: bool
    pending: list[trace_pb2.Span] = field(default_factory=list)

    def request(self) -> bytes:
        resource: dict[str, object] = {"service.name": self.service}
        if not self.envoy:
            resource |= SDK_RESOURCE | {"service.instance.id": self.pod}
        request = trace_service_pb2.ExportTraceServiceRequest()
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.extend(_attributes(resource))
        scope_spans = resource_spans.scope_spans.add()
        scope_spans.scope.name = "envoy" if self.envoy else "opentelemetry.instrumentation.grpc"
        scope_spans.spans.extend(self.pending)
        self.pending.clear()
        return request.SerializeToString()


def _attributes(values: dict[str, object]) -> list[common_pb2.KeyValue]:
    pairs = []
    for key, value in values.items():
        any_value = (
            common_pb2.AnyValue(int_value=value)
            if isinstance(value, int)
            else common_pb2.AnyValue(string_value=str(value))
        )
        pairs.append(common_pb2.KeyValue(key=key, value=any_value))
    return pairs


class Checkouts:
    """Checkout traces, span by span, handed to the exporter that would send each span."""

    def __init__(self, envoy_flush_spans: int = ENVOY_FLUSH_SPANS, seed: int = 11) -> None:
        self._envoy_flush_spans = envoy_flush_spans
        self._random = random.Random(seed)
        self.exporters: dict[tuple[str, bool], Exporter] = {}

    def exporter(self, service: str, envoy: bool) -> Exporter:
        key = (service, envoy)
        if key not in self.exporters:
            name = f"{service}-sidecar" if envoy and service != "gateway" else service
            pod = "gateway" if service == "gateway" else f"{service}-0"
            self.exporters[key] = Exporter(name, pod, envoy)
        return self.exporters[key]

    def _span(
        self,
        trace_id: bytes,
        parent: bytes,
        name: str,
        kind: int,
        start: int,
        attributes: dict[str, object],
    ) -> trace_pb2.Span:
        return trace_pb2.Span(
            trace_id=trace_id,
            span_id=self._random.randbytes(8),
            parent_span_id=parent,
            name=name,
            kind=kind,  # type: ignore[arg-type]
            start_time_unix_nano=start,
            end_time_unix_nano=start + self._random.randrange(MS, 5 * MS),
            attributes=_attributes(attributes),
        )

    def _envoy_hop(
        self, trace_id: bytes, parent: bytes, pod: str, role: str, path: str, cluster: str, at: int
    ) -> bytes:
        """An Envoy's span of a call and of its attempt at `cluster`; returns the attempt's id."""
        request_id = f"{trace_id.hex()[:8]}-81a7-9c82-8c03-64f9e2b0ee7c"
        served = self._span(
            trace_id,
            parent,
            f"{role} /{path}",
            SERVER,
            at,
            {
                "component": "proxy",
                "downstream_cluster": "-",
                "grpc.authority": "tmp%2Fmesh%2Frun%2Forders-0%2Fegress.sock",
                "grpc.content_type": "application/grpc",
                "grpc.message": "",
                "grpc.path": f"/{path}",
                "grpc.status_code": "0",
                "grpc.timeout": "5000m",
                "guid:x-request-id": request_id,
                "http.method": "POST",
                "http.protocol": "HTTP/2",
                "http.status_code": "200",
                "http.url": f"http://tmp%2Fmesh%2Frun%2Forders-0%2Fegress.sock/{path}",
                "node_id": pod,
                "peer.address": "127.0.0.1",
                "request_size": "59",
                "response_flags": "-",
                "response_size": "91",
                "upstream_cluster": cluster,
                "upstream_cluster.name": cluster,
                "user_agent": USER_AGENT,
                "zone": "",
            },
        )
        address = f"/tmp/mesh/run/{pod}/app.sock" if cluster == "local_app" else "127.0.0.1:44967"
        attempt = self._span(
            trace_id,
            served.span_id,
            f"attempt {cluster}",
            CLIENT,
            at + 1,
            {
                "component": "proxy",
                "grpc.message": "",
                "grpc.status_code": "0",
                "http.protocol": "HTTP/2",
                "http.status_code": "200",
                "peer.address": address,
                "response_flags": "-",
                "upstream_address": address,
                "upstream_cluster": cluster,
                "upstream_cluster.name": cluster,
            },
        )
        service = pod.rsplit("-", 1)[0]
        self.exporter(service, envoy=True).pending.extend([served, attempt])
        return attempt.span_id

    def _served(self, trace_id: bytes, parent: bytes, service: str, path: str, at: int) -> bytes:
        """The app's server span of a call; returns its id."""
        name, _, method = path.rpartition("/")
        span = self._span(
            trace_id,
            parent,
            f"/{path}",
            SERVER,
            at,
            {
                "rpc.grpc.status_code": 0,
                "rpc.method": method,
                "rpc.service": name,
                "rpc.system": "grpc",
                "rpc.user_agent": USER_AGENT,
            },
        )
        self.exporter(service, envoy=False).pending.append(span)
        return span.span_id

    def add(self, at: int) -> None:
        """One checkout's SPANS_PER_CHECKOUT spans, starting at `at` (Unix nanoseconds)."""
        trace_id = self._random.randbytes(16)
        order_id = f"ord_{trace_id.hex()}"
        place = "shop.orders.v1.OrdersService/PlaceOrder"
        edge = self._envoy_hop(trace_id, b"", "gateway", "edge", place, "svc_orders", at)
        inbound = self._envoy_hop(trace_id, edge, "orders-0", "inbound", place, "local_app", at)
        served = self._served(trace_id, inbound, "orders", place, at)
        orders = self.exporter("orders", envoy=False)
        for step, callee, path in CALLS:
            at += 2 * MS
            if step is None:
                work = self._span(
                    trace_id,
                    b"",
                    "outbox deliver",
                    INTERNAL,
                    at,
                    {
                        "event.id": f"{order_id}:confirmed",
                        "order.id": order_id,
                        "outbox.batch_first_event": f"{order_id}:confirmed",
                        "outbox.batch_size": "2",
                    },
                )
            else:
                work = self._span(
                    trace_id,
                    served,
                    f"saga {step}",
                    INTERNAL,
                    at,
                    {"order.id": order_id, "saga.step": step},
                )
            orders.pending.append(work)
            cluster = f"svc_{callee}"
            egress = self._envoy_hop(
                trace_id, work.span_id, "orders-0", "egress", path, cluster, at
            )
            pod = f"{callee}-0"
            inbound = self._envoy_hop(trace_id, egress, pod, "inbound", path, "local_app", at)
            self._served(trace_id, inbound, callee, path, at)

    def ready(self, flush: bool) -> Iterator[bytes]:
        """The requests the exporters send now: every Envoy holding its flush threshold of
        spans (every app and Envoy holding any when `flush`, their flush interval having
        passed)."""
        limit = self._envoy_flush_spans
        for exporter in self.exporters.values():
            if exporter.envoy and not flush:
                while len(exporter.pending) >= limit:
                    rest = exporter.pending[limit:]
                    del exporter.pending[limit:]
                    yield exporter.request()
                    exporter.pending.extend(rest)
            elif flush and exporter.pending:
                yield exporter.request()


def export_requests(
    checkouts: int, rate: float, envoy_flush_spans: int = ENVOY_FLUSH_SPANS
) -> list[bytes]:
    """The serialized ExportTraceServiceRequests of `checkouts` checkouts at `rate` a second,
    in the order the mesh's exporters would send them."""
    traces = Checkouts(envoy_flush_spans)
    per_flush = max(1, round(rate * FLUSH_SECONDS))
    requests: list[bytes] = []
    start = time.time_ns()
    for number in range(checkouts):
        traces.add(start + int(number * 1e9 / rate))
        requests.extend(traces.ready(flush=(number + 1) % per_flush == 0))
    requests.extend(traces.ready(flush=True))
    return requests


def span_count(requests: list[bytes]) -> int:
    return sum(
        len(scope.spans)
        for data in requests
        for resource in trace_service_pb2.ExportTraceServiceRequest.FromString(data).resource_spans
        for scope in resource.scope_spans
    )


@dataclass(frozen=True)
class InProcess:
    """CPU seconds of the process, and of decoding alone (parse and `records()`)."""

    total: float
    decoding: float


async def in_process(requests: list[bytes], database: Path, max_traces: int) -> InProcess:
    """The CPU this process spends parsing, converting and storing every request."""
    store = await SpanStore.open(database, max_traces)
    try:
        decoding = 0.0
        started = time.process_time()
        for data in requests:
            decoded = time.thread_time()
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(data)
            spans = list(records(request))
            decoding += time.thread_time() - decoded
            await store.add(spans)
        return InProcess(time.process_time() - started, decoding)
    finally:
        await store.close()


async def end_to_end(
    requests: list[bytes], directory: Path, max_traces: int, senders: int
) -> float:
    """CPU seconds the collector process spends receiving and storing every request but the
    first (which warms up its imports and database)."""
    socket = directory / "collector.sock"
    collector = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "shopmesh.collector", f"unix:{socket}"),
        *(str(directory / "e2e.db"), "--max-traces", str(max_traces)),
        cwd=ROOT,
    )
    try:
        async with aio.insecure_channel(f"unix:{socket}") as channel:
            await asyncio.wait_for(channel.channel_ready(), START_SECONDS)
            # Requests go as the bytes they are: this process does not encode them again.
            export: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(EXPORT)
            await export(requests[0], timeout=CALL_SECONDS)
            before = cpu_seconds(collector.pid)
            queued = iter(requests[1:])

            async def send() -> None:
                for data in queued:
                    await export(data, timeout=CALL_SECONDS)

            await asyncio.gather(*(send() for _ in range(senders)))
            return cpu_seconds(collector.pid) - before
    finally:
        collector.terminate()
        await asyncio.wait_for(collector.wait(), START_SECONDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkouts", type=int, default=1200)
    parser.add_argument("--rate", type=float, default=70.0, help="checkouts a second (batching)")
    parser.add_argument("--max-traces", type=int, default=1000)
    parser.add_argument(
        "--envoy-flush-spans",
        type=int,
        default=ENVOY_FLUSH_SPANS,
        help="spans an Envoy holds before it exports them (tracing.opentelemetry.min_flush_spans)",
    )
    parser.add_argument("--senders", type=int, default=8, help="concurrent exports, end to end")
    parser.add_argument("--in-process-only", action="store_true")
    args = parser.parse_args()
    requests = export_requests(args.checkouts, args.rate, args.envoy_flush_spans)
    spans = span_count(requests)
    print(
        f"{args.checkouts} checkouts: {len(requests)} export requests, {spans} spans "
        f"({spans / len(requests):.1f} a request), max_traces {args.max_traces}"
    )
    with tempfile.TemporaryDirectory(prefix="smcol-") as work:
        directory = Path(work)
        used = asyncio.run(in_process(requests, directory / "in.db", args.max_traces))
        print(
            f"in process: {used.total * 1e6 / spans:.1f} µs CPU a span, of which decoding "
            f"(parse, records) {used.decoding * 1e6 / spans:.1f} µs, storing (add, its "
            f"writer thread) {(used.total - used.decoding) * 1e6 / spans:.1f} µs"
        )
        if not args.in_process_only:
            collector = asyncio.run(end_to_end(requests, directory, args.max_traces, args.senders))
            print(
                f"end to end: {collector * 1e6 / spans:.1f} µs CPU a span in the collector "
                f"process ({collector * 1e3 * SPANS_PER_CHECKOUT / spans:.2f} ms a checkout), "
                f"{args.senders} senders"
            )


if __name__ == "__main__":
    main()
