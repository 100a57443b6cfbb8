"""`python -m shopmesh.reflection ADDRESS DESCRIPTOR_SET --expose pkg.Service/Method ...`:
answer server reflection for the exposed methods on ADDRESS (unix:/path, or host:port), with
grpc.health.v1 beside it, until SIGTERM or SIGINT. `shopmesh up` starts it beside the gateway;
on Kubernetes it is a container of the gateway's pod (shopmesh.k8s.gateway)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import click
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.interceptors import ErrorMappingInterceptor
from services.common.logs import configure_logging
from shopmesh.reflection.api import ApiError, exposed_api, parse_method_paths, read_descriptor_set
from shopmesh.reflection.servicer import ExposedReflection, add_reflection

NAME = "reflection"
GRACE_SECONDS = 2.0


async def serve(address: str, reflection: ExposedReflection) -> None:
    """Serve until SIGTERM or SIGINT; then NOT_SERVING, and the open streams get a moment."""
    # The error-mapping interceptor: bytes that are not a reflection request are
    # INVALID_ARGUMENT MALFORMED_REQUEST, as at every app, not UNKNOWN.
    server = aio.server(
        interceptors=[ErrorMappingInterceptor()], options=[("grpc.so_reuseport", 0)]
    )
    add_reflection(reflection, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    server.add_insecure_port(address)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await stopped.wait()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(GRACE_SECONDS)


@click.command()
@click.argument("address")
@click.argument("descriptor_set", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--expose",
    "methods",
    multiple=True,
    required=True,
    metavar="PKG.SERVICE/METHOD",
    help="An exposed method (repeat for each); everything else is left out.",
)
def main(address: str, descriptor_set: Path, methods: tuple[str, ...]) -> None:
    """Serve reflection of the exposed METHODS of DESCRIPTOR_SET on ADDRESS."""
    try:
        exposed = parse_method_paths(methods)
        files = exposed_api(read_descriptor_set(descriptor_set), exposed)
    except (ApiError, OSError, ValueError) as error:
        print(f"{NAME}: {descriptor_set}: {error}", file=sys.stderr)
        sys.exit(2)
    if address.startswith("unix:"):
        # A socket left by a process that was killed would make the bind fail.
        Path(address.removeprefix("unix:")).unlink(missing_ok=True)
    configure_logging(NAME, "INFO")
    click.echo(
        f"{NAME}: serving reflection of {len(methods)} methods of {len(exposed)} services on "
        f"{address}",
        err=True,
    )
    asyncio.run(serve(address, ExposedReflection(files, list(exposed))))


if __name__ == "__main__":
    main()
