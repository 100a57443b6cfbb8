"""The mesh tooling's small pieces without a mesh: the layout refuses socket paths that cannot
work, certificates are renewed only when they must be, the log keeper caps a log that a process
keeps appending to, `make run` takes its ports from the topology, and the README's `make lint`
row names every check the target runs."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from shopmesh.connection_help import connection_help
from shopmesh.gatewayclient import GatewayTarget
from shopmesh.layout import GatewayPorts, LayoutError, LocalLayout, PodPorts, StateDir, local_pods
from shopmesh.local.certs import ensure_certificates
from shopmesh.local.errors import MeshError
from shopmesh.local.logcap import cap, cap_all
from shopmesh.local.ports import require_free
from shopmesh.options import DEFAULT_STATE_DIR
from shopmesh.pki import EDGE_DIRECTORY, LocalPki
from shopmesh.terminal import tool
from shopmesh.topology import TopologyError, parse_topology
from tests.support.paths import MESH_FILE, NODE_CLIENT, ROOT, TOPOLOGY
from tests.support.polling import eventually_sync

HOUR = datetime.timedelta(hours=1)
README = ROOT / "README.md"


def layout_under(root: Path) -> LocalLayout:
    ports = {pod.name: PodPorts(0, 0, 0) for pod in local_pods(TOPOLOGY)}
    return LocalLayout(StateDir(root), TOPOLOGY, "127.0.0.1", ports, GatewayPorts(0, 0, 0), root)


def test_a_state_directory_too_deep_for_unix_sockets_is_refused(tmp_path: Path) -> None:
    layout_under(tmp_path / "short").check_socket_paths()

    deep = tmp_path / ("d" * 90)
    with pytest.raises(LayoutError, match="too deep for Unix sockets"):
        layout_under(deep).check_socket_paths()


def test_the_admin_directory_is_private(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "var")
    state.make_directories(local_pods(TOPOLOGY))

    assert (state.admin.stat().st_mode & 0o777) == 0o700


def serial(pki: LocalPki, identity: str) -> int:
    certificate, _ = pki.files(identity).current()
    return int(x509.load_pem_x509_certificate(certificate.read_bytes()).serial_number)


def test_certificates_are_issued_once_and_renewed_when_they_must_be(tmp_path: Path) -> None:
    identities = TOPOLOGY.spiffe_ids

    assert ensure_certificates(tmp_path, identities, HOUR) == list(identities)
    pki = LocalPki(tmp_path)
    before = {identity: serial(pki, identity) for identity in identities}
    # Valid, with two thirds of their life left: nothing to do.
    assert ensure_certificates(tmp_path, identities, HOUR) == []
    # Another SPIFFE ID for one identity (say, a renamed trust domain): only that one.
    moved = {**identities, "users": "spiffe://other.example/ns/shop/sa/users"}
    assert ensure_certificates(tmp_path, moved, HOUR) == ["users"]
    assert serial(pki, "users") != before["users"]
    # Less than a third of their life left (issued for 2 s): all of them.
    short_lived = tmp_path / "short"
    ensure_certificates(short_lived, identities, datetime.timedelta(seconds=2))
    assert ensure_certificates(short_lived, identities, HOUR) == list(identities)


def test_the_edge_certificate_is_issued_with_edge_tls_and_again_for_other_names(
    tmp_path: Path,
) -> None:
    identities = TOPOLOGY.spiffe_ids
    plaintext = layout_under(tmp_path)
    names = dataclasses.replace(plaintext, edge_tls=True).edge_names

    assert plaintext.edge_names == ()
    assert {"localhost", "127.0.0.1", *TOPOLOGY.gateway.exposes} <= set(names)
    assert EDGE_DIRECTORY not in ensure_certificates(tmp_path, identities, HOUR)
    assert ensure_certificates(tmp_path, identities, HOUR, names) == [EDGE_DIRECTORY]
    assert ensure_certificates(tmp_path, identities, HOUR, names) == []
    assert ensure_certificates(tmp_path, identities, HOUR, [*names, "shop.test"]) == [
        EDGE_DIRECTORY
    ]


def test_the_connection_help_of_a_tls_gateway_trusts_the_mesh_ca(tmp_path: Path) -> None:
    ca = tmp_path / "certs" / "ca" / "ca.pem"

    tls = connection_help(GatewayTarget("127.0.0.1:8443", ca), DEFAULT_STATE_DIR)
    plaintext = connection_help(GatewayTarget("127.0.0.1:8080"), DEFAULT_STATE_DIR)

    assert f"grpcurl -cacert {ca} 127.0.0.1:8443 list" in tls
    assert f"curl -s --cacert {ca} -X POST" in tls
    assert "https://127.0.0.1:8443/shop.inventory.v1.InventoryService/ListProducts" in tls
    assert "-plaintext" not in tls
    assert "http://" not in tls
    assert "grpcurl -plaintext 127.0.0.1:8080 list" in plaintext
    assert "--cacert" not in plaintext


def test_the_connection_help_shows_the_storefront_and_the_node_client(tmp_path: Path) -> None:
    plaintext = connection_help(GatewayTarget("127.0.0.1:9080"), DEFAULT_STATE_DIR)
    tls = connection_help(GatewayTarget("127.0.0.1:9443", tmp_path / "ca.pem"), DEFAULT_STATE_DIR)

    assert "\n  http://127.0.0.1:9080/\n" in plaintext
    script = NODE_CLIENT.relative_to(ROOT)
    assert f"\n  {tool('node')} {script} 127.0.0.1:9080\n" in plaintext
    # As the client's README runs it, from the repository's root.
    assert f".venv/bin/node {script}" in (NODE_CLIENT.parent / "README.md").read_text()
    assert f"\n  https://127.0.0.1:9443/   (once the browser trusts {tmp_path / 'ca.pem'})" in tls
    # It speaks plaintext only.
    assert str(script) not in tls


def make_recipe(target: str) -> list[str]:
    """The commands of a Makefile target's recipe, variables such as $(BIN) left as written."""
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert match, f"no target {target} in the Makefile"
    return [line.strip() for line in match[1].splitlines()]


def test_the_readme_names_every_check_make_lint_runs() -> None:
    [row] = [line for line in README.read_text().splitlines() if line.startswith("| `make lint`")]
    for command in make_recipe("lint"):
        words = command.split()
        tool = next(Path(w).name for w in words if "/" in w and not w.startswith("PATH="))
        assert tool in row, f"README's make lint row lacks {tool} ({command})"
        if tool == "tsc":
            project = f"tsc -p {words[words.index('-p') + 1]}"
            assert f"`{project}`" in row, f"README's make lint row lacks {project}"


def test_the_log_keeper_caps_a_log_a_process_keeps_appending_to(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.logs.mkdir()
    log = state.log("writer")
    writer = [
        sys.executable,
        "-c",
        "import sys, time\nfor i in range(5000):\n print('x' * 99, flush=True); time.sleep(0.0005)",
    ]
    with log.open("ab") as output:
        process = subprocess.Popen(writer, stdout=output)
    try:
        capped: list[Path] = []

        def capped_once() -> bool:
            capped.extend(cap_all(state, 50_000))
            return bool(capped)

        eventually_sync(capped_once, 30, "the log to grow past the cap", interval=0.01)
        process.wait(30)
    finally:
        process.kill()
        process.wait()

    assert capped == [log]
    previous = log.with_name("writer.log.1")
    assert previous.stat().st_size > 50_000
    # The writer went on at the start of the emptied file: no hole of NUL bytes.
    text = log.read_bytes()
    assert b"\0" not in text
    assert text.splitlines() == [b"x" * 99] * len(text.splitlines())
    assert not cap(log, 10 * 1024 * 1024)


def topology_with(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = copy.deepcopy(yaml.safe_load(MESH_FILE.read_text()))
    for service, port in changes.items():
        document["services"][service]["standalone_port"] = port
    return document


def test_standalone_ports_come_from_the_topology_and_must_differ() -> None:
    assert {s.name: s.standalone_port for s in TOPOLOGY.services.values()} == {
        "users": 50051,
        "inventory": 50052,
        "payments": 50053,
        "orders": 50054,
        "notifications": 50055,
    }
    with pytest.raises(TopologyError, match=r"services\.orders\.standalone_port: 50051 is also"):
        parse_topology(topology_with(orders=50051), "mesh.yaml")
    with pytest.raises(TopologyError, match="between 1 and 65535"):
        parse_topology(topology_with(users=0), "mesh.yaml")


TIME_WAIT = "06"


def tcp_states(port: int) -> set[str]:
    """The states (/proc/net/tcp codes) of every IPv4 socket on local port `port`."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return {row[3] for row in rows if int(row[1].split(":")[1], 16) == port}


def test_a_port_whose_last_connection_lingers_in_time_wait_counts_as_free() -> None:
    with socket.socket() as server:
        # As grpc and Envoy listen: their connections' TIME_WAIT then allows a new bind.
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            # The server side closes first: its end of the connection waits in TIME_WAIT.
            accepted.close()
            client.recv(1)
    eventually_sync(lambda: tcp_states(port) == {TIME_WAIT}, 10, f"port {port} in TIME_WAIT")
    require_free("127.0.0.1", port, "a port", "no way out needed")


def test_a_port_someone_listens_on_is_refused_naming_the_way_out() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MeshError, match=f"gateway port 127.0.0.1:{port} is not free.*pass"):
            require_free("127.0.0.1", port, "gateway port", "pass another one")
