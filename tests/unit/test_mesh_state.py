"""mesh.json: what `up` records is read back whole, and a file of an earlier shopmesh is
recognised (so `down` can stop that mesh) rather than misread; a state directory an earlier
shopmesh left readable to others is closed up."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

import pytest

from shopmesh.layout import GatewayPorts, PodPorts, StateDir
from shopmesh.local.errors import MeshError
from shopmesh.local.private import make_private
from shopmesh.local.state import STATE_VERSION, LegacyState, MeshState, ProcessRecord, read_state


def a_state() -> MeshState:
    return MeshState(
        host="127.0.0.1",
        pod_ports={"users-0": PodPorts(1, 2, 3)},
        gateway_ports=GatewayPorts(4, 5, 6),
        descriptor="/x/shop.pb",
        processes={
            "users-0.app": ProcessRecord(
                "users-0.app", "app", ["python", "-m", "services.users"], {"A": "1"}, 42, 7
            )
        },
        up_seconds=1.5,
    )


def test_the_state_is_read_back_as_it_was_written(tmp_path: Path) -> None:
    paths = StateDir(tmp_path)
    state = a_state()

    state.save(paths)

    assert read_state(paths) == state
    assert json.loads(paths.state_file.read_text())["version"] == STATE_VERSION


def test_a_file_from_before_edge_tls_reads_as_a_plaintext_gateway(tmp_path: Path) -> None:
    paths = StateDir(tmp_path)
    a_state().save(paths)
    data = json.loads(paths.state_file.read_text())
    del data["edge_tls"]
    paths.state_file.write_text(json.dumps(data))

    state = read_state(paths)

    assert state is not None
    assert state.edge_tls is False


def test_no_state_file_means_no_mesh(tmp_path: Path) -> None:
    assert read_state(StateDir(tmp_path)) is None


def test_a_version_1_file_is_recognised_with_its_processes(tmp_path: Path) -> None:
    paths = StateDir(tmp_path)
    legacy = {
        "version": 1,
        "pods": {"users-0": {"app": {"pid": 10, "start_ticks": 1}, "sidecar": None}},
        "gateway": {"process": {"pid": 12, "start_ticks": 3}},
    }
    paths.state_file.write_text(json.dumps(legacy))

    with pytest.raises(LegacyState) as raised:
        read_state(paths)

    assert [(r.name, r.pid) for r in raised.value.processes] == [
        ("users-0.app", 10),
        ("gateway", 12),
    ]
    assert f"shopmesh down --state-dir {tmp_path}" in str(raised.value)


@pytest.mark.parametrize("content", ['{"version": 99}', "not json", '{"version": 2}'])
def test_an_unknown_or_broken_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    paths = StateDir(tmp_path)
    paths.state_file.write_text(content)

    with pytest.raises(MeshError, match=str(paths.state_file)):
        read_state(paths)


def test_a_malformed_version_1_file_is_a_clear_error(tmp_path: Path) -> None:
    paths = StateDir(tmp_path)
    paths.state_file.write_text(
        json.dumps({"version": 1, "pods": {"users-0": {"app": {"pid": 10}}}})
    )

    with pytest.raises(MeshError, match="stop its processes by hand"):
        read_state(paths)


def test_a_state_directory_left_readable_is_closed_up_but_its_sockets_are_left_alone(
    tmp_path: Path,
) -> None:
    root = tmp_path / "var"
    (root / "data").mkdir(parents=True, mode=0o755)
    database = root / "data" / "orders.db"
    database.write_bytes(b"orders")
    database.chmod(0o644)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(root / "app.sock"))
        (root / "app.sock").chmod(0o777)

        make_private(root)
        make_private(tmp_path / "new")

        modes = {
            path.name: stat.S_IMODE(path.lstat().st_mode)
            for path in [root, *root.rglob("*"), tmp_path / "new"]
        }
    assert modes == {
        "var": 0o700,
        "data": 0o700,
        "orders.db": 0o600,
        "app.sock": 0o777,
        "new": 0o700,
    }
