"""`shopmesh run`: every service of the topology as a plain process in the foreground, without
the mesh, each on its `standalone_port` and calling its upstreams there directly. For working
on one service's code; the mesh's features (mTLS, retries, faults...) are all absent."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from shopmesh.appenv import AppSettings, standalone_environment
from shopmesh.layout import app_module
from shopmesh.local.ports import require_free
from shopmesh.topology import Topology

STOP_SECONDS = 10.0


def run_standalone(topology: Topology, host: str, data_dir: Path, log_level: str) -> int:
    """Start every service, wait until one exits or a signal arrives, stop the others;
    returns the exit status to end with (that of the service that exited, else 0)."""
    for service in topology.services.values():
        way_out = "stop what uses it, or change its standalone_port in the topology"
        require_free(host, service.standalone_port, f"{service.name}'s port", way_out)
    settings = AppSettings(log_level=log_level)
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for name in topology.services:
            database = str(data_dir / f"{name}.db")
            env = standalone_environment(topology, name, host, database, settings)
            children[name] = subprocess.Popen(
                [sys.executable, "-m", app_module(name)], env={**os.environ, **env}
            )
            port = topology.services[name].standalone_port
            print(f"{name}: {host}:{port} (pid {children[name].pid})", flush=True)
        status = 0
        while not stopping:
            exited = [(n, c.returncode) for n, c in children.items() if c.poll() is not None]
            if exited:
                name, status = exited[0]
                print(f"{name} exited with status {status}; stopping the others", flush=True)
                break
            time.sleep(0.2)
        return status
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children.values():
            try:
                child.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError):
                signal.signal(sig, handler)
