"""The services as real processes: `python -m services.users` reads its config from the
environment, serves health on the configured Unix socket, logs JSON lines, exits 0 after a
graceful shutdown on SIGTERM, and refuses bad configuration with exit code 2 and a message
naming the variable."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from shop.users.v1 import users_pb2
from tests.support.processes import (
    EXIT_SECONDS,
    STARTUP_SECONDS,
    Launch,
    health_status,
    wait_until_serving,
)

USERS_SERVICE = users_pb2.DESCRIPTOR.services_by_name["UsersService"].full_name


def _accepts_connections(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        try:
            client.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
    return True


def test_service_serves_until_sigterm_then_exits_zero(
    launch: Launch, socket_dir: Path, tmp_path: Path
) -> None:
    socket_path = socket_dir / "users.sock"
    address = f"unix:{socket_path}"
    database = tmp_path / "data" / "users.db"
    users = launch(
        "users",
        {
            "SHOPMESH_LISTEN": address,
            "SHOPMESH_DB_PATH": str(database),
            "SHOPMESH_GRACE_SECONDS": "2",
        },
    )
    wait_until_serving(users, address)
    assert health_status(address, USERS_SERVICE) == health_pb2.HealthCheckResponse.SERVING
    assert database.exists()

    users.process.send_signal(signal.SIGTERM)
    code = users.process.wait(timeout=EXIT_SECONDS)

    assert code == 0, users.stderr_text()
    assert not _accepts_connections(socket_path)


def test_service_logs_json_lines(launch: Launch, socket_dir: Path, tmp_path: Path) -> None:
    address = f"unix:{socket_dir / 'users.sock'}"
    users = launch(
        "users",
        {"SHOPMESH_LISTEN": address, "SHOPMESH_DB_PATH": str(tmp_path / "users.db")},
    )
    wait_until_serving(users, address)
    users.process.send_signal(signal.SIGTERM)
    users.process.wait(timeout=EXIT_SECONDS)

    lines = [line for line in users.stderr_text().splitlines() if line.strip()]
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"log line is not JSON: {line!r}")

    assert all(isinstance(entry, dict) for entry in entries)
    assert {entry["service"] for entry in entries} == {"users"}
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    messages = [entry["message"] for entry in entries]
    assert "serving" in messages
    assert "shutting down" in messages


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SHOPMESH_LISTEN", "garbage", "expected unix:/path/to.sock or host:port"),
        ("SHOPMESH_LOG_LEVEL", "LOUD", "expected one of DEBUG, INFO, WARNING, ERROR"),
    ],
)
def test_bad_config_exits_2_naming_the_variable(
    launch: Launch, socket_dir: Path, tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    env = {
        "SHOPMESH_LISTEN": f"unix:{socket_dir / 'users.sock'}",
        "SHOPMESH_DB_PATH": str(tmp_path / "users.db"),
        variable: value,
    }
    users = launch("users", env)

    code = users.process.wait(timeout=STARTUP_SECONDS)

    stderr = users.stderr_text()
    assert code == 2, stderr
    assert variable in stderr
    assert expected in stderr
    assert not (socket_dir / "users.sock").exists()


def test_a_taken_tcp_port_exits_2_naming_the_address(launch: Launch, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        users = launch(
            "users",
            {"SHOPMESH_LISTEN": address, "SHOPMESH_DB_PATH": str(tmp_path / "users.db")},
        )

        code = users.process.wait(timeout=STARTUP_SECONDS)

    stderr = users.stderr_text()
    assert code == 2, stderr
    assert f"users: configuration error: cannot listen on {address}: " in stderr
    assert "Traceback" not in stderr
