"""Server bootstrap shared by every service: grpc.aio server, health, reflection, interceptors,
background tasks and graceful shutdown on SIGTERM.

A service's `__main__` only describes itself as an `App` and calls `run`; tests call `start` to
get a `RunningService` they can stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import stat
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.config import ConfigError, ServiceConfig, load_config
from services.common.interceptors import (
    CallContextInterceptor,
    CallLogInterceptor,
    ErrorMappingInterceptor,
)
from services.common.logs import configure_logging
from services.common.telemetry import configure_tracing, server_interceptors

log = logging.getLogger(__name__)

# grpcio enables SO_REUSEPORT by default: a service started on a TCP port another process
# already serves would then silently share it, the kernel splitting connections between them.
SERVER_OPTIONS = [("grpc.so_reuseport", 0)]


@dataclass(frozen=True)
class Registration:
    """One gRPC service to serve: its full name (for health and reflection) and servicer."""

    service_name: str
    servicer: Any
    add_to_server: Callable[[Any, aio.Server], None]


@dataclass
class App:
    """What a service runs: its gRPC services, long-running background tasks (started once the
    server is up, cancelled on shutdown), shutdown hooks (run as soon as shutdown begins, e.g. to
    end long-lived streams so draining does not wait out the grace period) and clean-ups run
    last (close stores and channels)."""

    registrations: list[Registration]
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


@dataclass
class RunningService:
    """A started server. `address` is the bound address (with the real port for `host:0`)."""

    server: aio.Server
    health: health.aio.HealthServicer
    address: str
    app: App
    tasks: list[asyncio.Task[None]]

    async def stop(self, grace: float, drain: float = 0.0) -> None:
        """Graceful shutdown: report NOT_SERVING, keep serving for `drain` seconds so callers'
        health checks take this replica out of their load balancing (grpcio answers CANCELLED,
        which nobody retries, to calls arriving after `server.stop` begins), then refuse new
        calls, let in-flight ones finish for `grace` seconds, stop background work and release
        resources."""
        await self.health.enter_graceful_shutdown()
        for hook in self.app.on_shutdown:
            await hook()
        if drain > 0:
            # A fixed period, not a wait for an event: this replica cannot observe when every
            # caller's health checker has seen NOT_SERVING.
            await asyncio.sleep(drain)
        await self.server.stop(grace)
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for cleanup in reversed(self.app.cleanups):
            await cleanup()


def _prepare_unix_socket(address: str) -> None:
    """Create the socket's directory and remove a stale socket left by a crashed process."""
    path = Path(address.removeprefix("unix:"))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        if not stat.S_ISSOCK(path.stat().st_mode):
            raise ConfigError(f"{path} exists and is not a socket; refusing to replace it")
        path.unlink()


def _refuse_taken_port(address: str) -> None:
    """Raise ConfigError if TCP `address` cannot be bound, before grpc tries (whose own failure
    is a RuntimeError plus a C-level log line, not a message for the operator)."""
    host, _, port = address.rpartition(":")
    if int(port) == 0:
        return
    try:
        candidates = socket.getaddrinfo(
            host.strip("[]"), int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        raise ConfigError(f"cannot listen on {address}: {error.strerror}") from None
    for family, kind, protocol, _, socket_address in candidates:
        with socket.socket(family, kind, protocol) as probe:
            # As grpc binds: SO_REUSEADDR, so only a live socket counts as taken.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(socket_address)
            except OSError as error:
                # Anything else (e.g. no IPv6 for one of localhost's addresses) is grpc's call.
                if error.errno == errno.EADDRINUSE:
                    raise ConfigError(_cannot_listen(address, error.strerror)) from None


def _cannot_listen(address: str, reason: str | None) -> str:
    return (
        f"cannot listen on {address}: {reason or 'the address cannot be bound'}; stop what "
        "holds it or set SHOPMESH_LISTEN to another address"
    )


def _listen(server: aio.Server, address: str) -> str:
    """Bind `address`; returns it with the real port for `host:0`. ConfigError if it cannot."""
    if address.startswith("unix:"):
        _prepare_unix_socket(address)
    else:
        _refuse_taken_port(address)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        # Lost a race for the port since the probe, or a Unix socket path that cannot be made.
        port = 0
    # 0 is grpc's "nothing bound" (a Unix socket that is bound reports 1).
    if port == 0:
        raise ConfigError(_cannot_listen(address, None))
    if address.startswith("unix:"):
        return address
    return f"{address.rsplit(':', 1)[0]}:{port}"


async def start(config: ServiceConfig, app: App) -> RunningService:
    """Bind `config.listen`, serve `app` with health and reflection, start background tasks.

    Raises ConfigError naming the address when it cannot be bound (e.g. another process holds
    it); the app's clean-ups have run by then, so its stores are closed.
    """
    server = aio.server(
        interceptors=[
            *server_interceptors(),
            CallContextInterceptor(),
            CallLogInterceptor(),
            ErrorMappingInterceptor(),
        ],
        options=SERVER_OPTIONS,
    )
    names = [registration.service_name for registration in app.registrations]
    for registration in app.registrations:
        registration.add_to_server(registration.servicer, server)

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection([*names, health_name, reflection.SERVICE_NAME], server)

    try:
        address = _listen(server, config.listen)
    except ConfigError:
        await server.stop(None)
        for cleanup in reversed(app.cleanups):
            await cleanup()
        raise
    await server.start()

    serving = health_pb2.HealthCheckResponse.SERVING
    for name in ["", *names]:
        await health_servicer.set(name, serving)
    tasks = [asyncio.create_task(job(), name=job.__qualname__) for job in app.background]
    log.info("serving", extra={"address": address, "services": names})
    return RunningService(server, health_servicer, address, app, tasks)


async def _serve_until_signalled(
    config: ServiceConfig, build: Callable[[ServiceConfig], Awaitable[App]]
) -> None:
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()

    def on_signal(signum: signal.Signals) -> None:
        if not received.done():
            received.set_result(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    running = await start(config, await build(config))
    signum = await received
    # SIGTERM (an orchestrator taking one replica away) drains; SIGINT (Ctrl-C, or the whole
    # mesh going down) has nobody to drain traffic to, so it skips the drain period.
    drain = config.drain_seconds if signum == signal.SIGTERM else 0.0
    log.info(
        "shutting down",
        extra={
            "signal": signum.name,
            "drain_seconds": drain,
            "grace_seconds": config.grace_seconds,
        },
    )
    await running.stop(config.grace_seconds, drain)


def run(
    service: str,
    build: Callable[[ServiceConfig], Awaitable[App]],
    upstream_names: tuple[str, ...] = (),
) -> None:
    """Entry point of `python -m services.<service>`: load config, serve until SIGTERM/SIGINT,
    exit 0 after a graceful shutdown, or exit 2 with a clear message on bad configuration."""
    try:
        config = load_config(service, upstream_names)
    except ConfigError as error:
        print(f"{service}: configuration error: {error}", file=sys.stderr)
        sys.exit(2)
    configure_logging(service, config.log_level)
    tracing = configure_tracing(service)
    try:
        asyncio.run(_serve_until_signalled(config, build))
    except ConfigError as error:
        print(f"{service}: configuration error: {error}", file=sys.stderr)
        sys.exit(2)
    finally:
        if tracing is not None:
            # Flushes the spans still buffered: the last requests' traces are complete.
            tracing.shutdown()
