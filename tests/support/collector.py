"""The mesh's trace collector run on its own, as a user's collector would be (`shopmesh up
--otlp-endpoint`) or as `shopmesh up` runs it; always stopped."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.support.paths import ROOT
from tests.support.polling import eventually_sync

START_SECONDS = 30.0
EXIT_SECONDS = 15.0


@contextlib.contextmanager
def running_collector(
    address: str, database: Path, listening: Callable[[], bool], max_traces: int = 1000
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m shopmesh.collector ADDRESS DATABASE`, once `listening()` holds; on exit it
    must stop on SIGTERM with status 0 (and is killed if it does not)."""
    command = [sys.executable, "-m", "shopmesh.collector", address, str(database)]
    process = subprocess.Popen([*command, "--max-traces", str(max_traces)], cwd=ROOT)
    try:
        eventually_sync(
            lambda: listening() or process.poll() is not None, START_SECONDS, "the collector"
        )
        assert process.poll() is None, f"the collector exited with {process.returncode}"
        yield process
        process.send_signal(signal.SIGTERM)
        assert process.wait(EXIT_SECONDS) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
