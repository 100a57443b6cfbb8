"""The dashboard as a process of the mesh (its port, its token kept out of its command line)
and what it shows, assembled without a running mesh: the graph from the topology, a trace as a
waterfall, every process's health read at most every MIN_SAMPLE_INTERVAL, and names from
outside callers kept as text."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shutil
import socket
from pathlib import Path

import pytest

from shopmesh.dashboard.state import MeshView, graph, processes_of, trace_row, waterfall
from shopmesh.layout import GatewayPorts, LocalLayout, StateDir
from shopmesh.local import status
from shopmesh.local.dashboard import (
    DASHBOARD,
    TOKEN_VARIABLE,
    DashboardLink,
    dashboard_link,
    dashboard_record,
)
from shopmesh.local.errors import MeshError
from shopmesh.local.mesh import RunningMesh
from shopmesh.local.startup import MeshOptions, choose_ports, process_records
from shopmesh.local.state import MeshState
from shopmesh.observe import stats
from shopmesh.observe.traces import summarize
from shopmesh.topology import GATEWAY
from tests.support.paths import MESH_FILE, ROOT, TOPOLOGY
from tests.support.spans import HOSTILE_PATH, RETRIED, span

SCRIPT = ROOT / "shopmesh" / "dashboard" / "static" / "dashboard.js"


def test_the_token_is_in_the_environment_never_on_the_command_line(tmp_path: Path) -> None:
    first = dashboard_record(Path("python"), StateDir(tmp_path), "127.0.0.1", 8090)
    second = dashboard_record(Path("python"), StateDir(tmp_path), "127.0.0.1", 8090)

    token = first.env[TOKEN_VARIABLE]
    assert len(token) >= 40
    assert token != second.env[TOKEN_VARIABLE]
    assert not [arg for arg in first.command if token in arg]
    assert first.command[-4:] == ["--host", "127.0.0.1", "--port", "8090"]


def test_the_link_carries_the_token_of_the_recorded_process(tmp_path: Path) -> None:
    record = dashboard_record(Path("python"), StateDir(tmp_path), "127.0.0.1", 8123)
    state = MeshState("127.0.0.1", {}, GatewayPorts(0, 0, 0), "", {DASHBOARD: record})

    assert dashboard_link(state) is None  # no port recorded: started without a dashboard
    link = dashboard_link(dataclasses.replace(state, dashboard_port=8123))
    assert link is not None
    assert link.url == f"http://127.0.0.1:8123/?token={record.env[TOKEN_VARIABLE]}"


def test_every_port_differs_and_port_0_means_any_free_one() -> None:
    pods, gateway, dashboard = choose_ports(TOPOLOGY, MeshOptions())

    assert dashboard is not None
    every = [port for p in pods.values() for port in dataclasses.astuple(p)]
    every += [*dataclasses.astuple(gateway), dashboard]
    assert len(set(every)) == len(every)


def test_no_dashboard_no_port_and_no_process(tmp_path: Path) -> None:
    options = MeshOptions(state_dir=tmp_path, dashboard=False, dashboard_port=8090)
    pods, gateway, dashboard = choose_ports(TOPOLOGY, options)
    layout = LocalLayout(StateDir(tmp_path), TOPOLOGY, "127.0.0.1", pods, gateway, tmp_path)

    assert dashboard is None
    assert DASHBOARD not in process_records(layout, options, Path("envoy"), dashboard)
    assert DASHBOARD in process_records(layout, options, Path("envoy"), 8090)


def test_a_taken_dashboard_port_is_refused_with_a_way_out() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MeshError, match=f"dashboard port 127.0.0.1:{port} is not free"):
            choose_ports(TOPOLOGY, MeshOptions(dashboard_port=port))


def test_the_graph_has_an_edge_for_every_call_the_topology_allows() -> None:
    drawn = graph(TOPOLOGY)

    assert [node["id"] for node in drawn["nodes"]] == [GATEWAY, *TOPOLOGY.services]
    edges = {(edge["caller"], edge["callee"]): edge["methods"] for edge in drawn["edges"]}
    expected = {(GATEWAY, s): list(m) for s, m in TOPOLOGY.gateway.exposes.items()}
    for caller in TOPOLOGY.services.values():
        expected |= {(caller.name, s): list(m) for s, m in caller.calls.items()}
    assert edges == expected
    assert edges["orders", "payments"] == ["Charge", "Refund", "GetPayment"]


def test_a_trace_becomes_rows_under_their_parents_with_attempts() -> None:
    drawn = waterfall("t" * 32, RETRIED)

    rows = [
        (row["span_id"], row["depth"], row["offset_ms"], row["status"], row["attempt"])
        for row in drawn["spans"]
    ]
    assert rows == [
        ("egress", 0, 0.0, "OK", None),
        ("try-1", 1, 1.0, "UNAVAILABLE", 1),
        ("try-2", 1, 12.0, "OK", 2),
        ("late", 0, 5.0, "OK", None),
    ]
    assert drawn["spans"][0]["name"] == "egress PaymentsService/Charge"
    assert (drawn["span_count"], drawn["duration_ms"]) == (4, 30.0)
    assert drawn["spans"][1]["failed"] is True


def test_the_trace_list_names_roots_as_the_page_shows_them() -> None:
    checkout = span("edge", "", "edge /shop.orders.v1.OrdersService/PlaceOrder", 0, 9)
    at_gateway = summarize("t" * 32, [dataclasses.replace(checkout, service=GATEWAY)])
    elsewhere = summarize("t" * 32, RETRIED)
    assert at_gateway is not None
    assert elsewhere is not None

    row = trace_row(at_gateway)
    assert row["root"] == {
        "service": GATEWAY,
        "name": "edge /shop.orders.v1.OrdersService/PlaceOrder",
        "label": "OrdersService/PlaceOrder",
    }
    assert trace_row(elsewhere)["root"]["label"] == "orders-sidecar: egress PaymentsService/Charge"


def test_names_from_outside_callers_reach_the_page_as_they_are() -> None:
    """The server sends a hostile name unchanged (the page must show it as text, which
    test_the_page_never_parses_text_as_html checks, and tests/mesh/test_dashboard.py in a
    browser)."""
    hostile = span("edge", "", f"edge {HOSTILE_PATH}", 0, 1, service=GATEWAY)
    summary = summarize("t" * 32, [hostile])
    assert summary is not None

    assert waterfall("t" * 32, [hostile])["spans"][0]["name"] == f"edge {HOSTILE_PATH}"
    assert trace_row(summary)["root"]["label"] == HOSTILE_PATH


def test_the_page_never_parses_text_as_html() -> None:
    """Everything the page shows goes through textContent, createElement and setAttribute:
    no API that parses a string as HTML or runs it as code appears in the script."""
    script = SCRIPT.read_text(encoding="utf-8")
    parsing = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|DOMParser"
        r"|createContextualFragment|srcdoc|\beval\(|new Function|javascript:"
    )

    assert parsing.findall(script) == []
    assert "textContent" in script


def recorded_mesh(state_dir: Path) -> RunningMesh:
    """A mesh recorded as `up` records it, its dashboard this process, nothing else running
    (so reading it touches no network: every admin socket and port is absent)."""
    options = MeshOptions(state_dir=state_dir)
    pods, gateway, port = choose_ports(TOPOLOGY, options)
    paths = StateDir(state_dir)
    layout = LocalLayout(paths, TOPOLOGY, "127.0.0.1", pods, gateway, state_dir)
    records = process_records(layout, options, Path("envoy"), port)
    records[DASHBOARD] = dataclasses.replace(records[DASHBOARD], pid=os.getpid())
    MeshState("127.0.0.1", pods, gateway, "", records, dashboard_port=port).save(paths)
    paths.topology_snapshot.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MESH_FILE, paths.topology_snapshot)
    mesh = RunningMesh.attach(state_dir)
    assert mesh is not None
    return mesh


async def test_the_dashboard_does_not_ask_itself_whether_it_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[DashboardLink] = []

    async def serves(link: DashboardLink, within: float = 2.0) -> bool:
        asked.append(link)
        return False

    monkeypatch.setattr(status, "dashboard_serves", serves)
    mesh = recorded_mesh(tmp_path)

    rows = {row.name: row for row in await processes_of(mesh)}

    assert asked == []
    assert (rows[DASHBOARD].health, rows[DASHBOARD].healthy) == ("serving", True)
    assert rows[DASHBOARD].pid == os.getpid()
    assert rows[GATEWAY].health == "stopped"
    # `shopmesh status`, from outside, does ask.
    await status.mesh_status(mesh)
    assert len(asked) == 1


async def test_pages_asking_at_once_read_the_mesh_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []

    async def sample(mesh: RunningMesh) -> stats.Sample:
        reads.append("stats")
        return await stats.sample(mesh)

    async def mesh_status(mesh: RunningMesh, **asker: bool) -> list[status.ProcessStatus]:
        reads.append("status")
        return await status.mesh_status(mesh, **asker)

    monkeypatch.setattr("shopmesh.dashboard.state.sample", sample)
    monkeypatch.setattr("shopmesh.dashboard.state.mesh_status", mesh_status)
    recorded_mesh(tmp_path)
    view = MeshView(tmp_path)
    try:
        pages = await asyncio.gather(*(view.state(30.0) for _ in range(3)))
        pages.append(await view.state(10.0))
    finally:
        await view.close()

    assert sorted(reads) == ["stats", "status"]
    assert len({len(page["processes"]) for page in pages}) == 1
    assert DASHBOARD in {row["name"] for row in pages[0]["processes"]}
