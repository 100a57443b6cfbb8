"""Binding the listen address: a TCP port another process holds is refused with one clear
ConfigError naming the address, never silently shared (grpcio sets SO_REUSEPORT by default)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc import aio

from services.common.config import ConfigError, ServiceConfig
from services.common.server import SERVER_OPTIONS, App, start
from services.users.app import build


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port held by a listening socket that allows SO_REUSEPORT sharing, as another
    gRPC server (grpcio's default) would."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def tcp_config(port: int, tmp_path: Path) -> ServiceConfig:
    return ServiceConfig(
        service="users",
        listen=f"127.0.0.1:{port}",
        db_path=tmp_path / "users.db",
        grace_seconds=0.0,
    )


async def test_a_service_on_a_taken_port_fails_with_a_config_error_naming_it(
    taken_port: int, tmp_path: Path
) -> None:
    config = tcp_config(taken_port, tmp_path)

    with pytest.raises(ConfigError) as raised:
        await start(config, await build(config))

    assert str(raised.value).startswith(f"cannot listen on 127.0.0.1:{taken_port}: ")
    assert "in use" in str(raised.value)


async def test_a_failed_start_runs_the_apps_clean_ups(taken_port: int, tmp_path: Path) -> None:
    cleaned: list[str] = []

    async def close_store() -> None:
        cleaned.append("store")

    with pytest.raises(ConfigError):
        await start(tcp_config(taken_port, tmp_path), App([], cleanups=[close_store]))

    assert cleaned == ["store"]


async def test_the_grpc_server_refuses_to_share_a_port(taken_port: int) -> None:
    # What start() relies on if another process takes the port between its check and the bind.
    server = aio.server(options=SERVER_OPTIONS)
    try:
        with pytest.raises(RuntimeError, match="Failed to bind"):
            server.add_insecure_port(f"127.0.0.1:{taken_port}")
    finally:
        await server.stop(None)
