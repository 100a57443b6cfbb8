"""`python -m shopmesh.dashboard STATE_DIR --port N`: serve the dashboard of the mesh recorded
in STATE_DIR on 127.0.0.1:N until SIGTERM or SIGINT. The token comes from the environment
(SHOPMESH_DASHBOARD_TOKEN, which `shopmesh up` sets; shopmesh.local.dashboard says why)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
from pathlib import Path

import click
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from shopmesh.dashboard.app import create_app
from shopmesh.dashboard.security import SAFE_METHODS
from shopmesh.dashboard.state import MeshView
from shopmesh.local.dashboard import TOKEN_VARIABLE
from shopmesh.local.errors import MeshError

MIN_TOKEN_LENGTH = 32
log = logging.getLogger("shopmesh.dashboard")


class ChangesLogger(AbstractAccessLogger):
    """Logs what changed the mesh and what failed, never a query string (the page's link
    carries the token); the page's polling every second would only fill the log."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        if request.method in SAFE_METHODS and response.status < 400:
            return
        self.logger.info(
            "%s %s %d %.1f ms", request.method, request.path, response.status, time * 1000
        )


async def serve(state_dir: Path, host: str, port: int, token: str) -> None:
    view = MeshView(state_dir)
    runner = web.AppRunner(
        create_app(view, token), access_log_class=ChangesLogger, handle_signals=False
    )
    await runner.setup()
    # reuse_address: the port `up` chose may still have connections of a previous run in
    # TIME_WAIT.
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    log.info("serving the mesh in %s on http://%s:%d/", state_dir, host, port)
    try:
        await stopped.wait()
    finally:
        await view.close()
        await runner.cleanup()
        log.info("stopped")


@click.command()
@click.argument("state_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--host", default="127.0.0.1", show_default=True, help="A loopback address.")
@click.option("--port", type=click.IntRange(1, 65535), required=True)
def main(state_dir: Path, host: str, port: int) -> None:
    """Serve the dashboard of the mesh in STATE_DIR."""
    token = os.environ.get(TOKEN_VARIABLE, "")
    if len(token) < MIN_TOKEN_LENGTH:
        raise click.UsageError(
            f"{TOKEN_VARIABLE} must hold the dashboard's token of at least {MIN_TOKEN_LENGTH} "
            "characters (`shopmesh up` sets it)"
        )
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise click.UsageError(f"--host {host!r}: the dashboard serves on loopback only")
    # Its own lines and the changes it made; not every admin call httpx makes each second.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    for name in ("shopmesh.dashboard", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        asyncio.run(serve(state_dir, host, port, token))
    except MeshError as problem:
        raise click.ClickException(str(problem)) from None


if __name__ == "__main__":
    main()
