"""`shopmesh run` (`make run`): every service of the topology as a plain process, without the
mesh, each on the `standalone_port` the topology gives it and calling its upstreams at theirs.
A checkout goes through, and Ctrl-C stops every process."""

from __future__ import annotations

import copy
import functools
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2

from shop.orders.v1 import orders_pb2, orders_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc
from shopmesh.local.health import health_check
from tests.support.callers import as_user
from tests.support.cli import shopmesh_command
from tests.support.paths import MESH_FILE, ROOT, TOPOLOGY
from tests.support.polling import CALL_TIMEOUT, eventually_sync


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture
def topology_file(tmp_path: Path) -> Path:
    """The shop's topology with ports free on this machine (the real ones may be taken)."""
    document: dict[str, Any] = copy.deepcopy(yaml.safe_load(MESH_FILE.read_text()))
    for service, port in zip(document["services"], free_ports(len(TOPOLOGY.services)), strict=True):
        document["services"][service]["standalone_port"] = port
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def running(topology_file: Path, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    command = [*shopmesh_command(), "run", "--topology", str(topology_file)]
    process = subprocess.Popen(
        [*command, "--data-dir", str(tmp_path / "data")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(CALL_TIMEOUT)


def serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            response = health_check(channel)(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def test_every_service_runs_on_its_port_and_a_checkout_goes_through(
    topology_file: Path, running: subprocess.Popen[str]
) -> None:
    ports = {
        name: service["standalone_port"]
        for name, service in yaml.safe_load(topology_file.read_text())["services"].items()
    }
    for name, port in ports.items():
        eventually_sync(functools.partial(serving, port), 30, f"{name} on {port}", interval=0.1)

    with grpc.insecure_channel(f"127.0.0.1:{ports['users']}") as channel:
        user = users_pb2_grpc.UsersServiceStub(channel).CreateUser(
            users_pb2.CreateUserRequest(email=f"run-{uuid.uuid4().hex[:8]}@example.com"),
            timeout=CALL_TIMEOUT,
        )
    with grpc.insecure_channel(f"127.0.0.1:{ports['orders']}") as channel:
        placed = orders_pb2_grpc.OrdersServiceStub(channel).PlaceOrder(
            orders_pb2.PlaceOrderRequest(
                idempotency_key=uuid.uuid4().hex,
                user_id=user.user.user_id,
                items=[orders_pb2.OrderItem(sku="MUG-01", quantity=1)],
                payment_token="tok_visa",
            ),
            timeout=CALL_TIMEOUT,
            # No gateway runs standalone: the client names the signed-in caller itself.
            metadata=as_user(user.user.user_id),
        )
    assert placed.order.status == orders_pb2.ORDER_STATUS_CONFIRMED

    running.send_signal(signal.SIGINT)
    output, _ = running.communicate(timeout=CALL_TIMEOUT)
    assert running.returncode == 0, output
    for name, port in ports.items():
        assert f"{name}: 127.0.0.1:{port}" in output
        assert not serving(port), name


def test_a_taken_port_is_refused_before_anything_starts(topology_file: Path) -> None:
    port = yaml.safe_load(topology_file.read_text())["services"]["payments"]["standalone_port"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = subprocess.run(
            [*shopmesh_command(), "run", "--topology", str(topology_file)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=CALL_TIMEOUT,
            check=False,
        )
    assert result.returncode == 1
    assert f"payments's port 127.0.0.1:{port} is not free" in result.stderr
