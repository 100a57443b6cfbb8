"""The `shopmesh` command as a user runs it, in its own processes: `up` starts the mesh and
exits, `status` reports it, `down` stops it (no process left, sockets gone, data kept), the
commands `up` prints run as printed, a stopped replica comes back with `restart`, and every
mistake (a taken port, a broken topology, an unusable state directory, a nonsense fault) is
refused with one line that says what to do."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shopmesh.layout import StateDir
from shopmesh.local.process import start_ticks
from tests.support.cli import shopmesh
from tests.support.mesh import short_temp_dir
from tests.support.paths import BIN, DESCRIPTOR_SET, MESH_FILE, ROOT, TOPOLOGY
from tests.support.polling import eventually_sync

STOP_SECONDS = 15.0
FREE_PORTS = ("--gateway-port", "0", "--dashboard-port", "0")
"""No fixed port: the gateway and the dashboard on any free one."""


def running(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its parent to reap it has stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def recorded(state_dir: Path) -> dict[str, Any]:
    """Process name -> its record in mesh.json."""
    processes: dict[str, Any] = json.loads((state_dir / "mesh.json").read_text())["processes"]
    return processes


def recorded_pids(state_dir: Path) -> list[int]:
    return [int(record["pid"]) for record in recorded(state_dir).values()]


def gateway_port(state_dir: Path) -> int:
    port: int = json.loads((state_dir / "mesh.json").read_text())["gateway_ports"]["listener"]
    return port


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A fresh state directory; whatever the test leaves running is stopped afterwards."""
    path = short_temp_dir("smc-")
    try:
        yield path
    finally:
        if (path / "mesh.json").exists():
            shopmesh("down", "--state-dir", str(path))
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class CliMesh:
    """A mesh started by `shopmesh up` for the module, and what `up` printed."""

    state_dir: Path
    printed: str


PASSED_ON = "SHOPMESH_ORDERS_RELAY_POLL_INTERVAL"
"""A setting of the environment `up` runs in that the mesh passes on to the apps unchanged."""


@pytest.fixture(scope="module")
def cli_mesh() -> Iterator[CliMesh]:
    path = short_temp_dir("smc-")
    environment = {**os.environ, "SHOPMESH_LOG_LEVEL": "debug", PASSED_ON: "1.5"}
    try:
        started = shopmesh("up", "--state-dir", str(path), *FREE_PORTS, env=environment)
        assert started.returncode == 0, started.stderr
        yield CliMesh(path, started.stdout)
    finally:
        shopmesh("down", "--state-dir", str(path))
        shutil.rmtree(path, ignore_errors=True)


def test_up_status_down(state_dir: Path) -> None:
    started = shopmesh("up", "--state-dir", str(state_dir), *FREE_PORTS)
    assert started.returncode == 0, started.stderr
    assert "mesh up in" in started.stdout
    gateway = gateway_port(state_dir)
    # Whole lines, so that the URL and the path can be pasted (rich wraps at 80 columns here).
    lines = started.stdout.splitlines()
    assert f"gateway: http://127.0.0.1:{gateway}" in lines
    assert f"state: {state_dir.resolve()}" in lines
    assert f"-plaintext 127.0.0.1:{gateway} list" in started.stdout
    assert f"http://127.0.0.1:{gateway}/shop.orders.v1.OrdersService/ListOrders" in started.stdout
    pids = recorded_pids(state_dir)
    assert all(running(pid) for pid in pids)

    status = shopmesh("status", "--state-dir", str(state_dir))
    assert status.returncode == 0, status.stdout + status.stderr
    assert "orders-0.app" in status.stdout
    assert "SERVING" in status.stdout
    assert "dashboard" in status.stdout
    assert "serving" in status.stdout
    # The gateway's reflection service: its own process, SERVING on its socket.
    assert [
        line for line in status.stdout.splitlines() if "reflection" in line and "SERVING" in line
    ]

    again = shopmesh("up", "--state-dir", str(state_dir), *FREE_PORTS)
    assert again.returncode == 1
    assert "already running" in again.stderr

    # Without its copy of the topology, mesh.json alone still names every process to stop.
    (state_dir / "envoy" / "mesh.yaml").unlink()
    stopped = shopmesh("down", "--state-dir", str(state_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert [pid for pid in pids if running(pid)] == []
    assert list(state_dir.rglob("*.sock")) == []
    assert list(state_dir.rglob("*.pid")) == []
    assert not (state_dir / "mesh.json").exists()
    databases = sorted(p.name for p in (state_dir / "data").iterdir() if p.suffix == ".db")
    kept = [*(f"{service}.db" for service in TOPOLOGY.services), "traces.db"]
    assert databases == sorted(kept)
    assert (state_dir / "certs" / "ca" / "ca.pem").exists()

    after = shopmesh("status", "--state-dir", str(state_dir))
    assert after.returncode == 1
    assert "no mesh is running" in after.stderr


def printed_commands(printed: str, name: str) -> list[str]:
    """The lines of `up`'s output that run the command `name` (grpcurl, shopmesh)."""
    lines = [line.strip() for line in printed.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line.split(" ", 1)[0].endswith(f"/{name}")]


def test_the_commands_up_prints_run_as_printed(cli_mesh: CliMesh) -> None:
    # A shell whose PATH does not have .venv/bin, like a fresh terminal.
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != BIN)
    environment = {**os.environ, "PATH": path}
    commands = printed_commands(cli_mesh.printed, "shopmesh")
    status = next(command for command in commands if " status" in command)
    listing = next(
        command for command in printed_commands(cli_mesh.printed, "grpcurl") if "list" in command
    )
    [node_client] = printed_commands(cli_mesh.printed, "node")
    assert status.endswith(f" status --state-dir {cli_mesh.state_dir}")
    outputs = []
    for command in (status, listing, node_client):
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
        outputs.append(result.stdout)
    assert "shop.users.v1.UsersService" in outputs[1]
    # The Node client's whole visit: signed up and in, an order CONFIRMED and its notification.
    assert re.search(r"^order ord_\w+ CONFIRMED", outputs[2], re.MULTILINE), outputs[2]


def test_audit_finds_that_the_data_adds_up(cli_mesh: CliMesh) -> None:
    # After the Node client's checkout (the test before), on the SQLite files.
    audited = shopmesh("audit", "--state-dir", str(cli_mesh.state_dir), "--wait", "30")

    assert audited.returncode == 0, audited.stdout + audited.stderr
    for check in ("sagas finished", "charged at most once", "every delivered event notified"):
        assert check in audited.stdout
    assert "FAILED" not in audited.stdout


def test_the_log_level_reaches_every_app(cli_mesh: CliMesh) -> None:
    records = recorded(cli_mesh.state_dir)
    apps = [record for name, record in records.items() if name.endswith(".app")]
    assert len(apps) == sum(service.replicas for service in TOPOLOGY.services.values())
    assert {record["env"]["SHOPMESH_LOG_LEVEL"] for record in apps} == {"DEBUG"}


def test_a_killed_replica_comes_back_with_restart(cli_mesh: CliMesh) -> None:
    paths = StateDir(cli_mesh.state_dir)
    pid = int(paths.pidfile("inventory-1.app").read_text())
    os.kill(pid, signal.SIGTERM)
    eventually_sync(lambda: not running(pid), STOP_SECONDS, "inventory-1.app to exit")

    down = shopmesh("status", "--state-dir", str(cli_mesh.state_dir))
    assert down.returncode == 1
    assert "shopmesh restart inventory-1" in down.stdout

    restarted = shopmesh("restart", "inventory-1", "--state-dir", str(cli_mesh.state_dir))
    assert restarted.returncode == 0, restarted.stderr
    assert "started inventory-1.app" in restarted.stdout
    new_pid = int(paths.pidfile("inventory-1.app").read_text())
    assert new_pid != pid
    assert start_ticks(new_pid) is not None

    def healthy() -> bool:
        return shopmesh("status", "--state-dir", str(cli_mesh.state_dir)).returncode == 0

    eventually_sync(healthy, 30, "every process healthy again", interval=0.5)
    again = shopmesh("restart", "inventory-1", "--state-dir", str(cli_mesh.state_dir))
    assert "was running: nothing to do" in again.stdout


def environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().partition("=")[::2] for entry in entries if entry)


@pytest.mark.parametrize("name", ["orders-0", "logs", "collector", "dashboard"])
def test_a_crashed_caller_log_keeper_or_collector_comes_back_as_it_was_started(
    cli_mesh: CliMesh, name: str
) -> None:
    """orders calls other services, so its app starts once its sidecar is ready; a restart
    gives it the environment `up` ran in (not the shell's that runs `restart`); the dashboard
    comes back with its token (`status` asks it with the recorded one)."""
    paths = StateDir(cli_mesh.state_dir)
    process = f"{name}.app" if name not in ("logs", "collector", "dashboard") else name
    pid = int(recorded(cli_mesh.state_dir)[process]["pid"])
    os.kill(pid, signal.SIGKILL)
    eventually_sync(lambda: not running(pid), STOP_SECONDS, f"{process} to die")

    without = {k: v for k, v in os.environ.items() if k != PASSED_ON}
    restarted = shopmesh("restart", name, "--state-dir", str(cli_mesh.state_dir), env=without)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert f"started {process}" in restarted.stdout
    new_pid = int(recorded(cli_mesh.state_dir)[process]["pid"])
    assert new_pid != pid
    assert environ(new_pid)[PASSED_ON] == "1.5"
    if name != "logs":
        assert int(paths.pidfile(process).read_text()) == new_pid

    def healthy() -> bool:
        return shopmesh("status", "--state-dir", str(cli_mesh.state_dir)).returncode == 0

    eventually_sync(healthy, 30, "every process healthy again", interval=0.5)


def test_the_dashboard_link_opens_the_page_and_its_token_stays_off_the_command_line(
    cli_mesh: CliMesh,
) -> None:
    shown = shopmesh("dashboard", "--state-dir", str(cli_mesh.state_dir))
    link = shown.stdout.strip()
    assert f"dashboard: {link}" in cli_mesh.printed
    base, _, token = link.partition("/?token=")
    assert base.startswith("http://127.0.0.1:")
    assert len(token) >= 40

    page = httpx.get(link, trust_env=False, timeout=10)
    assert page.status_code == 200
    assert "shopmesh dashboard" in page.text
    assert httpx.get(base + "/", trust_env=False, timeout=10).status_code == 403
    pid = int(recorded(cli_mesh.state_dir)["dashboard"]["pid"])
    assert token not in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert environ(pid)["SHOPMESH_DASHBOARD_TOKEN"] == token
    assert (cli_mesh.state_dir / "mesh.json").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--status", "0"], "cannot fail a call"),
        (["--status", "OK"], "cannot fail a call"),
        (["--status", "LOUD"], "unknown gRPC status 'LOUD'"),
        (["--delay-percent", "50"], "give --abort-percent"),
    ],
)
def test_nonsense_faults_are_refused_in_one_line(
    cli_mesh: CliMesh, args: list[str], expected: str
) -> None:
    state = ["--state-dir", str(cli_mesh.state_dir)]
    abort = [] if "--delay-percent" in args else ["--abort-percent", "50"]
    result = shopmesh("fault", "payments", *abort, *args, *state)
    assert result.returncode in (1, 2)
    # One line: ours ("error: ..."), or click's usage error around its own.
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if expected in line] != []


@pytest.mark.parametrize("command", [["down"], ["status"], ["logs", "gateway"], ["fault", "x"]])
def test_options_are_offered_only_where_they_act(command: list[str]) -> None:
    result = shopmesh(*command, "--topology", str(MESH_FILE))
    assert result.returncode == 2
    assert "No such option '--topology'" in result.stderr


def test_help_shows_each_option_default() -> None:
    up = shopmesh("up", "--help")
    assert "[default: var]" in up.stdout
    assert "default: 8080" in up.stdout
    assert "SHOPMESH_LOG_LEVEL" in up.stdout
    fault = shopmesh("fault", "--help")
    assert "[default: var]" in fault.stdout
    assert "[UNAVAILABLE]" in fault.stdout


def test_an_unusable_state_directory_is_one_clear_line() -> None:
    result = shopmesh("up", "--state-dir", "/proc/shopmesh", *FREE_PORTS)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error:")
    assert "/proc/shopmesh" in line


def test_down_stops_a_mesh_an_earlier_shopmesh_started(state_dir: Path) -> None:
    """mesh.json version 1 (before the layout moved admin to Unix sockets): `down` still finds
    and stops its processes; every other command says to run `down`."""
    sleepers = [
        subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
        )
        for _ in range(3)
    ]
    try:
        records = [{"pid": p.pid, "start_ticks": start_ticks(p.pid)} for p in sleepers]
        legacy = {
            "version": 1,
            "pods": {"users-0": {"app": records[0], "sidecar": records[1]}},
            "gateway": {"ports": {}, "process": records[2]},
        }
        (state_dir / "mesh.json").write_text(json.dumps(legacy))

        status = shopmesh("status", "--state-dir", str(state_dir))
        assert status.returncode == 1
        assert "started by an earlier shopmesh" in status.stderr
        assert f"shopmesh down --state-dir {state_dir}" in status.stderr

        stopped = shopmesh("down", "--state-dir", str(state_dir))
        assert stopped.returncode == 0, stopped.stderr
        assert "3 processes stopped" in stopped.stdout
        for sleeper in sleepers:
            sleeper.wait(STOP_SECONDS)
        assert not (state_dir / "mesh.json").exists()
    finally:
        for sleeper in sleepers:
            if sleeper.poll() is None:
                sleeper.kill()
                sleeper.wait()


def test_taken_gateway_port_is_refused_with_a_way_out(state_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        state = ("--state-dir", str(state_dir))
        result = shopmesh("up", *state, "--gateway-port", str(port), "--dashboard-port", "0")

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
        *FREE_PORTS,
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
        *FREE_PORTS,
        "--descriptor",
        str(state_dir / "missing.pb"),
    )

    assert result.returncode == 1
    assert "make generate" in result.stderr


def test_make_passes_the_gateway_port_log_level_and_database_to_up() -> None:
    result = subprocess.run(
        ["make", "-n", "up", "GATEWAY_PORT=18080", "LOG_LEVEL=DEBUG", "DB=postgres"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (up,) = [line for line in result.stdout.splitlines() if "shopmesh up" in line]
    assert shlex.split(up)[-4:] == ["--gateway-port", "18080", "--log-level", "DEBUG"]
    assert shlex.split(up)[-6:-4] == ["--dashboard-port", "8090"]
    assert shlex.split(up)[-8:-6] == ["--db", "postgres"]
