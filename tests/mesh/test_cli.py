"""The `shopmesh` command as a user runs it, in its own processes: `up` starts the mesh and
exits, `status` reports it, `down` stops it (no process left, sockets gone, data kept), and a
broken topology is refused with a message naming the key."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.mesh.conftest import DESCRIPTOR_SET, MESH_FILE, ROOT

SHOPMESH = Path(sys.executable).parent / "shopmesh"
COMMAND_TIMEOUT = 90.0


def shopmesh(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed `shopmesh` script (`python -m shopmesh.cli` before `pip install`)."""
    command = [str(SHOPMESH)] if SHOPMESH.exists() else [sys.executable, "-m", "shopmesh.cli"]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def running(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its parent to reap it has stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def recorded_pids(state_dir: Path) -> list[int]:
    state = json.loads((state_dir / "mesh.json").read_text())
    processes = [state["gateway"]["process"]]
    for pod in state["pods"].values():
        processes += [pod["app"], pod["sidecar"]]
    return [process["pid"] for process in processes]


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A fresh state directory; whatever the test leaves running is stopped afterwards."""
    path = Path(tempfile.mkdtemp(prefix="smc-", dir="/tmp"))
    try:
        yield path
    finally:
        if (path / "mesh.json").exists():
            shopmesh("down", "--state-dir", str(path))
        shutil.rmtree(path, ignore_errors=True)


def test_up_status_down(state_dir: Path) -> None:
    started = shopmesh("up", "--state-dir", str(state_dir), "--gateway-port", "0")
    assert started.returncode == 0, started.stderr
    assert "mesh up in" in started.stdout
    gateway = json.loads((state_dir / "mesh.json").read_text())["gateway"]["ports"]["listener"]
    assert f"-authority users 127.0.0.1:{gateway} list" in started.stdout
    assert f"http://127.0.0.1:{gateway}/shop.users.v1.UsersService/CreateUser" in started.stdout
    pids = recorded_pids(state_dir)
    assert all(running(pid) for pid in pids)

    status = shopmesh("status", "--state-dir", str(state_dir))
    assert status.returncode == 0, status.stdout + status.stderr
    assert "orders-0.app" in status.stdout
    assert "SERVING" in status.stdout

    again = shopmesh("up", "--state-dir", str(state_dir), "--gateway-port", "0")
    assert again.returncode == 1
    assert "already running" in again.stderr

    stopped = shopmesh("down", "--state-dir", str(state_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert [pid for pid in pids if running(pid)] == []
    assert list(state_dir.rglob("*.sock")) == []
    assert list(state_dir.rglob("*.pid")) == []
    assert not (state_dir / "mesh.json").exists()
    assert sorted(p.name for p in (state_dir / "data").iterdir() if p.suffix == ".db") == [
        "inventory.db",
        "notifications.db",
        "orders.db",
        "payments.db",
        "users.db",
    ]
    assert (state_dir / "certs" / "ca" / "ca.pem").exists()

    after = shopmesh("status", "--state-dir", str(state_dir))
    assert after.returncode == 1
    assert "no mesh is running" in after.stderr


def test_taken_gateway_port_is_refused_with_a_way_out(state_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = shopmesh("up", "--state-dir", str(state_dir), "--gateway-port", str(port))

    assert result.returncode == 1
    assert f"gateway port 127.0.0.1:{port} is not free" in result.stderr
    assert "--gateway-port 0" in result.stderr
    assert not (state_dir / "mesh.json").exists()


def test_broken_topology_is_refused_naming_the_key(state_dir: Path) -> None:
    topology = yaml.safe_load(MESH_FILE.read_text())
    topology["services"]["orders"]["calls"]["userz"] = ["GetUser"]
    broken = state_dir / "broken.yaml"
    broken.write_text(yaml.safe_dump(topology))

    result = shopmesh(
        "up",
        "--state-dir",
        str(state_dir),
        "--gateway-port",
        "0",
        "--topology",
        str(broken),
        "--descriptor",
        str(DESCRIPTOR_SET),
    )

    assert result.returncode == 1
    assert "services.orders.calls.userz" in result.stderr
    assert not (state_dir / "mesh.json").exists()
    assert not (state_dir / "run").exists()


def test_missing_descriptor_set_says_to_generate(state_dir: Path) -> None:
    result = shopmesh(
        "up",
        "--state-dir",
        str(state_dir),
        "--gateway-port",
        "0",
        "--descriptor",
        str(state_dir / "missing.pb"),
    )

    assert result.returncode == 1
    assert "make generate" in result.stderr
