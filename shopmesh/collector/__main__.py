"""`python -m shopmesh.collector SOCKET DATABASE`: receive OTLP/gRPC spans on a Unix socket
(or host:port) and keep the last traces in SQLite, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click
from grpc import aio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from shopmesh.collector.spans import records
from shopmesh.collector.store import DEFAULT_MAX_TRACES, SpanStore

# Envoy batches spans and the SDK's exporter too: a request can carry thousands of them.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """OTLP's TraceService: every exported span goes to the store."""

    def __init__(self, store: SpanStore) -> None:
        self._store = store

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: aio.ServicerContext[
            trace_service_pb2.ExportTraceServiceRequest,
            trace_service_pb2.ExportTraceServiceResponse,
        ],
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        spans = list(records(request))
        if spans:
            await self._store.add(spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def serve(address: str, database: Path, max_traces: int) -> None:
    """Serve until SIGTERM or SIGINT, then finish the exports under way and close the store."""
    store = await SpanStore.open(database, max_traces)
    server = aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceReceiver(store), server)
    server.add_insecure_port(address)
    await server.start()
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    click.echo(f"collector: receiving OTLP on {address}, keeping {max_traces} traces", err=True)
    await stopped.wait()
    await server.stop(2.0)
    await store.close()


@click.command()
@click.argument("address")
@click.argument("database", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--max-traces", type=click.IntRange(1), default=DEFAULT_MAX_TRACES, show_default=True)
def main(address: str, database: Path, max_traces: int) -> None:
    """Receive spans on ADDRESS (unix:/path or host:port) into DATABASE."""
    if address.startswith("unix:"):
        # A socket left by a collector that was killed would make the bind fail.
        Path(address.removeprefix("unix:")).unlink(missing_ok=True)
    asyncio.run(serve(address, database, max_traces))


if __name__ == "__main__":
    main()
