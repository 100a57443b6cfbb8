"""Services as real processes (`python -m services.<name>`) for tests: start them with exactly
the SHOPMESH_* variables a test gives, wait until they serve, and kill whatever still runs at
the end (the `launch` fixture in tests/integration/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
import pytest
from grpc_health.v1 import health_pb2

from shopmesh.local.health import health_check
from tests.support.paths import ROOT

# Generous bounds for a loaded 2-core machine; a healthy run takes a fraction of each.
STARTUP_SECONDS = 30.0
EXIT_SECONDS = 15.0
POLL_INTERVAL = 0.05


@dataclass
class Launched:
    """A service process and the files its output goes to."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def stderr_text(self) -> str:
        return self.stderr.read_text(errors="replace")


class Launch(Protocol):
    def __call__(self, service: str, env: dict[str, str]) -> Launched: ...


@dataclass
class Launcher:
    """Starts service processes whose output goes under `logs`; `kill_all` ends them."""

    logs: Path
    launched: list[Launched] = field(default_factory=list)

    def __call__(self, service: str, env: dict[str, str]) -> Launched:
        """Start `python -m services.<service>` from the repository root with exactly the
        given SHOPMESH_* variables (the test's own are not inherited)."""
        environment = {k: v for k, v in os.environ.items() if not k.startswith("SHOPMESH_")}
        environment.update(env)
        stdout = self.logs / f"{service}-{len(self.launched)}.stdout"
        stderr = self.logs / f"{service}-{len(self.launched)}.stderr"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", f"services.{service}"],
                cwd=ROOT,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        self.launched.append(Launched(process, stdout, stderr))
        return self.launched[-1]

    def kill_all(self) -> None:
        """Kill every process still running, and reap them all."""
        for item in self.launched:
            if item.process.poll() is None:
                item.process.kill()
            item.process.wait(timeout=EXIT_SECONDS)


def health_status(address: str, service: str = "") -> int | None:
    """One health Check on a fresh channel (so no reconnect backoff carries over between
    attempts); None while nothing answers yet."""
    with grpc.insecure_channel(address) as channel:
        check = health_check(channel)
        try:
            response = check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return None
            raise
    status: int = response.status
    return status


def wait_until_serving(launched: Launched, address: str) -> None:
    """Poll health until SERVING, failing early if the process dies or the deadline passes."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        if launched.process.poll() is not None:
            pytest.fail(
                f"service exited with {launched.process.returncode} before serving:\n"
                f"{launched.stderr_text()}"
            )
        if health_status(address) == health_pb2.HealthCheckResponse.SERVING:
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"not SERVING after {STARTUP_SECONDS}s on {address}:\n{launched.stderr_text()}"
            )
        time.sleep(POLL_INTERVAL)
